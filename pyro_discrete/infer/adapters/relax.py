"""Relaxation-based control variates: RELAX and its special case REBAR."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from torch import Tensor, nn

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms, variance_gradient_loss
from pyro_discrete.infer.dependencies import preserved_rng
from pyro_discrete.infer.evaluation import GUIDE, cost_terms
from pyro_discrete.infer.shared_noise import SharedNoise, is_compiling
from pyro_discrete.infer.sites import SiteError, is_relaxable
from pyro_discrete.nn import mlp


class RELAX(SiteEstimator):
    r"""RELAX (Grathwohl et al. 2018) for Bernoulli and one-hot categorical sites.

    .. math:: \hat g = [f(b) - c_\phi(\tilde z)]\,\partial_\theta \log q(b)
              + \partial_\theta c_\phi(z) - \partial_\theta c_\phi(\tilde z),
              \qquad c_\phi(z) = \eta\, f(\sigma_\lambda(z)) + r_\rho(z).

    Per site, besides the hard base pass, a relaxed pass (:math:`\sigma_\lambda(z)`) and a
    conditionally relaxed pass (:math:`\sigma_\lambda(\tilde z)`, :math:`\tilde z \sim p(z
    \mid b)` re-using the noise of :math:`z`). Sites earlier in the guide keep their hard
    values, later Bernoulli / one-hot sites are relaxed with their own noise (the official
    multi-layer scheme). The 2L passes of L sites are stacked along a new leftmost batch
    dim and evaluated as one vectorised pass (as ``vectorize_particles`` does for
    particles) once a trace structure has been seen to give the same signals both ways;
    ``vectorize_passes=False`` keeps them in a loop (see ``_relaxed_passes``).
    :math:`\eta` (``eta``, 1.0) and :math:`\lambda` (``temperature``, 0.5) are per-site
    parameters ``pyro_discrete/<estimator>/<site>/eta`` and ``.../log_temperature`` trained
    by the SVI optimizer on the variance objective :math:`\sum_i \hat g_i^2` summed over the
    step's REBAR / RELAX sites, unless ``learn_control_variates=False``.

    The default :math:`r_\rho` is a ReLU MLP (``hidden``, (200, 200)) built per site on the
    features ``[z, logits]`` of each plate element (the logits carry the guide's input and
    the upstream samples). Pass ``surrogate=`` a module mapping those features
    (``(..., 2 * D)``) to ``(..., 1)`` to use your own, globally or per site through
    ``infer={"estimator": "relax", "estimator_options": {"surrogate": net}}``; either way
    it is registered as ``pyro_discrete/relax/<site>/surrogate``.
    ``weight_decay`` adds :math:`\frac{w}{2}\|\rho\|^2` to the variance objective.

    ``black_box=True`` (globally ``DiscreteELBO(estimator="relax", black_box=True)``, or per
    site through ``infer={"estimator": "relax", "estimator_options": {"black_box": True}}``)
    drops the :math:`\eta f(\sigma_\lambda(z))` term: :math:`c_\phi = r_\rho` alone
    (the paper's surrogate for black-box :math:`f`), so the model is evaluated once (no
    relaxed passes), :math:`f` needs no gradient (numpy, a simulator, an environment's
    ``step``), ``eta`` and ``temperature`` are unused, and the estimate is still unbiased.
    Through the logits in its features :math:`r_\rho` also sees the guide's input and the
    upstream samples: for a policy, a control variate :math:`c_\phi(s, a)` that depends on
    the state and on the action.
    """

    name = "relax"
    requires = "relaxable"
    needs_noise = True
    defaults = {
        "eta": 1.0,
        "temperature": 0.5,
        "learn_control_variates": True,
        "reuse_noise": True,
        "hidden": (200, 200),
        "surrogate": None,
        "weight_decay": 0.0,
        "black_box": False,
        "vectorize_passes": True,
    }

    def control_variate_params(self, site) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(eta, temperature, trained parameters)`` of a site."""
        like = site.logits
        if not self.options["learn_control_variates"]:
            eta = torch.tensor(float(self.options["eta"]), dtype=like.dtype, device=like.device)
            temp = torch.tensor(
                float(self.options["temperature"]), dtype=like.dtype, device=like.device
            )
            return eta, temp, []
        eta = cv.trained_scalar(self.state_name(site.name, "eta"), like, self.options["eta"])
        log_temp = cv.trained_scalar(
            self.state_name(site.name, "log_temperature"),
            like,
            math.log(self.options["temperature"]),
        )
        return eta, log_temp.exp(), [eta, log_temp]

    def relaxation_temperature(self, site) -> Tensor | None:
        if self.options.get("black_box"):
            return None  # it has no temperature: relaxed by the relaxing estimator's own
        return self.control_variate_params(site)[1]

    def learned_surrogate(self, site, z: Tensor, like: Tensor) -> tuple[Tensor | float, list]:
        r""":math:`r_\rho(z)` shaped like ``like``, and :math:`\rho`."""
        dims = [d for _, d in site.frames]
        features = torch.cat(
            [
                cv.plate_features(z, site.batch_ndim, dims),
                cv.plate_features(site.logits.detach(), site.batch_ndim, dims),
            ],
            -1,
        )
        name = self.state_name(site.name, "surrogate")
        net = self.options["surrogate"]
        if net is None:
            net = cv.registered_module(
                name,
                lambda: mlp(features.shape[-1], self.options["hidden"], 1, nn.ReLU),
                features,
                self.networks,
            )
        else:  # the SVI optimizer steps only what is registered during the step
            net = pyro.module(name, net, update_module_params=True)
        out = net(features)
        return out.reshape(like.shape), [p for p in net.parameters() if p.requires_grad]

    def _check_later_sites(self, ev, site) -> None:
        for other in ev.sites.values():
            if other.order > site.order and not is_relaxable(other.kind):
                if site.name in ev.deps.get((GUIDE, other.name), ()):
                    raise SiteError(
                        f"estimator '{self.name}' on site '{site.name}' relaxes every later "
                        f"discrete site that depends on it, but site '{other.name}' "
                        f"({type(other.fn).__name__}) has no relaxation: use "
                        "OneHotCategorical / Bernoulli there, or a score-function estimator "
                        f"for '{site.name}'"
                    )

    def _relaxed_signal(self, ev, site, value: Tensor, temperature, check: bool) -> Tensor:
        model_trace, guide_trace = ev.run(
            ev.prefix_choice(site, at_site=lambda msg: value, after=ev.relaxed_later(temperature))
        )
        costs = cost_terms(model_trace, guide_trace, relaxed=True)
        if check:
            ev.check_relaxed_value_reaches_costs(site, value, costs)
        return ev.signal(site, costs)

    def _looped_passes(self, ev, prepared: _Prepared) -> tuple[Tensor, Tensor]:
        r""":math:`f(\sigma_\lambda(z))` and :math:`f(\sigma_\lambda(\tilde z))` of one site, one
        evaluation each. Later value-free draws (continuous sites) are shared between the
        two: :math:`c(z)` and :math:`c(\tilde z)` are one function, eagerly and inside a
        compiled program."""
        site, temp = prepared.site, prepared.temperature
        noise = SharedNoise(site.logits)
        with noise.first():
            f_z = self._relaxed_signal(ev, site, prepared.relaxed_z, temp, True)
        with noise.again():
            f_zt = self._relaxed_signal(ev, site, prepared.relaxed_z_tilde, temp, False)
        return f_z, f_zt

    def _black_box_surrogates(self, site, z_tilde: Tensor) -> tuple[Tensor, Tensor, list]:
        r""":math:`r_\rho(z)`, :math:`r_\rho(\tilde z)` (one value per plate element, shaped
        like the learning signal) and :math:`\rho`: no relaxed pass of the model."""
        like = site.logits.new_zeros(site.plate_shape)
        c_z, network = self.learned_surrogate(site, site.z, like)
        c_zt, _ = self.learned_surrogate(site, z_tilde, like)
        return c_z, c_zt, network

    def site_terms(self, ev, site):
        if self.options.get("black_box"):
            z_tilde = site.conditional_z(self.options["reuse_noise"])
            c_z, c_zt, params = self._black_box_surrogates(site, z_tilde)
            learn = bool(self.options["learn_control_variates"]) and bool(params)
            return _terms_together(ev, [(site, c_z, c_zt, params, params, learn)])[site.name]
        return _joint_terms(ev)[site.name]


