"""What ``pyro-discrete compare`` measures besides training: ELBO, IW bound, gradient variance.

The calibration (:mod:`~pyro_discrete.cli.compare.budget`) times these same functions, so that the
budget is planned with the costs of the real measurements.
"""

from __future__ import annotations

import pyro
import torch

from pyro_discrete._param_store import load_param_store_state, param_store_state
from pyro_discrete.diagnostics import elbo_estimate, gradient_variance, importance_weighted_bound

from ..tasks import Task, make_elbo, split_estimator_label
from ..training import RunState, register_modules

__all__ = [
    "CV_PREFIX",
    "control_variate_state",
    "elbo_on_fixed_data",
    "evaluation_data",
    "iw_bound",
    "variance_at",
]

CV_PREFIX = "pyro_discrete/"
# NVIL divides its learning signal by a running standard deviation, which rescales its
# gradient; variances are compared on the unscaled (unbiased) estimate.
_UNSCALED = {"nvil": {"normalize_variance": False}}
# importance_weighted_bound's own default: examples per vectorised pass
_IW_BATCH = 100


def evaluation_data(task: Task, examples: int, seed: int, device: torch.device) -> tuple:
    """The first ``examples`` training rows as model arguments (one fixed binarisation)."""
    rows = task.train[:examples]
    if task.train_probs is not None:  # dynamic binarisation: evaluate on one fixed draw
        rows = (
            torch.rand(rows.shape, generator=torch.Generator().manual_seed(seed)) < rows
        ).float()
    return task.args(rows.to(device))


def elbo_on_fixed_data(run: RunState, args: tuple, seed: int) -> float:
    """Single-sample ELBO per example, drawn on its own RNG stream: training is left alone."""
    rng = torch.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        return elbo_estimate(run.model.model, run.model.guide, *args)
    finally:
        torch.set_rng_state(rng)


def iw_bound(model, args: tuple, num_samples: int, seed: int) -> float:
    r"""The ``num_samples``-sample importance-weighted bound per example on ``args``.

    Evaluated in minibatches of 100 examples; a model with a *global* latent site (outside
    the data plate) has no per-example bound, only that of the whole data set
    (:func:`~pyro_discrete.diagnostics.importance_weighted_bound` raises a ``ValueError``
    that says ``batch_size=None``), which is then computed in one pass and divided by the
    number of examples.
    """
    pyro.set_rng_seed(seed)
    options = {"num_samples": num_samples, "chunk_size": min(num_samples, 50)}
    try:
        return importance_weighted_bound(
            model.model, model.guide, *args, batch_size=_IW_BATCH, **options
        )
    except ValueError as e:
        if "batch_size=None" not in str(e):
            raise
    pyro.set_rng_seed(seed)  # the same draws as a model without global sites would get
    return importance_weighted_bound(model.model, model.guide, *args, batch_size=None, **options)


def control_variate_state() -> dict:
    """The live param store's control-variate entries (baselines, η, λ, surrogate nets)."""
    return param_store_state(CV_PREFIX)


def variance_at(
    task: Task,
    estimator: str,
    model_state: dict,
    cv_state: dict,
    batch: tuple,
    num_samples: int,
    seed: int,
    device: torch.device,
) -> float:
    """Log mean variance of ``estimator``'s encoder gradient at ``model_state``.

    A fresh model loaded with the reference run's parameters and the estimator's own
    control-variate state; leaves the param store empty.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = task.build_model()
    model.load_state_dict(model_state)
    model.to(device)
    register_modules(model, batch)
    load_param_store_state(cv_state)
    try:
        stats = gradient_variance(
            make_elbo(estimator, **_UNSCALED.get(split_estimator_label(estimator)[0], {})),
            model.model,
            model.guide,
            *batch,
            num_samples=num_samples,
        )
    finally:
        pyro.clear_param_store()
    return stats.log_mean_variance
