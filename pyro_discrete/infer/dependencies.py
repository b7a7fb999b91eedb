"""Which cost terms depend on which discrete sites: provenance tracking, once per structure.

Replays the guide at the base pass's values with the discrete values tagged, then the model,
and reads the provenance of every log-density (Wingate et al. 2011, as Pyro's
``TraceGraph_ELBO`` does). Two maps:

- *dependencies*: a sampled value inherits the provenance of its distribution's parameters,
  so a layer sampled given an upstream discrete value depends on it (the learning signal of
  a site holds every cost downstream of it);
- *direct dependencies*: discrete values do not inherit, so a cost depends directly on a site
  only when the site's value enters it through tensor operations; relaxation estimators
  check that those costs are differentiable in the relaxed value.
"""

from __future__ import annotations

import contextlib

import pyro.poutine as poutine
import torch
from pyro.ops.provenance import extract_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace

from pyro_discrete.infer.sites import log_prob

MODEL = "model"
GUIDE = "guide"

CostKey = tuple[str, str]


def is_subsample(site) -> bool:
    return isinstance(site["fn"], _Subsample)


def replay_guide_then_model(model, guide, args, kwargs, guide_trace: Trace | None = None):
    """The guide's trace (replayed against ``guide_trace`` when given) and the model's trace
    replayed against it: the pair every ELBO term is read from."""
    if guide_trace is not None:
        guide = poutine.replay(guide, trace=guide_trace)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


@contextlib.contextmanager
def preserved_rng():
    """Run a block without consuming the global random streams (CPU and current CUDA):
    bookkeeping passes must not shift what the training step draws, or a run resumed in a
    fresh process (which redoes them) would diverge from an uninterrupted one."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


class _TrackDiscrete(Messenger):
    """Tags sample values with the discrete sites they descend from."""

    def __init__(self, names: frozenset, inherit: bool):
        super().__init__()
        self.names = names
        self.inherit = inherit

    def _pyro_post_sample(self, msg):
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        value, provenance = extract_provenance(msg["value"])
        discrete = msg["name"] in self.names
        if self.inherit or not discrete:
            provenance = provenance | get_provenance(log_prob(msg["fn"], value, relaxed=True))
        else:
            provenance = frozenset()
        if discrete:
            provenance = provenance | {msg["name"]}
        msg["value"] = track_provenance(value, frozenset(provenance))


def structure_key(model_trace: Trace, guide_trace: Trace) -> tuple:
    """What must not change for a cached dependency map to stay valid: site names, whether
    observed, shapes and plates (not subsample indices, which change every step)."""
    key = []
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                key.append(
                    (
                        name,
                        site["is_observed"],
                        tuple(site["value"].shape),
                        tuple(f.name for f in site["cond_indep_stack"]),
                    )
                )
        key.append("|")
    return tuple(key)


def dependency_map(
    model, guide, args, kwargs, guide_trace: Trace, names: frozenset, inherit: bool = True
) -> dict[CostKey, frozenset]:
    """For each cost term ``(role, site name)``, the discrete sites whose values it depends
    on (``inherit=False``: directly, see the module docstring)."""
    with preserved_rng(), poutine.block(), _TrackDiscrete(names, inherit):
        tracked_model, tracked_guide = replay_guide_then_model(
            model, guide, args, kwargs, guide_trace
        )
    deps = {}
    for role, trace in ((MODEL, tracked_model), (GUIDE, tracked_guide)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or is_subsample(site):
                continue
            lp = log_prob(site["fn"], site["value"], relaxed=not site["is_observed"])
            deps[(role, name)] = get_provenance(lp) & names
    return deps
