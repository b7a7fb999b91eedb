"""Exact answers by brute-force enumeration, for checking estimators on small models.

:func:`exact_elbo` sums over every joint value of the guide's discrete sites, so its
gradient (by autograd) is the exact ELBO gradient that an unbiased estimator must match in
expectation. It is exponential in the number of discrete elements: use it on models with
at most a few hundred joint configurations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_discrete.infer.sites import BERNOULLI, CATEGORICAL, ONE_HOT, describe


def _discrete_site_shapes(guide: Callable, args, kwargs) -> dict[str, tuple[str, torch.Size, int]]:
    with poutine.block():
        trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
    shapes = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if getattr(site["fn"], "has_rsample", False):
            raise ValueError(f"exact_elbo enumerates discrete guides only; site '{name}' is not")
        leaf = describe(site["fn"])
        if leaf.kind == BERNOULLI:
            shapes[name] = (BERNOULLI, site["value"].shape, 2)
        elif leaf.kind == ONE_HOT:
            shapes[name] = (ONE_HOT, site["value"].shape, site["value"].shape[-1])
        elif leaf.kind == CATEGORICAL:
            k = leaf.logits.shape[-1]
            shapes[name] = (CATEGORICAL, site["value"].shape, k)
        else:
            raise ValueError(f"exact_elbo cannot enumerate site '{name}' ({leaf.name})")
    return shapes


def _configurations(shapes):
    names = list(shapes)
    per_site = []
    for name in names:
        kind, shape, k = shapes[name]
        cells = shape[:-1] if kind == ONE_HOT else shape
        n = math.prod(cells)
        per_site.append((name, kind, shape, cells, k, n))
    total = math.prod(k**n for _, _, _, _, k, n in per_site)
    if total > 100_000:
        raise ValueError(f"exact_elbo: {total} joint configurations are too many to enumerate")
    ranges = [itertools.product(range(k), repeat=n) for _, _, _, _, k, n in per_site]
    for combo in itertools.product(*[list(r) for r in ranges]):
        values = {}
        for (name, kind, _shape, cells, k, _), idx in zip(per_site, combo, strict=True):
            idx_t = torch.tensor(idx, dtype=torch.long).reshape(cells)
            if kind == ONE_HOT:
                values[name] = torch.nn.functional.one_hot(idx_t, k).to(torch.get_default_dtype())
            elif kind == BERNOULLI:
                values[name] = idx_t.to(torch.get_default_dtype())
            else:
                values[name] = idx_t
        yield values


def _conditioned_trace(guide, values, args, kwargs):
    trace = poutine.trace(poutine.condition(guide, data=values)).get_trace(*args, **kwargs)
    for name in values:
        trace.nodes[name]["is_observed"] = False  # so that the model replays them
    return trace


def exact_elbo(model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
    r"""The ELBO :math:`\sum_b q(b)\,[\log p(x, b) - \log q(b)]`, differentiable in every
    parameter, by enumerating the guide's discrete sites (Bernoulli, categorical, one-hot).

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model():
    ...     z = pyro.sample("z", dist.Bernoulli(0.5))
    ...     pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
    >>> def guide():
    ...     pyro.sample("z", dist.Bernoulli(logits=pyro.param("l", torch.tensor(0.0))))
    >>> elbo = exact_elbo(model, guide)
    >>> elbo.requires_grad
    True
    """
    shapes = _discrete_site_shapes(guide, args, kwargs)
    total = 0.0
    for values in _configurations(shapes):
        with poutine.block():
            guide_trace = _conditioned_trace(guide, values, args, kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        log_q = guide_trace.log_prob_sum()
        log_p = model_trace.log_prob_sum()
        total = total + log_q.exp() * (log_p - log_q)
    return total


def exact_iwae_bound(model: Callable, guide: Callable, num_samples: int, *args, **kwargs) -> Tensor:
    r"""The :math:`K`-sample bound :math:`\mathbb E[\log \frac1K \sum_k p(x, b_k)/q(b_k)]`
    over the joint guide, enumerated over all :math:`K`-tuples (tiny models only)."""
    shapes = _discrete_site_shapes(guide, args, kwargs)
    log_q_all, log_w_all = [], []
    for values in _configurations(shapes):
        with poutine.block():
            guide_trace = _conditioned_trace(guide, values, args, kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        log_q = guide_trace.log_prob_sum()
        log_q_all.append(log_q)
        log_w_all.append(model_trace.log_prob_sum() - log_q)
    log_q = torch.stack(log_q_all)
    log_w = torch.stack(log_w_all)
    n = len(log_q_all)
    grids = torch.meshgrid(*([torch.arange(n)] * num_samples), indexing="ij")
    idx = torch.stack([g.reshape(-1) for g in grids], -1)  # (n^K, K)
    tuple_log_q = log_q[idx].sum(-1)
    tuple_bound = torch.logsumexp(log_w[idx], -1) - math.log(num_samples)
    return (tuple_log_q.exp() * tuple_bound).sum()


def exact_gradients(
    objective: Tensor, params: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Gradients of an exact objective with respect to the param store's parameters."""
    if params is None:
        params = {name: pyro.param(name).unconstrained() for name in pyro.get_param_store().keys()}
    grads = torch.autograd.grad(
        objective, list(params.values()), allow_unused=True, retain_graph=True
    )
    return {
        name: torch.zeros_like(p) if g is None else g
        for (name, p), g in zip(params.items(), grads, strict=True)
    }
