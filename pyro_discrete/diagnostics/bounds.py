r"""Importance-weighted bounds on :math:`\log p(x)` for Pyro model/guide pairs.

For :math:`z_1, \ldots, z_K \sim q(z \mid x)` independently,

.. math::

    \mathcal{L}_K(x) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K
        \frac{p(x, z_k)}{q(z_k \mid x)}\Big] \le \mathcal{L}_{K+1}(x) \le \log p(x),

with :math:`\mathcal{L}_1` the ELBO [1]. The REBAR/RELAX protocol reports
:math:`\mathcal{L}_{100}` on held-out data.

Sites inside the *data plate* (the plate at dim ``-max_plate_nesting`` that holds the
observations) give each data point its own weight :math:`w_{kn}`, and the bound is computed
per data point. A *global* site (outside it: a mixture's component locations, a shared
scale) has one value for the whole data set, so the weights only exist for the data set as a
whole, :math:`\log w_k = \log \frac{p(\theta_k)}{q(\theta_k)} + \sum_n \log
\frac{p(x_n, z_{kn} \mid \theta_k)}{q(z_{kn} \mid \theta_k, x_n)}`: the ELBO still splits
into a sum (:func:`elbo_estimate` handles it in minibatches), the :math:`K`-sample bound
does not (:func:`importance_weighted_bound` then needs all the data in one pass).

**References**

[1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted Autoencoders".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class _LogWeights:
    """The log-weights of ``K`` joint draws, split by where each site lives.

    ``per_datum``: ``(K, N)``, the terms of the sites inside the data plate;
    ``shared``: ``(K,)``, the terms of the global sites, ``global_sites`` maps their names to
    their distributions' names.
    """

    per_datum: torch.Tensor
    shared: torch.Tensor
    global_sites: dict[str, str]
    data_plate: str | None
    guide_trace: poutine.Trace
    model_trace: poutine.Trace


def _data_plate(model_trace, max_plate_nesting: int) -> tuple[str | None, int]:
    """Name and size of the plate at dim ``-max_plate_nesting`` around the observed sites;
    ``(None, 1)`` for a model without one (its data is then a single data point).

    Identified by name, not by dim alone: a plate over mixture components at the same dim
    (not nested in the data plate) is a global one.
    """
    plates: dict[str, int] = {}
    for _name, site in _latent_and_observed_sites(model_trace):
        if site["is_observed"]:
            for frame in site["cond_indep_stack"]:
                if frame.dim == -max_plate_nesting and frame.name != _SAMPLES:
                    plates.setdefault(frame.name, frame.size)
    if len(plates) > 1:
        raise ValueError(
            f"observed sites lie in several plates at dim {-max_plate_nesting} "
            f"({', '.join(map(repr, plates))}); the diagnostics need one data plate"
        )
    return next(iter(plates.items()), (None, 1))


def _sum_to(log_prob: torch.Tensor, max_plate_nesting: int, keep: int) -> torch.Tensor:
    # Left-pad to (samples, *plates), then sum every plate dim after the first ``keep``.
    ndim = max_plate_nesting + 1
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    return log_prob.sum(tuple(range(keep, ndim))) if ndim > keep else log_prob


def _log_weight_terms(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    max_plate_nesting: int,
) -> _LogWeights:
    """Trace ``num_samples`` vectorised draws and split their log-weights (no gradients)."""
    particle_dim = -(max_plate_nesting + 1)

    def vectorised(fn):
        def wrapped(*a, **kw):
            with pyro.plate(_SAMPLES, num_samples, dim=particle_dim):
                return fn(*a, **kw)

        return wrapped

    with torch.no_grad():
        guide_trace = poutine.trace(vectorised(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(vectorised(model), trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        plate, num_data = _data_plate(model_trace, max_plate_nesting)
        sites = [(n, s, 1.0) for n, s in _latent_and_observed_sites(model_trace)]
        sites += [
            (n, s, -1.0) for n, s in _latent_and_observed_sites(guide_trace) if not s["is_observed"]
        ]
        zero = sites[0][1]["log_prob"].new_zeros(())  # the data's device and dtype
        per_datum, shared, global_sites = zero, zero, {}
        for name, site, sign in sites:
            if plate is None or any(f.name == plate for f in site["cond_indep_stack"]):
                per_datum = per_datum + sign * _sum_to(site["log_prob"], max_plate_nesting, 2)
            else:
                shared = shared + sign * _sum_to(site["log_prob"], max_plate_nesting, 1)
                global_sites.setdefault(name, _distribution_name(site["fn"]))
    return _LogWeights(
        per_datum.expand(num_samples, num_data),
        shared.expand(num_samples),
        global_sites,
        plate,
        guide_trace,
        model_trace,
    )


def _distribution_name(fn) -> str:
    # Pyro wraps a site's distribution (plates expand it, .to_event makes it Independent).
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


def _global_sites_message(terms: _LogWeights) -> str:
    names = ", ".join(f"{name!r} ({dist})" for name, dist in terms.global_sites.items())
    verb = "is" if len(terms.global_sites) == 1 else "are"
    return (
        f"site{'s' if len(terms.global_sites) > 1 else ''} {names} {verb} global (outside the "
        f"data plate {terms.data_plate!r} of {terms.per_datum.shape[-1]} data points)"
    )


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
    both must broadcast over a leading sample dimension. The observed sites must lie in one
    plate at dim ``-max_plate_nesting``, over ``N`` points (the data plate), and every latent
    site inside it too, as in an amortised model: a global site has no per-datum weight (a
    ``ValueError`` names it; :func:`elbo_estimate` and :func:`importance_weighted_bound` with
    ``batch_size=None`` accept global sites). No gradients are recorded.

    :returns: the ``(K, N)`` tensor, and the guide and model traces if ``return_traces``.
    """
    terms = _log_weight_terms(model, guide, args, kwargs, num_samples, max_plate_nesting)
    if terms.global_sites and terms.per_datum.shape[-1] > 1:
        raise ValueError(
            f"{_global_sites_message(terms)}: per-datum importance weights need every site "
            "inside the data plate, as in an amortised model. elbo_estimate, and "
            "importance_weighted_bound with batch_size=None, accept global sites"
        )
    log_w = terms.per_datum + terms.shared.unsqueeze(-1)
    return (log_w, terms.guide_trace, terms.model_trace) if return_traces else log_w


