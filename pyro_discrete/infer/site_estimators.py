"""Per-site gradient estimators: each turns one discrete guide site into surrogate terms.

A :class:`SiteEstimator` receives the step's :class:`~pyro_discrete.infer.evaluation.Evaluation`
and one :class:`~pyro_discrete.infer.evaluation.DiscreteSite`, asks for whatever extra
passes it needs, and calls the pure functions of :mod:`pyro_discrete.estimators`. It
returns a term whose gradient with respect to the model and guide parameters is its
estimate; control-variate objectives go into :class:`StepTerms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import torch
from torch import Tensor, nn

from pyro_discrete import estimators as E
from pyro_discrete.distributions import functional as F
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.evaluation import DiscreteSite, Evaluation, cost_terms, reduce_to_site
from pyro_discrete.infer.shared_noise import SharedNoise
from pyro_discrete.infer.sites import BERNOULLI, CATEGORICAL, SiteError, is_relaxable


@dataclass
class StepTerms:
    """Control-variate objectives collected during one step.

    ``fit_loss`` trains baselines by regression (its graph reaches only their parameters);
    ``variance`` holds ``(E[g^2] estimate, parameters)`` pairs for the variance-gradient
    training of REBAR/RELAX control variates.
    """

    fit_loss: Tensor | float = 0.0
    variance: list[tuple[Tensor, list[Tensor]]] = field(default_factory=list)


class SiteEstimator:
    """Base class. Subclasses set ``name``, ``requires`` and ``defaults``."""

    name: str = ""
    #: which leaf distributions the estimator handles: "any", "relaxable", "bernoulli"
    requires: str = "any"
    #: the value itself carries the gradient (relaxations); the guide's log-density
    #: stays in the pathwise part of the surrogate
    pathwise: bool = False
    #: needs several particles evaluated as one vectorised batch
    multi_sample: bool = False
    #: the base pass must draw the site through uniform noise that later passes re-use
    needs_noise: bool = False
    #: which of Pyro's ``infer={"baseline": {...}}`` options the estimator honours
    baseline_options: tuple[str, ...] = ()
    defaults: dict = {}

    def __init__(self, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise TypeError(
                f"estimator '{self.name}' got unknown option(s) {sorted(unknown)}; "
                f"its options are: {valid}"
            )
        self.options = {**self.defaults, **options}
        self.validate_options()
        self.networks: dict[str, nn.Module] = {}  # control-variate networks by name

    def validate_options(self) -> None:
        for key in ("temperature", "min_temperature"):
            if key in self.options and not self.options[key] > 0:
                raise ValueError(f"estimator '{self.name}': {key} must be positive")

    def check_baseline_options(self, name: str, options: dict) -> None:
        """Refuse Pyro baseline options that this estimator would silently ignore."""
        ignored = sorted(set(options) - set(self.baseline_options))
        if ignored:
            honoured = ", ".join(self.baseline_options) or "none"
            raise SiteError(
                f"site '{name}' sets infer={{'baseline': {{...}}}} option(s) {ignored}, which "
                f"estimator '{self.name}' does not use (it honours: {honoured}); remove them, "
                "or use 'reinforce', which takes all of Pyro's baseline options"
            )

    def check_site(self, name: str, kind: str, dist_name: str) -> None:
        """Raise a :class:`SiteError` naming the site, its distribution and the fix."""
        if self.requires == "any":
            return
        if kind == CATEGORICAL:
            raise SiteError(
                f"site '{name}' is an index-valued {dist_name}; estimator '{self.name}' "
                "needs a continuous relaxation of one-hot values: write the site with "
                "dist.OneHotCategorical(logits=...) (and use the one-hot value downstream), "
                "or give it a score-function estimator with infer={'estimator': 'reinforce'}"
            )
        if self.requires == "bernoulli" and kind != BERNOULLI:
            raise SiteError(
                f"site '{name}' has distribution {dist_name}; estimator '{self.name}' handles "
                "Bernoulli sites only: use 'rloo', 'rebar' or 'relax' for categorical sites, "
                "e.g. infer={'estimator': 'rebar'} on this site"
            )
        if not is_relaxable(kind):
            raise SiteError(
                f"site '{name}' has distribution {dist_name}, which has no continuous "
                f"relaxation that estimator '{self.name}' could use: give this site a "
                "score-function estimator with infer={'estimator': 'reinforce'} "
                "(or 'nvil', 'rloo')"
            )

    def base_value(self, site: DiscreteSite) -> Tensor:
        """The value the base pass gives the site (hard by default)."""
        return site.hard

    def surrogate(self, ev: Evaluation, site: DiscreteSite, terms: StepTerms) -> Tensor:
        raise NotImplementedError

    def end_step(self) -> None:
        """Called once after each gradient step (schedules)."""


# ---------------------------------------------------------------------------------------
# Score-function family
# ---------------------------------------------------------------------------------------


def _site_scale(ev: Evaluation, site: DiscreteSite) -> float | Tensor:
    return ev.guide_trace.nodes[site.name]["scale"]


def pyro_baseline(ev: Evaluation, site: DiscreteSite, signal: Tensor, terms: StepTerms):
    """Pyro's ``infer={"baseline": {...}}`` options, with a batch-size-free decaying average.

    Pyro keeps the decaying average with the minibatch's shape, so a batch of 4 then 3
    crashes; here it is a scalar per site, in units of cost per unit of site scale.
    """
    options = dict(ev.guide_trace.nodes[site.name]["infer"].get("baseline", {}))
    if not options:
        return 0.0
    nn_baseline = options.pop("nn_baseline", None)
    nn_input = options.pop("nn_baseline_input", None)
    use_average = options.pop("use_decaying_avg_baseline", False)
    beta = options.pop("baseline_beta", 0.90)
    value = options.pop("baseline_value", None)
    if nn_baseline is not None and value is not None:
        raise SiteError(f"site '{site.name}': use nn_baseline or baseline_value, not both")
    baseline: Tensor | float = 0.0
    if use_average:
        scale = _site_scale(ev, site)
        name = cv.state_name("baseline", site.name, "average")
        average = cv.running_statistic(name, signal)
        baseline = scale * average
        cv.set_running_statistic(name, E.decaying_average(average, (signal / scale).mean(), beta))
    learned = None
    if nn_baseline is not None:
        learned = nn_baseline(nn_input.detach())
    elif value is not None:
        learned = value
    if learned is not None:
        if torch.broadcast_shapes(learned.shape, signal.shape) != signal.shape:
            raise SiteError(
                f"site '{site.name}': baseline of shape {tuple(learned.shape)} does not "
                f"broadcast to the learning signal's shape {tuple(signal.shape)}"
            )
        terms.fit_loss = terms.fit_loss + (signal.detach() - learned).pow(2).sum()
        baseline = baseline + learned
    return baseline


class Reinforce(SiteEstimator):
    r"""REINFORCE with Rao-Blackwellised learning signals and no baseline.

    :math:`\hat g = f_{\downarrow}(b)\,\partial_\theta \log q(b)`, where
    :math:`f_{\downarrow}` holds only the cost terms that depend on :math:`b`. Pyro's
    ``infer={"baseline": {...}}`` options on a site add a baseline.
    """

    name = "reinforce"
    baseline_options = (
        "nn_baseline",
        "nn_baseline_input",
        "use_decaying_avg_baseline",
        "baseline_beta",
        "baseline_value",
    )

    def surrogate(self, ev, site, terms):
        signal = ev.signal(site)
        baseline = pyro_baseline(ev, site, signal, terms)
        return E.score_surrogate(ev.score(site), signal, baseline)


class NVIL(SiteEstimator):
    r"""NVIL (Mnih & Gregor 2014): learned input-dependent baseline, centring and scaling.

    The default baseline network :math:`c_\psi` reads the site's (detached) logits, which
    carry the guide's input and every upstream sample, through a ``hidden``-unit tanh MLP;
    a site's own ``infer={"baseline": {"nn_baseline": net, "nn_baseline_input": x}}``
    replaces it. Options: ``alpha`` (rate of the running mean/variance, 0.8), ``hidden``
    ((100,)), ``normalize_variance`` (True).

    The variance normalisation divides the guide's learning signal by
    :math:`\max(1, \sqrt v)`: a per-site step size, as in the paper, which scales the
    guide's gradient but not the model's. With ``normalize_variance=False`` the estimate is
    unbiased.
    """

    name = "nvil"
    baseline_options = ("nn_baseline", "nn_baseline_input")
    defaults = {"alpha": 0.8, "hidden": (100,), "normalize_variance": True}

    def _net_baseline(self, ev, site, signal):
        options = ev.guide_trace.nodes[site.name]["infer"].get("baseline", {})
        if "nn_baseline" in options:
            out = options["nn_baseline"](options["nn_baseline_input"].detach())
        else:
            dims = [d for _, d in site.frames]
            if site.kind == CATEGORICAL:
                inputs = site.logits.detach().expand(site.fn.shape() + site.logits.shape[-1:])
            elif site.logits is not None:
                inputs = site.logits.detach()
            else:  # no logits (e.g. Poisson): a learned constant per plate element
                inputs = site.value.new_ones(site.fn.shape() + (1,))
            features = cv.plate_features(inputs, site.batch_ndim, dims)
            net = cv.registered_module(
                cv.state_name(self.name, site.name, "baseline"),
                lambda: cv.mlp(features.shape[-1], self.options["hidden"], nn.Tanh),
                features,
                self.networks,
            )
            out = net(features)
        return out.reshape(signal.shape) if out.numel() == signal.numel() else out

    def surrogate(self, ev, site, terms):
        scale = _site_scale(ev, site)
        signal = ev.signal(site) / scale
        net_baseline = self._net_baseline(ev, site, signal)
        mean_name = cv.state_name(self.name, site.name, "mean")
        var_name = cv.state_name(self.name, site.name, "variance")
        mean = cv.running_statistic(mean_name, signal)
        var = cv.running_statistic(var_name, signal, init=1.0)
        if not self.options["normalize_variance"]:
            var = torch.ones_like(var)
        learning = E.nvil_signal(signal, net_baseline, mean, var)
        terms.fit_loss = terms.fit_loss + E.nvil_baseline_loss(signal, net_baseline, mean)
        new_mean, new_var = E.nvil_update_statistics(
            mean, var, signal, net_baseline.detach(), self.options["alpha"]
        )
        cv.set_running_statistic(mean_name, new_mean)
        cv.set_running_statistic(var_name, new_var)
        return E.score_surrogate(ev.score(site), learning * scale)


class MuProp(SiteEstimator):
    r"""MuProp (Gu et al. 2016): Taylor control variate around the mean-field pass.

    Adds a decaying-average baseline (rate ``baseline_beta``) to the residual signal.
    Costs one extra evaluation of the model and guide (the mean-field pass, shared by all
    sites) and one backward through it per site.
    """

    name = "muprop"
    requires = "relaxable"
    defaults = {"baseline_beta": 0.9}

    def surrogate(self, ev, site, terms):
        mf_costs, means = ev.mean_field()
        mf_signal = ev.signal(site, mf_costs)
        mf_total = sum(c.value.sum() for c in mf_costs if site.name in ev.deps.get(c.key, ()))
        mean_bar = means[site.name]
        if torch.is_tensor(mf_total) and mf_total.requires_grad:
            (slope,) = torch.autograd.grad(mf_total, mean_bar, retain_graph=True, allow_unused=True)
        else:
            slope = None
        if slope is None:
            slope = torch.zeros_like(mean_bar)
        mean = site.mean(site.logits)
        taylor = E.muprop_taylor_term(slope, site.value, mean, site.event_ndim)
        taylor = reduce_to_site(taylor, site.frames, site)
        signal = ev.signal(site)
        scale = _site_scale(ev, site)
        name = cv.state_name(self.name, site.name, "average")
        average = cv.running_statistic(name, signal)
        surrogate, residual = E.muprop_surrogate(
            ev.score(site), signal, mf_signal, taylor, slope, mean, scale * average
        )
        cv.set_running_statistic(
            name,
            E.decaying_average(average, (residual / scale).mean(), self.options["baseline_beta"]),
        )
        return surrogate


class RLOO(SiteEstimator):
    r"""REINFORCE with the leave-one-out baseline over ``num_particles`` >= 2 samples."""

    name = "rloo"
    multi_sample = True

    def surrogate(self, ev, site, terms):
        signal = ev.signal(site)
        learning = E.leave_one_out_signal(signal, ev.particle_dim(site))
        return E.score_surrogate(ev.score(site), learning)


# ---------------------------------------------------------------------------------------
# Antithetic family
# ---------------------------------------------------------------------------------------


class ARM(SiteEstimator):
    r"""ARM (Yin & Zhou 2019) for Bernoulli sites: two evaluations with antithetic noise.

    For a site after others in the guide, the antithetic branch keeps the earlier sites'
    values and draws the later ones afresh, so every layer of a deep belief net is
    estimated without bias (one extra model evaluation per site).
    """

    name = "arm"
    requires = "bernoulli"
    needs_noise = True

    def _antithetic(self, ev, site):
        b_anti = F.heaviside(F.logistic_sample(site.logits, E.antithetic_uniform(site.noise)))
        model_trace, guide_trace = ev.run(
            ev.prefix_choice(site, at_site=lambda msg: b_anti.detach(), after=lambda msg: None)
        )
        f_anti = ev.signal(site, cost_terms(model_trace, guide_trace, relaxed=True))
        return b_anti, site.to_event_shape(ev.signal(site)), site.to_event_shape(f_anti)

    def logit_gradient(self, ev, site):
        _, f_b, f_anti = self._antithetic(ev, site)
        return E.arm_logit_gradient(site.noise, f_b, f_anti)

    def surrogate(self, ev, site, terms):
        return (self.logit_gradient(ev, site) * site.logits).sum()


class DisARM(ARM):
    r"""DisARM (Dong, Mnih & Tucker 2020): ARM with the noise integrated out; same cost."""

    name = "disarm"

    def logit_gradient(self, ev, site):
        b_anti, f_b, f_anti = self._antithetic(ev, site)
        return E.disarm_logit_gradient(site.logits, site.hard, b_anti, f_b, f_anti)


# ---------------------------------------------------------------------------------------
# Relaxation-based control variates: REBAR and RELAX
# ---------------------------------------------------------------------------------------


class REBAR(SiteEstimator):
    r"""REBAR (Tucker et al. 2017) for Bernoulli and one-hot categorical sites.

    Per site, three evaluations: the hard base pass, a relaxed pass
    (:math:`\sigma_\lambda(z)`) and a conditionally relaxed pass
    (:math:`\sigma_\lambda(\tilde z)`, :math:`\tilde z \sim p(z \mid b)` re-using the
    noise of :math:`z`). Sites earlier in the guide keep their hard values, later
    Bernoulli / one-hot sites are relaxed with their own noise (the official multi-layer
    scheme). :math:`\eta` (``eta``, 1.0) and :math:`\lambda` (``temperature``, 0.5) are
    per-site parameters ``pyro_discrete/<estimator>/<site>/eta`` and ``.../log_temperature``
    trained by the SVI optimizer on the variance objective, unless
    ``learn_control_variates=False``.
    """

    name = "rebar"
    requires = "relaxable"
    needs_noise = True
    defaults = {
        "eta": 1.0,
        "temperature": 0.5,
        "learn_control_variates": True,
        "reuse_noise": True,
    }

    def control_variate_params(self, site: DiscreteSite) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(eta, temperature, trained parameters)`` of a site."""
        like = site.logits
        if not self.options["learn_control_variates"]:
            eta = torch.tensor(float(self.options["eta"]), dtype=like.dtype, device=like.device)
            temp = torch.tensor(
                float(self.options["temperature"]), dtype=like.dtype, device=like.device
            )
            return eta, temp, []
        eta = cv.trained_scalar(
            cv.state_name(self.name, site.name, "eta"), like, self.options["eta"]
        )
        log_temp = cv.trained_scalar(
            cv.state_name(self.name, site.name, "log_temperature"),
            like,
            math.log(self.options["temperature"]),
        )
        return eta, log_temp.exp(), [eta, log_temp]

    def temperature(self, site: DiscreteSite) -> Tensor:
        return self.control_variate_params(site)[1]

    def surrogate_extra(self, site, z, features_like) -> tuple[Tensor | float, list[Tensor]]:
        """RELAX's learned term :math:`r_\\rho(z)`; zero for REBAR."""
        return 0.0, []

    def _check_later_sites(self, ev: Evaluation, site: DiscreteSite) -> None:
        for other in ev.sites.values():
            if other.order > site.order and not is_relaxable(other.kind):
                if site.name in ev.deps.get(("guide", other.name), ()):
                    raise SiteError(
                        f"estimator '{self.name}' on site '{site.name}' relaxes every later "
                        f"discrete site that depends on it, but site '{other.name}' "
                        f"({type(other.fn).__name__}) has no relaxation: use "
                        "OneHotCategorical / Bernoulli there, or a score-function estimator "
                        f"for '{site.name}'"
                    )

    def _relaxed_signal(self, ev, site, value, temperature_of) -> Tensor:
        model_trace, guide_trace = ev.run(
            ev.prefix_choice(
                site, at_site=lambda msg: value, after=ev.relaxed_later(temperature_of)
            )
        )
        return ev.signal(site, cost_terms(model_trace, guide_trace, relaxed=True))

    def logit_gradient(self, ev, site, terms):
        self._check_later_sites(ev, site)
        eta, temp, params = self.control_variate_params(site)

        def temperature_of(later):
            estimator = later.estimator
            if isinstance(estimator, REBAR):
                return estimator.temperature(later)
            return temp

        z = site.sample_z(site.logits, site.noise)
        z_tilde = site.conditional_z(site.logits, self.options["reuse_noise"])
        # c(z) and c(z~) are one function: later draws (continuous sites) are shared
        noise = SharedNoise(site.logits)
        with noise.first():
            c_z = eta * self._relaxed_signal(ev, site, site.relax(z, temp), temperature_of)
        with noise.again():
            c_zt = eta * self._relaxed_signal(ev, site, site.relax(z_tilde, temp), temperature_of)
        extra_z, extra_params = self.surrogate_extra(site, z, c_z)
        extra_zt, _ = self.surrogate_extra(site, z_tilde, c_zt)
        c_z = c_z + extra_z
        c_zt = c_zt + extra_zt
        learn = bool(self.options["learn_control_variates"])
        params = params + extra_params if learn else []
        score = E.logit_score(site.logits, site.hard, site.one_hot)
        grad = E.relax_logit_gradient(
            site.logits,
            score,
            site.to_event_shape(ev.signal(site)),
            c_z,
            site.to_event_shape(c_zt),
            create_graph=learn,
        )
        if learn:
            terms.variance.append((self.variance_objective(grad, extra_params), params))
        return grad.detach()

    def variance_objective(self, grad: Tensor, extra_params: list[Tensor]) -> Tensor:
        return E.gradient_variance_loss(grad)

    def surrogate(self, ev, site, terms):
        return (self.logit_gradient(ev, site, terms) * site.logits).sum()


