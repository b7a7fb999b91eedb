r"""The expectation-model site estimator: a network's prediction of the gradient. **Biased.**"""

from __future__ import annotations

import pyro
import torch
from torch import Tensor, nn

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms
from pyro_discrete.nn import mlp

__all__ = ["ExpectationModel"]


def from_plate_features(y: Tensor, like: Tensor, batch_ndim: int, plate_dims) -> Tensor:
    """The inverse of :func:`~pyro_discrete.infer.control_variates.plate_features`: one
    feature vector per plate element back to ``like``'s shape."""
    kept = sorted(batch_ndim + d for d in plate_dims)
    order = kept + [i for i in range(like.dim()) if i not in kept]
    y = y.reshape(tuple(like.shape[i] for i in order))
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return y.permute(inverse)


class ExpectationModel(SiteEstimator):
    r"""The expectation model ("synthetic gradients for expectation modelling", MILA
    slides; Jaderberg et al. 2017) for Bernoulli and one-hot categorical sites. **Biased.**

    A network :math:`g_\psi` of the site's (detached) logits, per plate element, predicts
    the gradient of the ELBO with respect to those logits. It is trained by regression
    (``fit_loss``) on unbiased single-sample targets :math:`\hat g = (f(b) - c)\,
    \partial_\ell \log q(b)`: RLOO's leave-one-out baseline when the ELBO has vectorised
    particles (``num_particles`` >= 2), else REINFORCE with a decaying-average baseline
    (rate ``baseline_beta``, 0.9). Its prediction, not :math:`\hat g`, is the gradient the
    guide receives: low variance, biased by the regression error (large while the network
    is young or the parameters move fast); see :mod:`pyro_discrete.estimators.expectation_model`.

    The logits carry the guide's input and every upstream sample; ``hidden`` ((64, 64))
    sets the tanh network's widths, or ``network=`` a module mapping ``(..., D)`` features
    to ``(..., D)`` (``D`` the site's event size; globally or per site through
    ``infer={"estimator_options": {...}}``). Either way it is registered as
    ``pyro_discrete/expectation_model/<site>/network``, trained by the SVI optimizer (give
    it its own rate with :func:`~pyro_discrete.infer.control_variate_lr`) and saved with
    the param store.
    """

    name = "expectation_model"
    requires = "relaxable"
    defaults = {"hidden": (64, 64), "baseline_beta": 0.9, "network": None}
    running_state = {"average": 0.0}

    def prediction(self, site) -> Tensor:
        """:math:`g_\\psi`, shaped like the site's logits."""
        dims = [d for _, d in site.frames]
        features = cv.plate_features(site.logits.detach(), site.batch_ndim, dims)
        name = self.state_name(site.name, "network")
        net = self.options["network"]
        if net is None:
            width = features.shape[-1]
            net = cv.registered_module(
                name, lambda: mlp(width, self.options["hidden"], width, nn.Tanh), features,
                self.networks,
            )
        else:
            net = pyro.module(name, net, update_module_params=True)
        return from_plate_features(net(features), site.logits, site.batch_ndim, dims)

    def site_terms(self, ev, site):
        signal = ev.signal(site).detach()
        updates = []
        if ev.particle_frame is not None:
            centred = E.leave_one_out_signal(signal, ev.particle_dim(site))
        else:
            scale = ev.scale(site)
            average = self.statistic(site, "average", signal)
            centred = signal - scale * average
            beta = self.options["baseline_beta"]
            new = E.decaying_average(average, (signal / scale).mean(), beta)
            updates.append((self.state_name(site.name, "average"), new))
        score = E.logit_score(site.logits, site.hard, site.one_hot)
        target = E.score_function_logit_gradient(score, site.to_event_shape(centred))
        prediction = self.prediction(site)
        if prediction.shape != site.logits.shape:
            prediction = torch.broadcast_to(prediction, site.logits.shape)
        return Terms(
            surrogate=E.expectation_model_surrogate(site.logits, prediction),
            fit_loss=E.expectation_model_loss(prediction, target),
            updates=updates,
        )
