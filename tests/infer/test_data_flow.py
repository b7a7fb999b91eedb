"""Where the user's ``model`` goes during one ``DiscreteELBO.loss_and_grads``.

The driver (``infer/elbo.py``) asks :meth:`Evaluation.build` once for the step's evaluation;
the build makes one pass down (base pass, cost terms, provenance). A profiler records, in
call order, the ``pyro_discrete`` modules whose frames hold the model callable (or a wrapper
of it: the particle plate, a ``poutine`` handler, a closure) in their local variables.
Consecutive repeats are collapsed: the length of what is left is the number of *places* the
model visits; an entry into a module that had already been left is a *return*. Data flowing
one way (elbo -> evaluation -> dependencies) has no return.

Only local variables count: a method reading ``self.model`` holds the model in an attribute,
not in its frame (the adapters hold an :class:`Evaluation`, never the model).
"""

from __future__ import annotations

import functools
import sys

import pyro
import pytest
from infer.problems import sbn_two_layer

from pyro_discrete.infer import DiscreteELBO

PACKAGE = "pyro_discrete"


def _holds(value, target, depth: int = 4) -> bool:
    """Whether ``value`` is ``target`` or a callable wrapping it (a ``functools.partial``
    such as Pyro's handler wrappers, a closure, ``__wrapped__``, a handler's ``fn``)."""
    if value is target:
        return True
    if depth == 0 or not callable(value):
        return False
    inner = []
    if isinstance(value, functools.partial):
        inner += [value.func, *value.args, *value.keywords.values()]
    for cell in getattr(value, "__closure__", None) or ():
        try:
            inner.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        inner += [attributes[k] for k in ("fn", "__wrapped__") if k in attributes]
    return any(_holds(v, target, depth - 1) for v in inner)


class ModelFlow:
    """Records the package modules whose frames hold ``model`` in their locals, in the order
    in which each such frame is first seen holding it (at its call, at a call it makes, or
    at its return, so that a local assigned mid-frame counts too)."""

    def __init__(self, model):
        self.model = model
        self.modules: list[str] = []
        #: modules other than the driver reached while no ``Evaluation.build`` runs,
        #: once one has run: the extra passes an estimator asks of the evaluation
        #: (stacked relaxed passes, direct provenance)
        self.after_build: list[str] = []
        self._built = False
        self._building = 0
        self._seen: dict[int, object] = {}  # frames kept alive so that ids stay unique

    def _profile(self, frame, event, arg):
        if event not in ("call", "c_call", "return"):
            return
        module = frame.f_globals.get("__name__", "")
        if frame.f_code.co_name == "build" and module == f"{PACKAGE}.infer.evaluation":
            if event == "call":
                self._building += 1
            elif event == "return":
                self._building -= 1
                self._built = True
        if not module.startswith(PACKAGE) or id(frame) in self._seen:
            return
        if any(_holds(v, self.model) for v in frame.f_locals.values()):
            self._seen[id(frame)] = frame
            extra = self._built and not self._building and module != f"{PACKAGE}.infer.elbo"
            (self.after_build if extra else self.modules).append(module)

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        return False

    @property
    def places(self) -> list[str]:
        """The modules visited, consecutive repeats collapsed."""
        out: list[str] = []
        for module in self.modules:
            if not out or out[-1] != module:
                out.append(module)
        return out

    @property
    def returns(self) -> list[str]:
        """Entries into a module that had already been left."""
        left, out = set(), []
        for before, module in zip(self.places, self.places[1:], strict=False):
            left.add(before)
            if module in left:
                out.append(module)
        return out


def _short(modules: list[str]) -> str:
    return " -> ".join(m.rsplit(".", 1)[-1] for m in modules)


CASES = {
    # a score-function estimator, one particle
    "reinforce": dict(estimator="reinforce"),
    # relaxation + control variate: asks for the direct dependencies (a second provenance pass)
    "rebar": dict(estimator="rebar"),
    # a multi-sample estimator, particles vectorised in a plate (the model is wrapped)
    "rloo": dict(estimator="rloo", num_particles=3),
    # a pathwise estimator whose reported loss runs the model again at hard values
    "gumbel": dict(estimator="gumbel"),
}