class REBAR(RELAX):
    r"""REBAR (Tucker et al. 2017): RELAX with the surrogate :math:`c(z) = \eta\,
    f(\sigma_\lambda(z))` alone (no learned network), for Bernoulli and one-hot categorical
    sites; :math:`\eta` (``eta``, 1.0) and :math:`\lambda` (``temperature``, 0.5) are
    trained on the variance objective unless ``learn_control_variates=False``."""

    name = "rebar"
    defaults = {
        "eta": 1.0,
        "temperature": 0.5,
        "learn_control_variates": True,
        "reuse_noise": True,
        "vectorize_passes": True,
    }

    def learned_surrogate(self, site, z, like):
        return 0.0, []


@dataclass
class _Prepared:
    """One site's relaxed passes: what they evaluate and, once run, their signals."""

    site: object
    z_tilde: Tensor
    eta: Tensor
    temperature: Tensor
    params: list
    relaxed_z: Tensor
    relaxed_z_tilde: Tensor
    f_z: Tensor | None = None
    f_zt: Tensor | None = None


def _relaxed_passes(ev) -> dict[str, _Prepared]:
    """The relaxed passes of every REBAR / RELAX site of the step, run once per evaluation.

    Looped, each site takes two evaluations of the guide and model (2L for L sites).
    Stacked (:meth:`~pyro_discrete.infer.evaluation.Evaluation.stacked_relaxed_signals`),
    all of them take one vectorised evaluation. A trace structure is stacked once it has
    been run both ways with equal signals (the first step checks each site's relaxed value
    reaches its costs, which needs the loop, and a model that reads shapes, reduces over
    every dim or draws its own noise would differ or fail stacked); until then, inside a
    compiled program, where a site has ``vectorize_passes=False``, and where a later guide
    site would be drawn afresh in each pass, the passes run in a loop, with the same result.
    """
    done = ev.shared_results.get("relax")
    if done is not None:
        return done
    sites = [
        s
        for s in ev.sites.values()
        if isinstance(s.estimator, RELAX)
        and not s.estimator.options.get("black_box")
        and s.has_parameters
        and s.value.numel()
    ]
    for site in sites:  # every refusal before any control variate is created
        ev.refuse_black_box_costs(site)
        site.estimator._check_later_sites(ev, site)
    structure = ev.structure
    stackable = [s for s in sites if s.estimator.options.get("vectorize_passes", True)]
    if stackable and structure.relaxed_stacking is None:
        obstacle = ev.stacking_obstacle(min(s.order for s in stackable))
        if obstacle:
            structure.relaxed_stacking, structure.relaxed_stacking_reason = False, obstacle
    stack = (
        bool(stackable)
        and structure.relaxed_stacking is True
        and all(s.name in structure.checked for s in stackable)
    )
    done = {}
    for site in sites:
        estimator = site.estimator
        z_tilde = site.conditional_z(estimator.options["reuse_noise"])
        eta, temp, params = estimator.control_variate_params(site)
        relaxation = site.relaxation()
        prepared = _Prepared(
            site,
            z_tilde,
            eta,
            temp,
            params,
            relaxation.relax(site.z, temp),
            relaxation.relax(z_tilde, temp),
        )
        if not (stack and site in stackable):
            prepared.f_z, prepared.f_zt = estimator._looped_passes(ev, prepared)
        done[site.name] = prepared
    stacked = [done[s.name] for s in stackable]
    if stack:
        signals = ev.stacked_relaxed_signals(_requests(stacked))
        for i, prepared in enumerate(stacked):
            prepared.f_z, prepared.f_zt = signals[2 * i], signals[2 * i + 1]
    elif (
        stackable
        and structure.relaxed_stacking is None
        and not is_compiling()
        and all(s.name in structure.checked for s in stackable)
    ):
        _try_stacking(ev, stacked)
    ev.shared_results["relax"] = done
    return done


