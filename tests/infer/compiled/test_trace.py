"""The recording context: torch and Pyro internals it relies on, and hidden constants."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.indep_messenger import IndepMessenger
from torch.fx.experimental import proxy_tensor

from pyro_discrete.infer.compiled import CompileError, trace
from pyro_discrete.infer.compiled.trace import hidden_constants, lean_tracer, traceable


def test_extract_val_is_still_the_internal_that_lean_tracer_replaces():
    """``lean_tracer`` patches ``proxy_tensor.extract_val(val, include_real=False)``; this
    fails if torch renames it, changes its signature or stops calling it from make_fx."""
    signature = inspect.signature(proxy_tensor.extract_val)
    assert list(signature.parameters)[:2] == ["val", "include_real"]
    calls = []
    original = proxy_tensor.extract_val

    def counting(val, include_real=False):
        calls.append(type(val))
        return original(val, include_real)

    proxy_tensor.extract_val = counting
    try:
        proxy_tensor.make_fx(lambda a: (a * 2).sum(), tracing_mode="real")(torch.ones(3))
    finally:
        proxy_tensor.extract_val = original
    assert calls  # make_fx still asks it for each node's value

    with lean_tracer():
        assert proxy_tensor.extract_val is not original
        gm = proxy_tensor.make_fx(lambda a: (a * 2).sum(), tracing_mode="real")(torch.ones(3))
    assert proxy_tensor.extract_val is original
    values = [n.meta.get("val") for n in gm.graph.nodes if n.op == "call_function"]
    assert values and all(v is None for v in values)  # no fake copies stored
    assert gm(torch.ones(3)) == 6.0


def _sequential_model():
    p = pyro.param("p", torch.tensor(0.3))
    outer, inner = pyro.plate("outer", 3), pyro.plate("inner", 2)
    for i in outer:
        for j in inner:
            pyro.sample(f"x_{i}_{j}", dist.Bernoulli(p))


def _sites(with_patch: bool) -> list:
    pyro.clear_param_store()
    with traceable() if with_patch else torch.enable_grad():
        tr = poutine.trace(_sequential_model).get_trace()
    return [
        (name, [(f.name, f.dim, f.size, f.counter, f.vectorized) for f in site["cond_indep_stack"]])
        for name, site in tr.nodes.items()
        if site["type"] == "sample"
    ]


def test_sequential_plate_iteration_reproduces_pyros():
    """While recording, ``IndepMessenger.__iter__`` is replaced by one that yields Python
    ints for a full-size plate: the same sites and plate frames as Pyro's own."""
    assert _sites(with_patch=True) == _sites(with_patch=False)
    assert IndepMessenger.__iter__ is trace._PYRO_ITER  # restored


def test_subsampled_sequential_plate_is_refused_while_recording():
    with traceable(), pytest.raises(CompileError, match="sequential plate 'p'.*subsample_size 2"):
        for _ in pyro.plate("p", 4, subsample_size=2):
            pass


def test_hidden_constants_are_found_and_literals_are_not():
    hidden = torch.randn(3)

    def step(a):
        literal = torch.tensor([1.0, 2.0, 3.0])
        return (a * hidden + literal).sum()

    gm = proxy_tensor.make_fx(step, tracing_mode="real")(torch.ones(3))
    found = hidden_constants(gm, allowed=set())
    assert len(found) == 1 and found[0] is hidden
    assert hidden_constants(gm, allowed={id(hidden)}) == []


def test_the_package_has_no_import_cycle():
    package = Path(trace.__file__).parent
    graph = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "pyro_discrete.infer.compiled."
            ):
                imported.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = imported
    graph.pop("__init__")

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        for other in graph.get(name, ()):
            visit(other, [*path, name])

    for name in graph:
        visit(name, [])
    assert graph["cuda_graph"] and "svi" not in graph["cuda_graph"]
