"""Bias and variance of the straight-through family against exact enumeration.

For each model of ``tests/infer/problems.py`` (plus the Gaussian-bits model of
``tests/infer/test_reinmax.py``, whose ELBO is quadratic in its one site) and each
estimator, draws ``--draws`` gradient estimates with ``num_particles=2`` (ReinMax-CV's
minimum) and reports

- ``bias``: the norm of the mean estimate minus the exact ELBO gradient, with ``±`` its
  standard error (the norm of the mean's standard errors; a bias below about twice this
  is not resolved);
- ``var``: the trace of one estimate's covariance (summed over every parameter
  component), and ``guide var``: the same over the guide's parameters only, whose
  gradient is where the estimators differ (the model's parameters get the same pathwise
  gradient from all of them).

Run from the repository root::

    python benchmarks/straight_through_family.py --draws 2000 > table.md

The table in ``docs/choosing.md`` comes from this script; the machine is stated there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from infer.problems import PROBLEMS, estimator_draws  # noqa: E402
from infer.test_reinmax import gaussian_bits  # noqa: E402

from pyro_discrete.infer import DiscreteELBO  # noqa: E402

ESTIMATORS = ("st", "gumbel_rao", "reinmax", "decoupled_st", "reinmax_rao", "reinmax_cv")
MODELS = {
    "gaussian_bits": gaussian_bits,
    "mixture_of_experts": PROBLEMS["mixture_of_experts"],
    "categorical_chain": PROBLEMS["categorical_chain"],
    "sbn_two_layer": PROBLEMS["sbn_two_layer"],
}
#: options per estimator: the defaults, except a decoupled forward temperature that
#: differs from straight-through's (which it equals at forward_temperature=1)
OPTIONS: dict[str, dict] = {}


def measure(make, estimator: str, draws: int, particles: int = 16, seed: int = 0) -> dict:
    """Bias norm, its standard error and the per-estimate variance trace."""
    problem = make()
    exact = problem.exact()
    elbo = DiscreteELBO(
        estimator,
        num_particles=particles,
        vectorize_particles=True,
        max_plate_nesting=1,
        **OPTIONS.get(estimator, {}),
    )
    samples = estimator_draws(problem, elbo, draws, seed=seed)
    bias = sum(((d.mean(0) - exact[k]) ** 2).sum() for k, d in samples.items()) ** 0.5
    se = sum((d.var(0) / draws).sum() for d in samples.values()) ** 0.5
    var = sum(d.var(0).sum() for d in samples.values())
    guide = sum(samples[k].var(0).sum() for k in problem.guide_params)
    return {"bias": bias.item(), "se": se.item(), "var": var.item(), "guide_var": guide.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    estimators = args.estimators.split(",")
    print("bias ± s.e. / var / guide var, per cell\n")
    print("| model | " + " | ".join(estimators) + " |")
    print("|---|" + "---|" * len(estimators))
    for model in args.models.split(","):
        cells = []
        for name in estimators:
            start = time.perf_counter()
            r = measure(MODELS[model], name, args.draws)
            cells.append(f"{r['bias']:.3f} ± {r['se']:.3f} / {r['var']:.3g} / {r['guide_var']:.3g}")
            print(f"{model} {name}: {r} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        print(f"| {model} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