def _joint_terms(ev) -> dict[str, Terms]:
    r"""The terms of every REBAR / RELAX site of the step (``black_box`` ones aside), found
    together: one backward pass gives every site's :math:`\partial_\ell [c_\phi(z) -
    c_\phi(\tilde z)]` (:func:`~pyro_discrete.estimators.relax_logit_gradients`), and one
    double backward fits every control variate on the summed single-sample
    :math:`\sum_i \hat g_i^2`, the variance of the whole estimate (as in the RELAX paper):
    a later site's temperature, which also shapes the relaxed passes of earlier sites, is
    fitted to the variance of their estimates too. The first site with trained control
    variates carries the joint objective."""
    done = ev.shared_results.get("relax_terms")
    if done is not None:
        return done
    found = []
    for prepared in _relaxed_passes(ev).values():
        site, estimator = prepared.site, prepared.site.estimator
        c_z, c_zt = prepared.eta * prepared.f_z, prepared.eta * prepared.f_zt
        extra_z, network = estimator.learned_surrogate(site, site.z, c_z)
        extra_zt, _ = estimator.learned_surrogate(site, prepared.z_tilde, c_zt)
        trained = prepared.params + network
        learn = bool(estimator.options["learn_control_variates"]) and bool(trained)
        found.append((site, c_z + extra_z, c_zt + extra_zt, trained, network, learn))
    done = _terms_together(ev, found)
    ev.shared_results["relax_terms"] = done
    return done