class RELAX(REBAR):
    r"""RELAX (Grathwohl et al. 2018): REBAR's surrogate plus a learned network.

    :math:`c_\phi(z) = \eta\, f(\sigma_\lambda(z)) + r_\rho(z)`. The default
    :math:`r_\rho` is a ReLU MLP (``hidden``, (200, 200)) built per site on the features
    ``[z, logits]`` of each plate element (the logits carry the guide's input and the
    upstream samples). Pass ``surrogate=`` a module mapping those features
    (``(..., 2 * D)``) to ``(..., 1)`` to use your own, globally or per site through
    ``infer={"estimator": "relax", "estimator_options": {"surrogate": net}}``; either way
    it is registered as ``pyro_discrete/relax/<site>/surrogate``.
    ``weight_decay`` adds :math:`\frac{w}{2}\|\rho\|^2` to the variance objective.
    """

    name = "relax"
    defaults = {**REBAR.defaults, "hidden": (200, 200), "surrogate": None, "weight_decay": 0.0}

    def surrogate_extra(self, site, z, c_like):
        dims = [d for _, d in site.frames]
        features = torch.cat(
            [
                cv.plate_features(z, site.batch_ndim, dims),
                cv.plate_features(site.logits.detach(), site.batch_ndim, dims),
            ],
            -1,
        )
        name = cv.state_name(self.name, site.name, "surrogate")
        net = self.options["surrogate"]
        if net is None:
            net = cv.registered_module(
                name,
                lambda: cv.mlp(features.shape[-1], self.options["hidden"], nn.ReLU),
                features,
                self.networks,
            )
        else:  # the SVI optimizer steps only what is registered during the step
            net = pyro.module(name, net, update_module_params=True)
        out = net(features)
        return out.reshape(c_like.shape), [p for p in net.parameters() if p.requires_grad]

    def variance_objective(self, grad, extra_params):
        loss = E.gradient_variance_loss(grad)
        decay = self.options["weight_decay"]
        if decay:
            loss = loss + 0.5 * decay * sum(p.pow(2).sum() for p in extra_params)
        return loss


