r"""Importance-weighted bounds on :math:`\log p(x)` for amortised model/guide pairs.

For :math:`z_1, \ldots, z_K \sim q(z \mid x)` independently,

.. math::

    \mathcal{L}_K(x) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K
        \frac{p(x, z_k)}{q(z_k \mid x)}\Big] \le \mathcal{L}_{K+1}(x) \le \log p(x),

with :math:`\mathcal{L}_1` the ELBO [1]. The REBAR/RELAX protocol reports
:math:`\mathcal{L}_{100}` on held-out data.

**References**

[1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted Autoencoders".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

__all__ = ["log_importance_weights", "importance_weighted_bound", "elbo_estimate"]

_SAMPLES = "_importance_samples"


def _latent_and_observed_sites(trace):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def _per_datum(site: dict, name: str, max_plate_nesting: int, num_data: int) -> torch.Tensor:
    # The data plate is the outermost one (dim -max_plate_nesting); inner plates are summed.
    # A site outside it (a global latent) has no per-datum share of the weight, so refuse.
    in_data_plate = any(
        f.dim == -max_plate_nesting and f.name != _SAMPLES for f in site["cond_indep_stack"]
    )
    if not in_data_plate and num_data != 1:
        raise ValueError(
            f"site {name!r} is not inside the data plate (the outermost plate, at dim "
            f"{-max_plate_nesting}); per-datum importance weights need every latent and "
            "observed site inside it, as in an amortised model"
        )
    ndim = max_plate_nesting + 1
    log_prob = site["log_prob"]
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    if ndim > 2:
        log_prob = log_prob.sum(tuple(range(2, ndim)))
    return log_prob


def log_importance_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    max_plate_nesting: int = 1,
    return_traces: bool = False,
    **kwargs,
):
    r"""Log-weights :math:`\log p(x_n, z_{kn}) - \log q(z_{kn} \mid x_n)`, shape ``(K, N)``.

    ``K = num_samples`` guide draws are taken at once by wrapping ``model`` and ``guide`` in
    a plate at dim ``-(max_plate_nesting + 1)`` (as Pyro's ``vectorize_particles`` does), so
    both must broadcast over a leading sample dimension. The data plate must be the
    outermost plate, at dim ``-max_plate_nesting``, over ``N`` points. No gradients are
    recorded.

    :returns: the ``(K, N)`` tensor, and the guide and model traces if ``return_traces``.
    """
    particle_dim = -(max_plate_nesting + 1)

    def vectorised(fn):
        def wrapped(*a, **kw):
            with pyro.plate(_SAMPLES, num_samples, dim=particle_dim):
                return fn(*a, **kw)

        return wrapped

    with torch.no_grad():
        guide_trace = poutine.trace(vectorised(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(vectorised(model), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        num_data = _data_size(guide_trace, model_trace, max_plate_nesting)
        terms = [
            _per_datum(site, name, max_plate_nesting, num_data)
            for name, site in _latent_and_observed_sites(model_trace)
        ]
        terms += [
            -_per_datum(site, name, max_plate_nesting, num_data)
            for name, site in _latent_and_observed_sites(guide_trace)
            if not site["is_observed"]
        ]
        log_w = sum(terms[1:], terms[0]).expand(num_samples, num_data)
    return (log_w, guide_trace, model_trace) if return_traces else log_w


def _data_size(guide_trace, model_trace, max_plate_nesting: int) -> int:
    for trace in (model_trace, guide_trace):
        for _name, site in _latent_and_observed_sites(trace):
            for frame in site["cond_indep_stack"]:
                if frame.dim == -max_plate_nesting and frame.name != _SAMPLES:
                    return frame.size
    return 1


def _split(args: tuple, kwargs: dict, start: int, stop: int):
    def cut(v):
        return v[start:stop] if torch.is_tensor(v) and v.dim() > 0 else v

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _num_rows(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("no tensor argument to split into minibatches")


def importance_weighted_bound(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 100,
    batch_size: int = 100,
    chunk_size: int = 100,
    max_plate_nesting: int = 1,
    reduction: str = "mean",
    **kwargs,
) -> float | torch.Tensor:
    r"""The :math:`K`-sample importance-weighted bound :math:`\mathcal{L}_K(x_n)`, per datum.

    Tensor arguments (``x``, or ``x, y`` for a regression model) are split along their
    first dimension into minibatches of ``batch_size`` data points, and the ``K`` samples
    into chunks of ``chunk_size`` drawn in one vectorised pass each; chunks are combined in
    log space, so memory is bounded by ``batch_size * chunk_size`` samples.

    :param int num_samples: :math:`K`; ``1`` gives a single-sample ELBO estimate.
    :param str reduction: ``"mean"`` (a float averaged over data points), ``"sum"`` or
        ``"none"`` (a tensor of shape ``(N,)``).

    Example::

        >>> import pyro, torch
        >>> from pyro_discrete.models import SigmoidBeliefNet
        >>> pyro.clear_param_store()
        >>> vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3,))
        >>> x = torch.bernoulli(torch.full((20, 6), 0.5))
        >>> bound = importance_weighted_bound(vae.model, vae.guide, x, num_samples=50)
        >>> bound < 0
        True
        >>> pyro.clear_param_store()
    """
    if num_samples < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("num_samples, batch_size and chunk_size must be positive")
    n = _num_rows(args, kwargs)
    per_datum = []
    for start in range(0, n, batch_size):
        a, kw = _split(args, kwargs, start, min(start + batch_size, n))
        chunks = []
        for offset in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - offset)
            log_w = log_importance_weights(
                model, guide, *a, num_samples=k, max_plate_nesting=max_plate_nesting, **kw
            )
            chunks.append(log_w.logsumexp(0))
        per_datum.append(torch.stack(chunks).logsumexp(0) - math.log(num_samples))
    bound = torch.cat(per_datum)
    if reduction == "none":
        return bound
    if reduction == "sum":
        return bound.sum().item()
    if reduction == "mean":
        return bound.mean().item()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def elbo_estimate(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    batch_size: int = 1000,
    max_plate_nesting: int = 1,
    **kwargs,
) -> float:
    r"""Monte Carlo ELBO per data point, :math:`\frac{1}{NS}\sum_{n,s} \log w_{sn}`.

    Unlike :math:`\mathcal{L}_K` this averages the log-weights, so it estimates
    :math:`\mathcal{L}_1` for any ``num_samples``; it is the figure training curves report.
    """
    n = _num_rows(args, kwargs)
    total = 0.0
    for start in range(0, n, batch_size):
        a, kw = _split(args, kwargs, start, min(start + batch_size, n))
        log_w = log_importance_weights(
            model, guide, *a, num_samples=num_samples, max_plate_nesting=max_plate_nesting, **kw
        )
        total += log_w.sum().item()
    return total / (n * num_samples)