def _flow(options: dict) -> ModelFlow:
    problem = sbn_two_layer()
    problem.reset()
    pyro.set_rng_seed(0)
    elbo = DiscreteELBO(max_plate_nesting=1, **options)
    with ModelFlow(problem.model) as flow:
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
    return flow


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_flows_one_way(name):
    flow = _flow(CASES[name])
    print(f"{name}: {len(flow.places)} places, {len(flow.returns)} returns: {_short(flow.places)}")
    # the recorder sees the model reach the driver, the evaluation and the provenance pass
    # (a recorder that saw nothing would pass the assertion below vacuously)
    assert flow.places[0] == f"{PACKAGE}.infer.elbo"
    assert f"{PACKAGE}.infer.evaluation" in flow.places
    assert f"{PACKAGE}.infer.dependencies" in flow.places
    assert not flow.returns, (
        f"model returns to {_short(flow.returns)} in {_short(flow.places)}: the driver should "
        "ask Evaluation.build once and the build go down without coming back"
    )
    # after the build, the model is run again only by the evaluation's own extra passes
    # (an estimator asks ``ev.run``, the stacked relaxed passes, ``ev.direct_deps``): never
    # by the driver or an adapter
    evaluation, dependencies = f"{PACKAGE}.infer.evaluation", f"{PACKAGE}.infer.dependencies"
    assert set(flow.after_build) <= {evaluation, dependencies}, _short(flow.after_build)


@pytest.mark.parametrize("name", ["rloo", "reinforce"])
def test_particles_drawn_one_after_another_flow_one_way_each(name):
    """With ``vectorize_particles=False`` the driver asks for one evaluation per particle (as
    Pyro's ``_get_traces`` yields one trace pair per particle): the model comes back to the
    driver between particles, and each ask is itself one pass down."""
    flow = _flow(dict(estimator=name, num_particles=3, vectorize_particles=False))
    print(f"{name} looped: {len(flow.places)} places: {_short(flow.places)}")
    driver = f"{PACKAGE}.infer.elbo"
    asks: list[list[str]] = []
    for module in flow.places:
        if module == driver:
            asks.append([])
        asks[-1].append(module)
    assert len(asks) == 3
    assert f"{PACKAGE}.infer.dependencies" in asks[0]  # the structure is found once
    for ask in asks:
        assert ask[:2] == [driver, f"{PACKAGE}.infer.evaluation"]
        assert len(set(ask)) == len(ask), f"a return within one ask: {_short(ask)}"


def test_the_recorder_counts_places_and_returns():
    """The counting itself, on the flow the driver had before ``Evaluation.build`` (it
    built the evaluation in two visits: base pass, provenance, then the constructor)."""
    flow = ModelFlow(model=None)
    flow.modules = [
        f"{PACKAGE}.infer.elbo",
        f"{PACKAGE}.infer.elbo",
        f"{PACKAGE}.infer.evaluation",
        f"{PACKAGE}.infer.dependencies",
        f"{PACKAGE}.infer.evaluation",
        f"{PACKAGE}.infer.dependencies",
    ]
    assert _short(flow.places) == "elbo -> evaluation -> dependencies -> evaluation -> dependencies"
    assert flow.returns == [f"{PACKAGE}.infer.evaluation", f"{PACKAGE}.infer.dependencies"]


def test_the_recorder_sees_wrappers_and_only_the_package():
    """The model is recognised behind the particle plate and Pyro's handlers, and frames
    outside the package are not recorded."""
    import pyro.poutine as poutine

    model = sbn_two_layer().model
    wrapped = pyro.plate("particles", 2, dim=-2)(poutine.trace(poutine.block(model)))
    assert _holds(wrapped, model)
    assert not _holds(wrapped, sbn_two_layer().model)  # another model of the same code

    def outside(fn):
        return fn

    with ModelFlow(model) as flow:
        outside(model)
    assert flow.modules == []