# ---------------------------------------------------------------------------------------
# Biased relaxations: Gumbel-softmax, straight-through, Gumbel-Rao
# ---------------------------------------------------------------------------------------


class GumbelSoftmax(SiteEstimator):
    r"""Gumbel-softmax / Concrete relaxation (Jang et al. 2017; Maddison et al. 2017). **Biased.**

    The site takes the relaxed value :math:`\sigma_\lambda(z)` (softmax for one-hot) and the
    model and guide are scored at it with the continuous extensions of their log-masses;
    gradients flow by reparameterisation. The loss it reports is this relaxed objective, not
    the ELBO. Temperature schedule: :math:`\lambda_t = \max(\lambda_{\min},
    \lambda_0 e^{-r t})` with ``temperature`` :math:`\lambda_0` (1.0), ``anneal_rate``
    :math:`r` (0) and ``min_temperature`` (0.5); :math:`t` counts steps.
    """

    name = "gumbel"
    requires = "relaxable"
    pathwise = True
    needs_noise = True
    defaults = {"temperature": 1.0, "anneal_rate": 0.0, "min_temperature": 0.5}

    def _step_counter(self, like: Tensor) -> Tensor:
        """Steps taken so far: a running statistic updated in place (checkpoints resume
        it, and a replayed compiled step advances it without a host sync)."""
        return cv.running_statistic(cv.state_name(self.name, "schedule", "step"), like)

    @property
    def step(self) -> int:
        """Steps taken so far (reads the counter: a host sync)."""
        store = pyro.get_param_store()
        name = cv.state_name(self.name, "schedule", "step")
        return int(store[name].item()) if name in store else 0

    def current_temperature(self, like: Tensor | None = None) -> Tensor | float:
        """:math:`\\lambda_t`, a tensor computed on the device when annealing."""
        o = self.options
        if not o["anneal_rate"]:
            return o["temperature"]
        if like is None:
            return max(
                o["min_temperature"], o["temperature"] * math.exp(-o["anneal_rate"] * self.step)
            )
        step = self._step_counter(like)
        return (o["temperature"] * torch.exp(-o["anneal_rate"] * step)).clamp(
            min=o["min_temperature"]
        )

    def end_step(self) -> None:
        if self.options["anneal_rate"]:
            store = pyro.get_param_store()
            name = cv.state_name(self.name, "schedule", "step")
            if name in store:
                with torch.no_grad():
                    store[name].add_(1.0)

    def base_value(self, site):
        return site.relax(
            site.sample_z(site.logits, site.noise), self.current_temperature(site.logits)
        )

    def surrogate(self, ev, site, terms):
        return 0.0


