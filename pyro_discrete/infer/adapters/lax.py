"""LAX (Grathwohl et al. 2018) for continuous guide sites whose cost is a black box."""

from __future__ import annotations

import pyro
import torch
from torch import Tensor, nn

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.base import SiteEstimator, variance_gradient_loss
from pyro_discrete.infer.adapters.score_function import Reinforce, pyro_baseline
from pyro_discrete.infer.sites import (
    BERNOULLI,
    CATEGORICAL,
    ONE_HOT,
    SiteError,
    log_prob,
    reparameterized_draw,
)
from pyro_discrete.nn import mlp

_RELAX_BLACK_BOX = (
    "infer={'estimator': 'relax', 'estimator_options': {'black_box': True}} (RELAX with a "
    "learned surrogate, which needs no gradient of the cost), or 'rloo'"
)


class LAX(SiteEstimator):
    r"""LAX (Grathwohl et al. 2018) for continuous guide sites that are not reparameterised.

    .. math:: \hat g = \big[f(b) - c_\phi(b)\big]\,\partial_\theta \log q(b)
              + \partial_\theta c_\phi\big(T(\theta, \varepsilon)\big)

    For a site that has a reparameterised sampler :math:`b = T(\theta, \varepsilon)` but
    whose cost :math:`f` must be treated as a black box: Pyro's ``has_rsample_(False)``
    convention (``dist.Normal(...).has_rsample_(False)``,
    ``pyro.distributions.testing.fakes.NonreparameterizedNormal``), or a cost computed
    outside torch. :math:`f` (the site's learning signal, as REINFORCE's) is never
    differentiated; the model sees the detached :math:`b`. Unbiased for every
    :math:`c_\phi`. Normal, LogNormal, Beta, Gamma, and every torch / Pyro distribution
    that has ``rsample`` and is rebuilt from its parameters (Exponential, Dirichlet,
    Laplace, Uniform, ...); a site without ``rsample`` (Poisson, Binomial) gets a
    :class:`~pyro_discrete.infer.SiteError`, and so does a discrete site (use ``relax``
    with ``black_box=True``).

    The default :math:`c_\phi` is a tanh MLP (``hidden``, (50, 50)) built per site on the
    features ``[b, parameters]`` of each plate element (the distribution's parameters,
    detached, carry the guide's input and every upstream sample, so :math:`c_\phi` is a
    control variate of the sample *and* of the site's parents). ``surrogate=`` a module
    mapping those features to ``(..., 1)`` replaces it, globally or per site through
    ``infer={"estimator": "lax", "estimator_options": {"surrogate": net}}``; either way it
    is registered as ``pyro_discrete/lax/<site>/surrogate`` and trained by the SVI
    optimizer on the variance objective :math:`\sum \hat g^2` (gradients with respect to
    the distribution's parameter tensors), unless ``learn_control_variates=False``.
    ``weight_decay`` adds :math:`\frac{w}{2}\|\phi\|^2` to that objective. Pyro's
    ``infer={"baseline": {...}}`` options are honoured as in ``reinforce``: a baseline is
    a constant added to :math:`c_\phi`.

    Costs per step: two evaluations of :math:`c_\phi` and a double backward through it;
    the model and guide run once.
    """

    name = "lax"
    requires = "reparameterizable"
    baseline_options = Reinforce.baseline_options
    defaults = {
        "hidden": (50, 50),
        "surrogate": None,
        "weight_decay": 0.0,
        "learn_control_variates": True,
    }

    def check_site(self, name: str, kind: str, dist_name: str) -> None:
        if kind in (BERNOULLI, ONE_HOT):
            raise SiteError(
                f"site '{name}' has distribution {dist_name}; estimator 'lax' needs a "
                "continuous site with a reparameterised sampler (Normal, Gamma, Beta, ...). "
                f"For a discrete site with a black-box cost use {_RELAX_BLACK_BOX}"
            )
        if kind == CATEGORICAL:
            raise SiteError(
                f"site '{name}' is an index-valued {dist_name}; estimator 'lax' needs a "
                "continuous site with a reparameterised sampler. Write it as "
                f"dist.OneHotCategorical(logits=...) and use {_RELAX_BLACK_BOX}; or "
                "infer={'estimator': 'reinforce'}"
            )

    def continuous_value(self, site) -> Tensor:
        site.reparameterized = reparameterized_draw(site.fn, site.name, self.name)
        site.z = site.reparameterized.sample
        site.hard = site.z.detach()
        return site.hard

    def control_variate(self, site, sample: Tensor) -> tuple[Tensor, list[Tensor]]:
        r""":math:`c_\phi` at ``sample``, one value per plate element (shaped
        ``site.plate_shape``), and :math:`\phi`."""
        draw = site.reparameterized
        shape = site.fn.shape()
        columns = [sample]
        for value in draw.params.values():
            if torch.is_tensor(value) and _broadcasts(value.shape, shape):
                columns.append(value.detach().to(sample.dtype).expand(shape))
        dims = [d for _, d in site.frames]
        features = torch.cat([cv.plate_features(c, site.batch_ndim, dims) for c in columns], -1)
        name = self.state_name(site.name, "surrogate")
        net = self.options["surrogate"]
        if net is None:
            net = cv.registered_module(
                name,
                lambda: mlp(features.shape[-1], self.options["hidden"], 1, nn.Tanh),
                features,
                self.networks,
            )
        else:  # the SVI optimizer steps only what is registered during the step
            net = pyro.module(name, net, update_module_params=True)
        out = net(features)
        return out.reshape(site.plate_shape), [p for p in net.parameters() if p.requires_grad]

    def site_terms(self, ev, site):
        draw = site.reparameterized
        trained = draw.trained
        signal = ev.signal(site)
        terms, baseline = pyro_baseline(ev, site, signal)
        c_detached, network = self.control_variate(site, draw.sample.detach())
        c_pathwise, _ = self.control_variate(site, draw.sample)
        learn = bool(self.options["learn_control_variates"]) and bool(network)
        grads = E.lax_parameter_gradients(
            list(trained.values()),
            log_prob(draw.fn, draw.sample.detach(), masked=False),
            signal - (baseline.detach() if torch.is_tensor(baseline) else baseline),
            c_detached,
            c_pathwise,
            create_graph=learn,
        )
        terms.surrogate = sum(
            (g.detach() * draw.originals[k]).sum() for k, g in zip(trained, grads, strict=True)
        )
        if learn:
            objective = sum(E.gradient_variance_loss(g) for g in grads)
            decay = self.options["weight_decay"]
            if decay:
                objective = objective + 0.5 * decay * sum(p.pow(2).sum() for p in network)
            terms.control_variate_loss = variance_gradient_loss(objective, network)
        return terms


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False
