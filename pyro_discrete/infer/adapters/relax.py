"""Relaxation-based control variates: RELAX and its special case REBAR."""

from __future__ import annotations

import math

import pyro
import torch
from torch import Tensor, nn

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms, variance_gradient_loss
from pyro_discrete.infer.evaluation import GUIDE, cost_terms
from pyro_discrete.infer.shared_noise import SharedNoise
from pyro_discrete.infer.sites import SiteError, is_relaxable
from pyro_discrete.nn import mlp


class RELAX(SiteEstimator):
    r"""RELAX (Grathwohl et al. 2018) for Bernoulli and one-hot categorical sites.

    .. math:: \hat g = [f(b) - c_\phi(\tilde z)]\,\partial_\theta \log q(b)
              + \partial_\theta c_\phi(z) - \partial_\theta c_\phi(\tilde z),
              \qquad c_\phi(z) = \eta\, f(\sigma_\lambda(z)) + r_\rho(z).

    Per site, three evaluations: the hard base pass, a relaxed pass
    (:math:`\sigma_\lambda(z)`) and a conditionally relaxed pass
    (:math:`\sigma_\lambda(\tilde z)`, :math:`\tilde z \sim p(z \mid b)` re-using the
    noise of :math:`z`). Sites earlier in the guide keep their hard values, later
    Bernoulli / one-hot sites are relaxed with their own noise (the official multi-layer
    scheme). :math:`\eta` (``eta``, 1.0) and :math:`\lambda` (``temperature``, 0.5) are
    per-site parameters ``pyro_discrete/<estimator>/<site>/eta`` and ``.../log_temperature``
    trained by the SVI optimizer on the variance objective :math:`\hat g^2`, unless
    ``learn_control_variates=False``.

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

    def _black_box_surrogates(self, site, z_tilde: Tensor) -> tuple[Tensor, Tensor, list]:
        r""":math:`r_\rho(z)`, :math:`r_\rho(\tilde z)` (one value per plate element, shaped
        like the learning signal) and :math:`\rho`: no relaxed pass of the model."""
        like = site.logits.new_zeros(site.plate_shape)
        c_z, network = self.learned_surrogate(site, site.z, like)
        c_zt, _ = self.learned_surrogate(site, z_tilde, like)
        return c_z, c_zt, network

    def site_terms(self, ev, site):
        z_tilde = site.conditional_z(self.options["reuse_noise"])
        if self.options.get("black_box"):
            c_z, c_zt, params = self._black_box_surrogates(site, z_tilde)
            return self._terms(ev, site, c_z, c_zt, params)
        self._check_later_sites(ev, site)
        eta, temp, params = self.control_variate_params(site)
        relaxation = site.relaxation()
        # c(z) and c(z~) are one function: later value-free draws (continuous sites) are
        # shared between the two passes, eagerly and inside a compiled program
        noise = SharedNoise(site.logits)
        with noise.first():
            c_z = eta * self._relaxed_signal(ev, site, relaxation.relax(site.z, temp), temp, True)
        with noise.again():
            c_zt = eta * self._relaxed_signal(
                ev, site, relaxation.relax(z_tilde, temp), temp, False
            )
        extra_z, network = self.learned_surrogate(site, site.z, c_z)
        extra_zt, _ = self.learned_surrogate(site, z_tilde, c_zt)
        return self._terms(ev, site, c_z + extra_z, c_zt + extra_zt, params + network, network)

    def _terms(self, ev, site, c_z, c_zt, trained: list, network: list | None = None) -> Terms:
        r"""The surrogate and control-variate objective of one site given
        :math:`c_\phi(z)`, :math:`c_\phi(\tilde z)` and every trained :math:`\phi`
        (``network``: those that ``weight_decay`` applies to, default all)."""
        network = trained if network is None else network
        learn = bool(self.options["learn_control_variates"]) and bool(trained)
        grad = E.relax_logit_gradient(
            site.logits,
            E.logit_score(site.logits, site.hard, site.one_hot),
            site.to_event_shape(ev.signal(site)),
            c_z,
            site.to_event_shape(c_zt),
            create_graph=learn,
        )
        terms = Terms(surrogate=(grad.detach() * site.logits).sum())
        if learn:
            objective = E.gradient_variance_loss(grad)
            decay = self.options.get("weight_decay", 0.0)
            if decay:
                objective = objective + 0.5 * decay * sum(p.pow(2).sum() for p in network)
            terms.control_variate_loss = variance_gradient_loss(objective, trained)
        return terms


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
    }

    def learned_surrogate(self, site, z, like):
        return 0.0, []
