"""Score-function adapters: REINFORCE (with Pyro's baselines), NVIL, MuProp, RLOO."""

from __future__ import annotations

import torch
from torch import nn

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms
from pyro_discrete.infer.evaluation import reduce_to_site
from pyro_discrete.infer.sites import CATEGORICAL, SiteError
from pyro_discrete.nn import mlp


def pyro_baseline(ev, site, signal) -> tuple[Terms, object]:
    """Pyro's ``infer={"baseline": {...}}`` options, with a batch-size-free decaying average.

    Pyro keeps the decaying average with the minibatch's shape, so a batch of 4 then 3
    crashes; here it is a scalar per site, in units of cost per unit of site scale.
    Returns the regression / state terms and the baseline.
    """
    terms = Terms()
    options = dict(ev.guide_trace.nodes[site.name]["infer"].get("baseline", {}))
    if not options:
        return terms, 0.0
    nn_baseline = options.pop("nn_baseline", None)
    nn_input = options.pop("nn_baseline_input", None)
    use_average = options.pop("use_decaying_avg_baseline", False)
    beta = options.pop("baseline_beta", 0.90)
    value = options.pop("baseline_value", None)
    if nn_baseline is not None and value is not None:
        raise SiteError(f"site '{site.name}': use nn_baseline or baseline_value, not both")
    baseline = 0.0
    if use_average:
        scale = ev.scale(site)
        name = cv.state_name("baseline", site.name, "average")  # shared by estimators
        average = cv.running_statistic(name, signal)
        baseline = scale * average
        terms.updates.append((name, E.decaying_average(average, (signal / scale).mean(), beta)))
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
        terms.fit_loss = (signal.detach() - learned).pow(2).sum()
        baseline = baseline + learned
    return terms, baseline


def _check_rate(estimator: str, key: str, value) -> None:
    """A decay rate of a running average lies in [0, 1]."""
    if not 0 <= float(value) <= 1:
        raise ValueError(
            f"estimator '{estimator}': {key} is the decay rate of a running average and must "
            f"lie in [0, 1], got {value!r}"
        )


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

    def site_terms(self, ev, site):
        signal = ev.signal(site)
        terms, baseline = pyro_baseline(ev, site, signal)
        terms.surrogate = E.score_surrogate(ev.score(site), signal, baseline)
        return terms


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
    running_state = {"mean": 0.0, "variance": 1.0}

    def validate_options(self) -> None:
        super().validate_options()
        _check_rate(self.name, "alpha", self.options["alpha"])

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
                self.state_name(site.name, "baseline"),
                lambda: mlp(features.shape[-1], self.options["hidden"], 1, nn.Tanh),
                features,
                self.networks,
            )
            out = net(features)
        return out.reshape(signal.shape) if out.numel() == signal.numel() else out

    def site_terms(self, ev, site):
        scale = ev.scale(site)
        signal = ev.signal(site) / scale
        net_baseline = self._net_baseline(ev, site, signal)
        mean = self.statistic(site, "mean", signal)
        var = self.statistic(site, "variance", signal)
        if not self.options["normalize_variance"]:
            var = torch.ones_like(var)
        learning = E.nvil_signal(signal, net_baseline, mean, var)
        new_mean, new_var = E.nvil_update_statistics(
            mean, var, signal, net_baseline.detach(), self.options["alpha"]
        )
        return Terms(
            surrogate=E.score_surrogate(ev.score(site), learning * scale),
            fit_loss=E.nvil_baseline_loss(signal, net_baseline, mean),
            updates=[
                (self.state_name(site.name, "mean"), new_mean),
                (self.state_name(site.name, "variance"), new_var),
            ],
        )


class MuProp(SiteEstimator):
    r"""MuProp (Gu et al. 2016): Taylor control variate around the mean-field pass.

    Adds a decaying-average baseline (rate ``baseline_beta``) to the residual signal.
    Costs one extra evaluation of the model and guide (the mean-field pass, shared by all
    sites) and one backward through it per site.
    """

    name = "muprop"
    requires = "relaxable"
    defaults = {"baseline_beta": 0.9}
    running_state = {"average": 0.0}

    def validate_options(self) -> None:
        super().validate_options()
        _check_rate(self.name, "baseline_beta", self.options["baseline_beta"])

    def site_terms(self, ev, site):
        mf_costs, means = ev.mean_field()
        mf_signal = ev.signal(site, mf_costs)
        mf_total = sum(c.value.sum() for c in mf_costs if site.name in ev.deps.get(c.key, ()))
        mean_bar = means[site.name]
        slope = None
        if torch.is_tensor(mf_total) and mf_total.requires_grad:
            (slope,) = torch.autograd.grad(mf_total, mean_bar, retain_graph=True, allow_unused=True)
        if slope is None:
            slope = torch.zeros_like(mean_bar)
        mean = site.mean()
        taylor = E.muprop_taylor_term(slope, site.value, mean, site.event_ndim)
        taylor = reduce_to_site(taylor, site.frames, site)
        signal = ev.signal(site)
        scale = ev.scale(site)
        average = self.statistic(site, "average", signal)
        surrogate, residual = E.muprop_surrogate(
            ev.score(site), signal, mf_signal, taylor, slope, mean, scale * average
        )
        new = E.decaying_average(average, (residual / scale).mean(), self.options["baseline_beta"])
        return Terms(surrogate=surrogate, updates=[(self.state_name(site.name, "average"), new)])


class RLOO(SiteEstimator):
    r"""REINFORCE with the leave-one-out baseline over ``num_particles`` >= 2 samples,
    vectorised (the default) or drawn one after another (``vectorize_particles=False``)."""

    name = "rloo"
    multi_sample = True
    loops_particles = True

    def site_terms(self, ev, site):
        signal = ev.signal(site)
        learning = E.leave_one_out_signal(signal, ev.particle_dim(site))
        return Terms(surrogate=E.score_surrogate(ev.score(site), learning))

    def particle_terms(self, evs, sites) -> Terms:
        """The terms of one site over particles evaluated one at a time: the same
        leave-one-out signal, across the list instead of along a particle dim."""
        each = [ev.signal(s) for ev, s in zip(evs, sites, strict=True)]
        signals = torch.stack(torch.broadcast_tensors(*each))
        learning = E.leave_one_out_signal(signals, 0)
        surrogate = sum(
            E.score_surrogate(ev.score(s), signal)
            for ev, s, signal in zip(evs, sites, learning, strict=True)
        )
        return Terms(surrogate=surrogate)