class StraightThrough(GumbelSoftmax):
    r"""Straight-through Gumbel (Bengio et al. 2013; Jang et al. 2017). **Biased.**

    Forward: the hard sample :math:`b`; backward: the gradient of
    :math:`\sigma_\lambda(z)`. The reported loss is the ELBO at the hard sample.
    """

    name = "st"

    def base_value(self, site):
        soft = site.relax(
            site.sample_z(site.logits, site.noise), self.current_temperature(site.logits)
        )
        return site.hard + soft - soft.detach()


class GumbelRao(GumbelSoftmax):
    r"""Gumbel-Rao (Paulus et al. 2021). **Biased** (as straight-through), lower variance.

    Forward: the hard sample :math:`b`; backward: the straight-through gradient averaged
    over ``num_samples`` (10) conditional draws :math:`\tilde z \sim p(z \mid b)`.
    """

    name = "gumbel_rao"
    defaults = {**GumbelSoftmax.defaults, "num_samples": 10}

    def validate_options(self):
        super().validate_options()
        if int(self.options["num_samples"]) < 1:
            raise ValueError("estimator 'gumbel_rao': num_samples must be >= 1")

    def base_value(self, site):
        k = int(self.options["num_samples"])
        logits = site.logits.expand((k,) + site.logits.shape)
        noise = F.uniform_like(logits)
        hard = site.hard.expand_as(logits)
        if site.one_hot:
            location = logits.log_softmax(-1)
            z_tilde = F.gumbel_conditional_sample(logits, hard, noise)
        else:
            location = logits
            z_tilde = F.logistic_conditional_sample(logits, hard, noise)
        # Paulus et al. hold the conditional noise fixed and differentiate through the
        # location only: the mean of straight-through gradients given b.
        z_tilde = location + (z_tilde - location).detach()
        soft = site.relax(z_tilde, self.current_temperature(site.logits)).mean(0)
        return site.hard + soft - soft.detach()


