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
import os
import sys
import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import extract_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch.overrides import TorchFunctionMode

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


_HOST_READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__"})


class _HostReads(TorchFunctionMode):
    """Records the discrete sites whose values the program reads on the host (``z.item()``,
    ``if z:``, ``int(z)``): Python control flow on them is invisible to provenance."""

    def __init__(self, names: frozenset):
        super().__init__()
        self.names = names
        self.read: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _HOST_READS and args and _called_by_user():
            self.read |= get_provenance(args[0]) & self.names
        return func(*args, **(kwargs or {}))


_DISPATCH = (os.path.join("torch", "overrides.py"), os.path.join("torch", "_tensor.py"))
_LIBRARIES = tuple(os.path.dirname(module.__file__) + os.sep for module in (torch, pyro))


def _called_by_user() -> bool:
    """Whether the code reading a value on the host is the user's (not torch's or Pyro's
    own argument validation, which checks values with ``bool()``)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.endswith(_DISPATCH):
        frame = frame.f_back
    return frame is None or not frame.f_code.co_filename.startswith(_LIBRARIES)


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
    on (``inherit=False``: directly, see the module docstring).

    A discrete value read on the host by the model or guide (Python control flow such as
    ``if z.item() == 1``) is a dependence provenance cannot follow: it is warned about,
    naming the site.
    """
    host = _HostReads(names)
    with preserved_rng(), poutine.block(), _TrackDiscrete(names, inherit), host:
        tracked_model, tracked_guide = replay_guide_then_model(
            model, guide, args, kwargs, guide_trace
        )
    for name in sorted(host.read):
        warnings.warn(
            f"DiscreteELBO: the model or guide reads the value of discrete site '{name}' on "
            "the host (.item(), bool(), int(), float()): Python control flow on a sampled "
            "value is invisible to the estimator, whose learning signal then misses what "
            "depends on it. Write the dependence as tensor arithmetic (torch.where, one-hot "
            "products), or ignore this if the value is only logged",
            RuntimeWarning,
            stacklevel=5,
        )
    deps = {}
    for role, trace in ((MODEL, tracked_model), (GUIDE, tracked_guide)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or is_subsample(site):
                continue
            lp = log_prob(site["fn"], site["value"], relaxed=not site["is_observed"])
            deps[(role, name)] = get_provenance(lp) & names
    return deps