def _terms_together(ev, found: list[tuple]) -> dict[str, Terms]:
    r"""The terms of the sites of ``found``, entries ``(site, c(z), c(z~), trained,
    network, learn)``: the surrogates from one backward pass, and one objective
    :math:`\sum_i \hat g_i^2` (plus ``weight_decay`` on each ``network``) over the sites that
    ``learn``, carried by the first of them."""
    grads = E.relax_logit_gradients(
        [f[0].logits for f in found],
        [E.logit_score(f[0].logits, f[0].hard, f[0].one_hot) for f in found],
        [f[0].to_event_shape(ev.signal(f[0])) for f in found],
        [f[1] for f in found],
        [f[0].to_event_shape(f[2]) for f in found],
        create_graph=any(f[5] for f in found),
    )
    done, objective, trained_all, first = {}, None, {}, None
    for (site, _, _, trained, network, learn), grad in zip(found, grads, strict=True):
        done[site.name] = Terms(surrogate=(grad.detach() * site.logits).sum())
        if not learn:
            continue
        first = first or site.name
        part = E.gradient_variance_loss(grad)
        decay = site.estimator.options.get("weight_decay", 0.0)
        if decay:
            part = part + 0.5 * decay * sum(p.pow(2).sum() for p in network)
        objective = part if objective is None else objective + part
        trained_all.update((id(p), p) for p in trained)  # a shared network counts once
    if first is not None:
        done[first].control_variate_loss = variance_gradient_loss(
            objective, list(trained_all.values())
        )
    return done


def _requests(prepared: list[_Prepared]) -> list[tuple]:
    requests = []
    for p in prepared:
        requests.append((p.site, p.relaxed_z, p.temperature))
        requests.append((p.site, p.relaxed_z_tilde, p.temperature))
    return requests


def _try_stacking(ev, prepared: list[_Prepared]) -> None:
    """Run the stacked pass once beside the loop's results (drawing nothing from the random
    streams, recording no gradient) and stack this trace structure from the next step on
    if every signal agrees to float rounding."""
    structure = ev.structure
    try:
        with torch.no_grad(), preserved_rng():
            signals = ev.stacked_relaxed_signals(_requests(prepared))
    except Exception as error:  # a model that cannot broadcast over the stacked dim
        structure.relaxed_stacking = False
        structure.relaxed_stacking_reason = f"{type(error).__name__}: {error}"
        return
    looped = [f for p in prepared for f in (p.f_z, p.f_zt)]
    for (site, _, _), mine, theirs in zip(_requests(prepared), signals, looped, strict=True):
        theirs = theirs.detach()
        scale = float(theirs.abs().max()) if theirs.numel() else 0.0
        if mine.shape != theirs.shape or not torch.allclose(
            mine, theirs, rtol=1e-4, atol=1e-5 * scale + 1e-6, equal_nan=True
        ):
            structure.relaxed_stacking = False
            structure.relaxed_stacking_reason = (
                f"the stacked pass gave site '{site.name}' a different learning signal "
                "(the model reads shapes, reduces over every dim or draws its own noise)"
            )
            return
    structure.relaxed_stacking = True
