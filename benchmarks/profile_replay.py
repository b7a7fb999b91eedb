"""Where the time of a replayed ``CompiledSVI`` step goes (backend ``"trace"``, CPU).

``python -m benchmarks.profile_replay --estimators reinforce,nvil,rebar --batch-sizes 24,256``

For each configuration (the linear SBN 784-200 of :mod:`benchmarks.run`, the project's
``MultiTensorAdam``), it builds the program, then reports

- the op count of the replayed aten graph, by part of the step;
- the time of each part, from running the graph node by node (``torch.fx.Interpreter``,
  every node timed; the median over steps of each part's sum);
- the whole step (``svi.step``) and the graph alone (``program.run``), so that the host
  bookkeeping of ``CompiledSVI.step`` (input key, replay guard, finiteness read) shows.

Parts: the finiteness gate's copies (``clone`` before, ``where`` after), the finiteness
flag, the optimizer update (fused Adam or its elementwise rule, step counters), and the
rest (model, guide, estimator, backward). Timings of single nodes include the
interpreter's own overhead (a few µs per node), which is why the parts add up to more than
the graph's own run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

import pyro
import torch

from benchmarks.pyro_models import PyroPair, discrete_loss, discrete_optim, nvil_baselines
from benchmarks.run import ModelSpec, make_batch

GATE = {"aten.clone.default", "aten.where.self_out", "aten.where.self"}
FINITE = {
    "aten.aminmax.default",
    "aten.stack.default",
    "aten.all.default",
    "aten.isfinite.default",
    "aten._foreach_norm.Scalar",
    "aten.amax.default",
}
OPTIMIZER = {
    "aten._fused_adam_.tensor_lr",
    "aten._fused_adamw_.tensor_lr",
    "aten._fused_adam_.default",
    "aten._foreach_add_.List",
    "aten.lerp_.Scalar",
    "aten.addcmul_.default",
    "aten.addcdiv_.default",
    "aten.pow.Scalar",
    "aten.rsub.Scalar",
    "aten.reciprocal.default",
    "aten.sqrt.default",
    "aten.select.int",
    "aten.add_.Tensor",
    "aten.mul_.Tensor",
}
PARTS = ("gate copies", "finiteness flag", "optimizer update", "model, estimator, backward")


def part_of(node: torch.fx.Node) -> str:
    """The part of the step a graph node belongs to (by its aten target)."""
    target = str(node.target)
    if target in GATE:
        return "gate copies"
    if target in FINITE or node.kwargs.get("dtype") == torch.float64 and "sum" in target:
        return "finiteness flag"
    if target in OPTIMIZER:
        return "optimizer update"
    # isfinite as make_fx decomposes it (abs, ne inf, eq self, mul) on the flag's inputs
    if target in ("aten.abs.default", "aten.ne.Scalar", "aten.eq.Tensor") and any(
        part_of(a) == "finiteness flag" for a in node.all_input_nodes
    ):
        return "finiteness flag"
    if target == "aten.mul.Tensor" and all(
        part_of(a) == "finiteness flag" for a in node.all_input_nodes
    ):
        return "finiteness flag"
    return "model, estimator, backward"


class TimedInterpreter(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.parts = {n: part_of(n) for n in module.graph.nodes}
        self.times: dict[str, float] = defaultdict(float)

    def run_node(self, n: torch.fx.Node):
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.times[self.parts[n]] += time.perf_counter() - t0
        return out


def profile(estimator: str, batch: int, steps: int, spec: ModelSpec | None = None) -> dict:
    """Build the program of one configuration and time its parts over ``steps`` replays."""
    pyro.clear_param_store()
    pyro.enable_validation(False)
    from pyro_discrete.infer import CompiledSVI

    spec = spec or ModelSpec()
    net = spec.build(0, torch.device("cpu"))
    baselines = nvil_baselines(net) if estimator == "nvil" else None
    pair = PyroPair(net, f"prof_{estimator}", baselines)
    optim, _ = discrete_optim()
    svi = CompiledSVI(pair.model, pair.guide, optim, discrete_loss(estimator), backend="trace")
    x = make_batch(spec, batch, torch.device("cpu"))
    for _ in range(4):
        svi.step(x)
    (program,) = svi.programs.values()
    gm = program.graph_module
    counts: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_function":
            counts[part_of(node)] += 1
    whole, graph = [], []
    parts: dict[str, list[float]] = defaultdict(list)
    inputs = [*program.state, x]
    for _ in range(steps):
        t0 = time.perf_counter()
        svi.step(x)
        whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            gm(*inputs)
        graph.append(time.perf_counter() - t0)
        interp = TimedInterpreter(gm)
        with torch.no_grad():
            interp.run(*inputs)
        for name in PARTS:
            parts[name].append(interp.times.get(name, 0.0))
    ms = {name: statistics.median(v) * 1e3 for name, v in parts.items()}
    return {
        "estimator": estimator,
        "batch": batch,
        "ops": dict(counts),
        "step_ms": statistics.median(whole) * 1e3,
        "graph_ms": statistics.median(graph) * 1e3,
        "parts_ms": ms,
    }


def to_markdown(results: list[dict]) -> str:
    header = ["estimator", "batch", "step ms", "graph ms", "ops"]
    header += [f"{p} (ops, ms)" for p in PARTS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r["estimator"], str(r["batch"]), f"{r['step_ms']:.2f}", f"{r['graph_ms']:.2f}"]
        cells.append(str(sum(r["ops"].values())))
        cells += [f"{r['ops'].get(p, 0)}, {r['parts_ms'].get(p, 0.0):.2f}" for p in PARTS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_replay", description=__doc__)
    p.add_argument("--estimators", default="reinforce,nvil,rebar")
    p.add_argument("--batch-sizes", default="24,256")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for est in args.estimators.split(","):
            results.append(profile(est, batch, args.steps))
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
