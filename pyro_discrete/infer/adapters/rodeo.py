r"""``rodeo``: RLOO with learned discrete-Stein control variates (Shi et al., NeurIPS 2022).

See :mod:`pyro_discrete.estimators.rodeo` for the formula.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from torch import nn

from pyro_discrete import estimators as E
from pyro_discrete.estimators import rodeo as rodeo_estimator
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.value_gradient import (
    ValueGradientEstimator,
    sample_dim,
    signal_and_value_gradient,
)

#: the estimated memory of the pairwise control variate above which a warning is given
PAIRWISE_WARNING_BYTES = 2**30


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

    Cost: with :math:`D` coordinates per plate element the control variate takes
    :math:`O(K 2^D)` network evaluations when that is cheaper (a Bernoulli per plate
    element, :math:`D = 1`: linear in :math:`K`), else :math:`O(K^2 D)` (all ordered pairs
    of particles); a ``UserWarning`` names the memory when the pairwise computation
    would take more than 1 GiB.
    """

    name = "rodeo"
    defaults = {"alpha": 0.0, "beta": 0.0, "hidden": (100,), "learn_control_variates": True}

    def __init__(self, site: str | None = None, **options):
        super().__init__(site, **options)
        self._warned: set[str] = set()

    def validate_options(self) -> None:
        super().validate_options()
        for key in ("alpha", "beta"):
            if not isinstance(self.options[key], (int, float)):
                raise TypeError(f"estimator 'rodeo': {key} must be a number")
        hidden = tuple(self.options["hidden"])
        if not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError("estimator 'rodeo': hidden must be a sequence of positive ints")

    def _warn_if_large(self, site, dim: int) -> None:
        """Warn once per site when the pairwise control variate will take more than
        :data:`PAIRWISE_WARNING_BYTES`."""
        if site.name in self._warned:
            return
        shape = site.hard.shape
        k = shape[dim]
        d = math.prod(shape[len(shape) - site.event_ndim :])
        m = site.hard.numel() // (k * d)
        evaluations = rodeo_estimator.pairwise_evaluations(k, m, d)
        # inputs, outputs, and each hidden layer's pre- and post-activation, kept for backward
        floats = 4 + 2 * sum(int(h) for h in self.options["hidden"])
        size = evaluations * floats * site.hard.element_size()
        if size <= PAIRWISE_WARNING_BYTES:
            return
        self._warned.add(site.name)
        warnings.warn(
            f"estimator 'rodeo' on site '{site.name}': its control variate evaluates a network "
            f"at all K(K-1) = {k * (k - 1)} ordered pairs of particles for each of {m} "
            f"neighbourhoods of D = {d} coordinates (D + 1 points each), about "
            f"{size / 2**30:.1f} GiB and time in proportion; the cost grows with K^2 (see "
            "docs/choosing.md). Use fewer particles, fewer hidden units "
            "(estimator_options={'hidden': (16,)}), or 'double_cv' / 'rloo', which are linear "
            "in K",
            UserWarning,
            stacklevel=2,
        )

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
        self._warn_if_large(site, dim)
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