def _split(args: tuple, kwargs: dict, start: int, stop: int):
    def cut(v):
        return v[start:stop] if torch.is_tensor(v) and v.dim() > 0 else v

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _num_rows(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("no tensor argument to split into minibatches")


def _minibatches(args: tuple, kwargs: dict, batch_size: int | None):
    """``(args, kwargs, rows)`` of consecutive row ranges; ``None`` means one pass."""
    n = _num_rows(args, kwargs)
    size = n if batch_size is None else batch_size
    for start in range(0, n, size):
        stop = min(start + size, n)
        yield (*_split(args, kwargs, start, stop), stop - start)


# Pyro's message when a site's batch shape disagrees with its plate's size, and torch's when
# two tensors of different lengths meet: what a guide with one parameter per data point
# raises on a minibatch.
_PLATE_MISMATCH = re.compile(r"inside plate\('([^']*)'\) at site (\S+) dim (-?\d+), (\d+) vs (\d+)")
_SIZE_MISMATCH = "must match the size of tensor"


def _terms_of_minibatch(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    rows: int,
    num_rows: int,
    num_samples: int,
    max_plate_nesting: int,
) -> _LogWeights:
    """:func:`_log_weight_terms`, and, on a minibatch, the likely cause of a shape error."""
    try:
        terms = _log_weight_terms(model, guide, args, kwargs, num_samples, max_plate_nesting)
    except (ValueError, RuntimeError) as err:
        text = str(err).splitlines()[0] if str(err) else repr(err)
        mismatch = _PLATE_MISMATCH.search(text)
        if rows == num_rows or not (mismatch or _SIZE_MISMATCH in text):
            raise
        if mismatch:
            plate, site, dim, _, size = mismatch.groups()
            found = (
                f"site {site!r} has size {size} at dim {dim} of plate {plate!r}, where this "
                f"minibatch has {rows} rows"
            )
        else:
            found = f"{text} (on a minibatch of {rows} rows)"
        raise ValueError(
            f"{found}: the model or guide has per-datum parameters or a fixed data size (a "
            f"non-amortised guide), so it cannot be evaluated in minibatches of the {num_rows} "
            "data points; pass batch_size=None to evaluate them in one pass (memory then "
            "grows with the number of data points)"
        ) from err
    if terms.data_plate is None and rows > 1:
        observed = [n for n, s in _latent_and_observed_sites(terms.model_trace) if s["is_observed"]]
        raise ValueError(
            f"no observed site ({', '.join(map(repr, observed))}) is inside a plate at dim "
            f"{-max_plate_nesting}, so the {rows} rows cannot be told apart as data points: put "
            "the observations in pyro.plate('data', len(x)), the outermost of the model's "
            f"max_plate_nesting={max_plate_nesting} plates"
        )
    return terms


def importance_weighted_bound(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 100,
    batch_size: int | None = 100,
    chunk_size: int = 100,
    max_plate_nesting: int = 1,
    reduction: str = "mean",
    **kwargs,
) -> float | torch.Tensor:
    r"""The :math:`K`-sample importance-weighted bound :math:`\mathcal{L}_K(x_n)`, per datum.

    Tensor arguments (``x``, or ``x, y`` for a regression model) are split along their
    first dimension into minibatches of ``batch_size`` data points (``None``: all in one
    pass, which a non-amortised guide, one with per-datum parameters, needs), and the ``K``
    samples into chunks of ``chunk_size`` drawn in one vectorised pass each; chunks are
    combined in log space, so memory is bounded by ``batch_size * chunk_size`` samples.

    With global sites (outside the data plate) the weights do not factorise over data
    points, and the bound is that of the whole data set,
    :math:`\mathcal{L}_K(x_{1:N}) \le \log p(x_{1:N})`: it needs ``batch_size=None`` (or
    at least the number of data points), ``reduction="sum"`` returns it and ``"mean"``
    returns it divided by :math:`N`. With many data points its weights degenerate and it
    approaches the ELBO.

    :param int num_samples: :math:`K`; ``1`` gives a single-sample ELBO estimate.
    :param str reduction: ``"mean"`` (a float averaged over data points), ``"sum"`` or
        ``"none"`` (a tensor of shape ``(N,)``; not with global sites).

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
    if num_samples < 1 or chunk_size < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError("num_samples, batch_size and chunk_size must be positive")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    n = _num_rows(args, kwargs)
    per_datum, whole_data_points = [], 0
    for a, kw, rows in _minibatches(args, kwargs, batch_size):
        chunks = []
        for offset in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - offset)
            terms = _terms_of_minibatch(model, guide, a, kw, rows, n, k, max_plate_nesting)
            if terms.global_sites:
                _check_whole_data_bound(terms, rows, n, reduction)
                whole_data_points = terms.per_datum.shape[-1]
                # one weight per draw, for the whole data set
                chunks.append((terms.shared + terms.per_datum.sum(-1)).logsumexp(0, True))
            else:
                chunks.append(terms.per_datum.logsumexp(0))
        per_datum.append(torch.stack(chunks).logsumexp(0) - math.log(num_samples))
    bound = torch.cat(per_datum)
    if whole_data_points:  # bound == [L_K(x_1:N)]
        total = bound.item()
        return total if reduction == "sum" else total / whole_data_points
    if reduction == "none":
        return bound
    return bound.sum().item() if reduction == "sum" else bound.mean().item()


def _check_whole_data_bound(terms: _LogWeights, rows: int, num_rows: int, reduction: str) -> None:
    if rows < num_rows:
        raise ValueError(
            f"{_global_sites_message(terms)}: the importance weights do not factorise over "
            f"data points, so the bound needs all {num_rows} of them in one pass, where "
            f"this minibatch has {rows}; pass batch_size=None"
        )
    if reduction == "none":
        raise ValueError(
            f"{_global_sites_message(terms)}: there is no per-datum bound, only that of the "
            "whole data set; use reduction='sum' (or 'mean', divided by the number of data "
            "points)"
        )


def elbo_estimate(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    batch_size: int | None = 1000,
    max_plate_nesting: int = 1,
    **kwargs,
) -> float:
    r"""Monte Carlo ELBO per data point, :math:`\frac{1}{NS}\sum_{n,s} \log w_{sn}`.

    Unlike :math:`\mathcal{L}_K` this averages the log-weights, so it estimates
    :math:`\mathcal{L}_1` for any ``num_samples``; it is the figure training curves report.

    Global sites (outside the data plate) are supported: their term
    :math:`\log p(\theta) - \log q(\theta)` enters the data set's ELBO once, so it is averaged
    over the minibatches (each draws :math:`\theta` afresh) while the per-datum terms are
    summed, and the result is the data set's ELBO divided by :math:`N`, as
    ``-Trace_ELBO().loss(model, guide, x) / N``. A guide whose global sites depend on the
    data it is given needs ``batch_size=None``; so does a non-amortised guide.

    :param int num_samples: guide draws per data point.
    :param batch_size: data points per vectorised pass; ``None``: all in one pass.
    """
    n = _num_rows(args, kwargs)
    per_datum_total, shared_total, num_batches = 0.0, 0.0, 0
    for a, kw, rows in _minibatches(args, kwargs, batch_size):
        terms = _terms_of_minibatch(model, guide, a, kw, rows, n, num_samples, max_plate_nesting)
        per_datum_total += terms.per_datum.sum().item()
        shared_total += terms.shared.sum().item()
        num_batches += 1
    return (per_datum_total + shared_total / num_batches) / (n * num_samples)
