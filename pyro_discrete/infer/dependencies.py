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

**Black-box costs.** Provenance follows tensor operations only. A value that leaves torch
(``.numpy()``, ``np.asarray``, ``.tolist()``, ``.item()``, ``bool()``, ``int()``, ``float()``
and the Python control flow they feed, a simulator, an in-place write into a tensor that
does not carry the value's provenance) can come back in any later cost with no provenance at
all. Such reads are recorded while the program runs, and every cost computed after one (and
every value sampled after it) is scored against the sites that were read, by the rule that
holds in any sequential program: a cost can depend only on what was computed before it (the
reward-to-go of policy gradients), in the plate slices it shares with the site. Costs traced
through torch keep the precise map. Values reached from a site through ``torch.no_grad()``
or ``.detach()`` keep their provenance, but are marked as having no gradient path to it;
both kinds make a cost a *black box* to relaxation estimators.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import extract_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch.overrides import TorchFunctionMode

import pyro_discrete.distributions
import pyro_discrete.estimators
from pyro_discrete.infer.sites import log_prob

MODEL = "model"
GUIDE = "guide"

CostKey = tuple[str, str]


class BlackBoxCostWarning(UserWarning):
    """A cost term computed after the program read a sampled value outside torch: it is
    scored against the sites read before it (unbiased, less Rao-Blackwellised)."""


def is_subsample(site) -> bool:
    return isinstance(site["fn"], _Subsample)


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


@dataclass(frozen=True)
class Untraced:
    """A provenance mark: the value of discrete site ``site`` reached this value through a
    path that provenance tracking or autograd cannot follow. ``host``: it left torch
    (a host read or an in-place write), so the mark is also given to everything computed
    after the read; otherwise it went through ``torch.no_grad()`` or ``.detach()``, which
    provenance follows but gradients do not."""

    site: str
    host: bool


#: functions that hand a tensor's value to Python or numpy, beyond provenance's reach
_HOST_READS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "__array__",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__reduce_ex__",
        "__dlpack__",
    }
)
#: in-place operations whose result is bound to the target again (``x += y``): provenance
#: follows them; other in-place writes (``buf[i] = z``, ``x.add_(z)``, ``out=``) leave the
#: target's provenance unchanged
_REBOUND = frozenset(
    f"__i{op}__"
    for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor")
    + ("lshift", "rshift", "matmul")
)
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "retain_grad"})


def _is_write(name: str, args: tuple, kwargs: dict) -> bool:
    if kwargs.get("out") is not None:
        return True
    if not args or not torch.is_tensor(args[0]):
        return False
    if name == "__setitem__":
        return True
    return name.endswith("_") and not name.startswith("_") and name not in _NOT_WRITES


class _UntracedPaths(TorchFunctionMode):
    """Records where sampled values escape provenance or autograd while the program runs.

    A host read of a value (``.numpy()``, ``.item()``, ``if z:``, ...) or an in-place write
    of it into a tensor that does not carry its provenance adds ``Untraced(site, host=True)``
    marks to ``leaked``: the program may use the value from then on without provenance. An
    operation on it under ``torch.no_grad()`` or a ``.detach()`` by the user marks its result
    with ``Untraced(site, host=False)``.
    """

    def __init__(self, names: frozenset):
        super().__init__()
        self.names = names
        #: marks of the sites read outside torch so far in the current program
        self.leaked: frozenset = frozenset()

    def start_program(self) -> None:
        """The model sees the guide only through the values it replays (which carry their
        marks): reads made by the guide do not reach the model's costs."""
        self.leaked = frozenset()

    def sites_in(self, provenance: frozenset) -> frozenset:
        return frozenset(
            p.site if isinstance(p, Untraced) else p
            for p in provenance
            if isinstance(p, Untraced) or p in self.names
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # an attribute: ``z.data`` is an untracked detach
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        if name in _HOST_READS:
            self._leak(get_provenance(args))
        elif name not in _REBOUND and _is_write(name, args, kwargs):
            into_out = kwargs.get("out") is not None
            target = kwargs["out"] if into_out else args[0]
            sources = [args if into_out else args[1:], kwargs]
            written = self.sites_in(get_provenance(sources))
            self._leak(frozenset(written - self.sites_in(get_provenance(target))))
        result = func(*args, **kwargs)
        if name in ("detach", "data"):
            by_user = None  # asked only when the value carries a site's provenance
        elif not torch.is_grad_enabled():
            by_user = True  # whoever runs it: no gradient flows through it
        else:
            return result
        sites = self.sites_in(get_provenance([args, kwargs]))
        if sites and (by_user or _called_by_user()):
            result = track_provenance(result, frozenset(Untraced(s, False) for s in sites))
        return result

    def _leak(self, provenance: frozenset) -> None:
        sites = self.sites_in(provenance)
        if sites and _called_by_user():
            self.leaked = self.leaked | {Untraced(s, True) for s in sites}


_DISPATCH = (os.path.join("torch", "overrides.py"), os.path.join("torch", "_tensor.py"))
_LIBRARIES = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (torch, pyro, pyro_discrete.distributions, pyro_discrete.estimators)
) + (os.path.dirname(__file__) + os.sep,)


