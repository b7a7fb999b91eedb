r"""``rodeo``: RLOO with learned discrete-Stein control variates (Shi et al., NeurIPS 2022).

See :mod:`pyro_discrete.estimators.rodeo` for the formula.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.value_gradient import (
    ValueGradientEstimator,
    sample_dim,
    signal_and_value_gradient,
)


def control_network(hidden: Sequence[int], slope: float = 0.3) -> nn.Sequential:
    r""":math:`\mathrm{NN}_\phi: \mathbb R^2 \to \mathbb R^2`, (Taylor term, signal) to
    :math:`(h^0, h^1)`; the official code's is one 100-unit LeakyReLU(0.3) layer."""
    layers: list[nn.Module] = []
    width = 2
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(slope)]
        width = h
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)


class RODEO(ValueGradientEstimator):
    r"""RODEO (Shi, Zhou, Hwang, Titsias & Mackey 2022) for Bernoulli sites, K =
    ``num_particles`` >= 2 samples and no extra evaluation of the model.

    Control variates from the Gibbs Stein operator (each sample's :math:`D` one-flip
    neighbours within a plate element's event block) applied to a learned function
    :math:`h_k(y) = \mathrm{mean}_{j \ne k}\, \mathrm{NN}_\phi(g_j^\top (y - x_j), f_j)` of
    the other samples' signals and value gradients :math:`g_j = \nabla_x f(x_j)` (read from
    the base pass). Per site, the network ``pyro_discrete/rodeo/<site>/control``
    (``hidden``, (100,), LeakyReLU(0.3)) and the scales ``.../alpha`` and ``.../beta``
    (initial ``alpha`` and ``beta``, 0.0: RLOO, as in the paper's code) are trained by the
    SVI optimizer on the variance objective, unless ``learn_control_variates=False``.
    The network reads scalars, so one architecture serves every site shape.
    """

    name = "rodeo"
    defaults = {"alpha": 0.0, "beta": 0.0, "hidden": (100,), "learn_control_variates": True}

    def validate_options(self) -> None:
        super().validate_options()
        for key in ("alpha", "beta"):
            if not isinstance(self.options[key], (int, float)):
                raise TypeError(f"estimator 'rodeo': {key} must be a number")
        hidden = tuple(self.options["hidden"])
        if not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError("estimator 'rodeo': hidden must be a sequence of positive ints")

    def site_terms(self, ev, site):
        signal, value_grad = signal_and_value_gradient(ev, site)
        dim = sample_dim(ev, site)
        like = site.logits.detach().new_zeros(2)  # dtype, device and the network's width
        net = cv.registered_module(
            cv.state_name(self.name, site.name, "control"),
            lambda: control_network(tuple(self.options["hidden"])),
            like,
            self.networks,
        )
        learn = bool(self.options["learn_control_variates"])
        scales = []
        for key in ("alpha", "beta"):
            if learn:
                name = cv.state_name(self.name, site.name, key)
                scales.append(cv.trained_scalar(name, site.logits, float(self.options[key])))
            else:
                scales.append(float(self.options[key]))
        grad = E.rodeo_logit_gradient(
            signal,
            site.hard,
            site.logits.sigmoid(),
            value_grad,
            net,
            scales[0],
            scales[1],
            dim,
            site.event_ndim,
        )
        params = scales + [p for p in net.parameters() if p.requires_grad] if learn else []
        return self.logit_terms(site, grad, dim, params)
