"""Throughput of data-parallel training: ``python -m benchmarks.data_parallel``.

Runs ``examples/data_parallel.py`` (a 784-200 sigmoid belief net on synthetic images,
``--batch-size`` examples per process per step) as a user would, once per configuration
and round, rounds interleaved so that load from other processes hits every configuration
alike:

- ``1 process``: one process, one torch thread;
- ``1 process, N threads``: one process, N intra-op threads (the other way to use N cores);
- ``N processes``: DDP with gloo (CPU) or NCCL (GPU), one thread each.

It prints the median examples per second (timed after each run's first steps, so start-up
is not counted) and the scaling efficiency, the N-process throughput divided by N times
the 1-process throughput (1.0 is perfect scaling).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "data_parallel.py"
_THROUGHPUT = re.compile(r"throughput: (\d+(?:\.\d+)?) examples/s")


def parse_throughput(stdout: str) -> float:
    """The examples per second that ``examples/data_parallel.py`` printed."""
    match = _THROUGHPUT.search(stdout)
    if match is None:
        raise ValueError(f"no 'throughput: ... examples/s' line in the output:\n{stdout[-2000:]}")
    return float(match.group(1))


def run_once(devices: int, threads: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as root:
        command = [
            sys.executable, str(EXAMPLE),
            "--devices", str(devices), "--threads", str(threads),
            "--accelerator", args.accelerator, "--estimator", args.estimator,
            "--model", args.model, "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--synthetic-size", "20000",
            "--root-dir", root,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return parse_throughput(proc.stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--estimator", default="nvil")
    parser.add_argument("--model", default="sbn_linear1")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.processes
    configs = {"1 process": (1, 1), f"{n} processes": (n, 1)}
    if args.accelerator == "cpu":
        configs[f"1 process, {n} threads"] = (1, n)
    results: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (devices, threads) in configs.items():
            results[name].append(run_once(devices, threads, args))
    base = statistics.median(results["1 process"])
    print(
        f"{args.model}, {args.estimator}, batch {args.batch_size} per process, "
        f"{args.steps} steps, {args.accelerator}, median of {args.rounds} rounds "
        f"(load average {os.getloadavg()[0]:.1f} at the end)"
    )
    print(f"{'configuration':<24} {'examples/s':>11} {'vs 1 process':>13}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<24} {median:>11.0f} {median / base:>13.2f}")
    parallel = statistics.median(results[f"{n} processes"])
    print(f"scaling efficiency of {n} processes: {parallel / (n * base):.2f}")


if __name__ == "__main__":
    main()