def _called_by_user() -> bool:
    """Whether the code that made the call being intercepted is the user's (not torch's,
    Pyro's or this library's own, e.g. argument validation that checks values with
    ``bool()``)."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.endswith(_DISPATCH)
    ):
        frame = frame.f_back
    return frame is None or not frame.f_code.co_filename.startswith(_LIBRARIES)


class _TrackDiscrete(Messenger):
    """Tags sample values with the discrete sites they descend from, and records the marks
    of the values read outside torch before each sample statement (``leaks_at``)."""

    def __init__(self, names: frozenset, inherit: bool, paths: _UntracedPaths):
        super().__init__()
        self.names = names
        self.inherit = inherit
        self.paths = paths
        self.role = GUIDE
        self.leaks_at: dict[CostKey, frozenset] = {}

    def _pyro_post_sample(self, msg):
        if isinstance(msg["fn"], _Subsample):
            return
        leaked = self.paths.leaked
        self.leaks_at[(self.role, msg["name"])] = leaked
        if msg["is_observed"]:
            return
        value, provenance = extract_provenance(msg["value"])
        discrete = msg["name"] in self.names
        if self.inherit or not discrete:
            # the bookkeeping's own log-density is no user computation: keep the user's
            # no_grad blocks from marking it
            with torch.enable_grad():
                lp = log_prob(msg["fn"], value, relaxed=True)
            # a value drawn after a read outside torch may have been drawn given it
            provenance = provenance | get_provenance(lp) | leaked
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


@dataclass(frozen=True)
class Dependencies:
    """The dependency map of one trace structure.

    ``deps``: for each cost term ``(role, site name)``, every discrete site it depends on;
    ``untraced``: of those, the sites whose value reaches it through a path with no gradient
    (outside torch, ``torch.no_grad()``, ``.detach()``): the cost is a black box to them;
    ``sequential``: of those, the sites it is attributed to by the sequential rule (read
    outside torch before the cost was computed).
    """

    deps: dict[CostKey, frozenset]
    untraced: dict[CostKey, frozenset]
    sequential: dict[CostKey, frozenset]


def trace_dependencies(
    model, guide, args, kwargs, guide_trace: Trace, names: frozenset, inherit: bool = True
) -> Dependencies:
    """The :class:`Dependencies` of the model and guide at ``guide_trace``'s values
    (``inherit=False``: direct dependencies, see the module docstring)."""
    paths = _UntracedPaths(names)
    track = _TrackDiscrete(names, inherit, paths)
    # enable_grad: the pass may be first asked for under ELBO.loss's no_grad, and only the
    # user's own no_grad blocks must mark values as gradient-free
    with preserved_rng(), torch.enable_grad(), poutine.block(), track, paths:
        tracked_guide = poutine.trace(poutine.replay(guide, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        paths.start_program()
        track.role = MODEL
        tracked_model = poutine.trace(poutine.replay(model, trace=tracked_guide)).get_trace(
            *args, **kwargs
        )
    deps, untraced, sequential = {}, {}, {}
    with torch.enable_grad():
        for role, trace in ((MODEL, tracked_model), (GUIDE, tracked_guide)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or is_subsample(site):
                    continue
                lp = log_prob(site["fn"], site["value"], relaxed=not site["is_observed"])
                provenance = get_provenance(lp) | track.leaks_at.get((role, name), frozenset())
                marks = [p for p in provenance if isinstance(p, Untraced)]
                key = (role, name)
                deps[key] = paths.sites_in(provenance)
                untraced[key] = frozenset(m.site for m in marks)
                sequential[key] = frozenset(m.site for m in marks if m.host)
    return Dependencies(deps, untraced, sequential)


def dependency_map(
    model, guide, args, kwargs, guide_trace: Trace, names: frozenset, inherit: bool = True
) -> dict[CostKey, frozenset]:
    """For each cost term ``(role, site name)``, the discrete sites whose values it depends
    on (``inherit=False``: directly, see the module docstring), including those attributed
    by the sequential rule to costs computed after a read outside torch."""
    return trace_dependencies(model, guide, args, kwargs, guide_trace, names, inherit).deps


def _named(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, ... ({len(names)} in all)"


def warn_black_box_costs(found: Dependencies, warned: set) -> None:
    """Say once, in one warning per step that finds new ones, which cost sites get their
    learning signal from the sequential rule (``warned`` holds those already named), so that
    a policy with a reward site per time step is told once, not once per step of it."""
    new = [(key, sites) for key, sites in found.sequential.items()
           if sites and key not in warned]
    if not new:
        return
    warned.update(key for key, _ in new)
    costs = _named([f"{role} site '{name}'" for (role, name), _ in new])
    read_sites = dict.fromkeys(site for _, sites in new for site in sorted(sites))
    read = _named([f"'{site}'" for site in read_sites])
    plural = len(read_sites) > 1
    warnings.warn(
        f"DiscreteELBO: black-box cost{'s' if len(new) > 1 else ''} at {costs}: computed "
        f"after the program read the value of discrete site{'s' if plural else ''} {read} on "
        "the host or outside torch (.numpy(), np.asarray, .tolist(), .item(), bool(), int(), "
        "float(), Python control flow, a simulator, an in-place write into another tensor), "
        "where provenance tracking cannot follow it. Each is scored against every site so "
        "read before it, in the plate slices they share (the sequential rule, as the "
        "reward-to-go of policy gradients): unbiased, but less Rao-Blackwellised than "
        "a cost written with torch operations on the sampled values. Relaxation "
        "estimators (gumbel, st, gumbel_rao, reinmax, rebar, relax) refuse such a cost",
        BlackBoxCostWarning,
        stacklevel=4,
    )