# ---------------------------------------------------------------------------------------
# Multi-sample bound
# ---------------------------------------------------------------------------------------


class VIMCO(SiteEstimator):
    r"""VIMCO (Mnih & Rezende 2016): the K-sample importance-weighted bound with per-sample
    leave-one-out baselines. Optimises the IWAE bound, not the ELBO, so every discrete
    guide site of the model must use it; the reported loss is minus that bound."""

    name = "vimco"
    multi_sample = True

    def surrogate(self, ev, site, terms):  # assembled model-wide by DiscreteELBO
        raise AssertionError("VIMCO is assembled by DiscreteELBO")


ESTIMATOR_CLASSES: dict[str, type[SiteEstimator]] = {
    cls.name: cls
    for cls in (
        Reinforce,
        NVIL,
        MuProp,
        RLOO,
        VIMCO,
        ARM,
        DisARM,
        REBAR,
        RELAX,
        GumbelSoftmax,
        StraightThrough,
        GumbelRao,
    )
}


def make_estimator(name: str, **options) -> SiteEstimator:
    """Build a site estimator by name; an unknown name lists the valid ones."""
    cls = ESTIMATOR_CLASSES.get(name)
    if cls is None:
        valid = ", ".join(sorted(ESTIMATOR_CLASSES))
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {valid}")
    return cls(**options)
