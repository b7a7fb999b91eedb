"""The cost of a training step in evaluations of the model, counted rather than assumed.

Estimators differ in how often a step evaluates :math:`f` (the model's log joint): once for
straight-through, :math:`K` times for RLOO with :math:`K` particles, :math:`1 + D(K-1)` times
for IndeCateR on :math:`D` variables of :math:`K` values, three times for REBAR... and
several of these evaluations are batched into one vectorised pass. So rather than keep a
table per estimator, one step of each is run with the model wrapped in a counter: every
model pass adds the number of elements of its observed sites (a vectorised pass over
:math:`K` particles has :math:`K` times the elements of a plain pass), and the total is
divided by the elements of one plain pass of the same batch (guide drawn, model replayed).
The result is the step's evaluations of the model per data point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyro
import pyro.poutine as poutine
import torch

from ..tasks import Task, make_elbo
from ..training import register_modules

if TYPE_CHECKING:
    from .outcome import Outcome

__all__ = ["CountedModel", "evaluations_per_step", "record_evaluations"]


def _observed_elements(trace: poutine.Trace) -> int:
    total = 0
    for site in trace.nodes.values():
        if site["type"] != "sample" or not site.get("is_observed"):
            continue
        fn, value = site["fn"], site["value"]
        batch = value.shape[: value.dim() - fn.event_dim]
        total += torch.broadcast_shapes(fn.batch_shape, batch).numel()
    return total


class CountedModel:
    """``model`` that counts the elements of the observed sites of every pass it makes."""

    def __init__(self, model: Callable) -> None:
        self.model = model
        self.elements = 0

    def __call__(self, *args, **kwargs):
        with poutine.trace() as tracer:
            value = self.model(*args, **kwargs)
        self.elements += _observed_elements(tracer.trace)
        return value


def evaluations_per_step(
    task: Task, estimator: str, model_state: dict, args: tuple, seed: int, device: torch.device
) -> float:
    """Evaluations of the model per data point that one training step of ``estimator`` (a
    ``--estimators`` label, ``name`` or ``name:K``) makes on the minibatch ``args``.

    Two steps are taken on a fresh model at ``model_state`` and the second is counted (the
    first also inspects the program); the parameter store is left empty.

    :raises ValueError: if the model observes nothing (there is nothing to count).
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = task.build_model()
    model.load_state_dict(model_state)
    model.to(device)
    try:
        register_modules(model, args)
        plain = CountedModel(model.model)
        with torch.no_grad():
            guide_trace = poutine.trace(model.guide).get_trace(*args)
            poutine.replay(plain, trace=guide_trace)(*args)
        if plain.elements == 0:
            raise ValueError(
                f"model {task.model_name!r} has no observed site: evaluations cannot be counted"
            )
        counted = CountedModel(model.model)
        elbo = make_elbo(estimator)
        # the first step also inspects the program (sites, plates, dependencies): count the
        # second, which is what every later step costs
        elbo.loss_and_grads(counted, model.guide, *args)
        counted.elements = 0
        elbo.loss_and_grads(counted, model.guide, *args)
    finally:
        pyro.clear_param_store()
    return counted.elements / plain.elements


def record_evaluations(
    outcome: Outcome, task: Task, inits: list[dict], batches: list[tuple], device: torch.device
) -> None:
    """Record every estimator's :func:`evaluations_per_step` (metric
    ``evaluations_per_step``, step 0, one row per seed, counted at the first seed's
    initialisation and variance minibatch: the count depends on the model's shapes, not on
    its parameter values)."""
    s = outcome.settings
    for name in s.estimators:
        count = evaluations_per_step(task, name, inits[0], batches[0], s.seed, device)
        for i in range(s.seeds):
            outcome.record(name, i, "evaluations_per_step", 0, 0.0, count)
