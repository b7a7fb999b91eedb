r""":class:`DiscreteSVIModule`: a ``LightningModule`` training a model and guide with a
:class:`~pyro_discrete.infer.DiscreteELBO`, on one process or many.

Each training step evaluates ``loss.differentiable_loss(model, guide, *batch)`` (the
eager step of :class:`pyro.infer.SVI`); Lightning back-propagates it and steps a
``torch.optim.Adam`` over every trained tensor of Pyro's param store. Under a DDP
strategy with :math:`W` processes, each draws its own samples on its own shard of the
data and the gradient is the average

.. math:: \hat g = \frac{1}{W} \sum_{r=1}^{W} \hat g_r ,

an unbiased estimate whenever each :math:`\hat g_r` is (the estimators' control-variate
gradients included), with :math:`1/W` of one process's variance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import pyro
import torch
from torch import Tensor, nn

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.infer.control_variates import running_statistics
from pyro_discrete.lightning.params import (
    ParamStoreParameters,
    load_param_store_state,
    param_store_state,
    warm_up,
)
from pyro_discrete.lightning.sync import average_running_statistics, rank_seed

__all__ = ["CHECKPOINT_KEY", "DiscreteSVIModule", "batch_arguments"]

#: where :class:`DiscreteSVIModule` keeps the param store in a Lightning checkpoint
CHECKPOINT_KEY = "pyro_discrete"
_FORMAT_VERSION = 1


def batch_arguments(batch: Any) -> tuple[tuple, dict]:
    """Model arguments from a ``DataLoader`` batch: a tensor is one argument, a list or
    tuple (e.g. from a ``TensorDataset``) several, a dict keyword arguments."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, (list, tuple)):
        return tuple(batch), {}
    if isinstance(batch, dict):
        return (), dict(batch)
    raise TypeError(
        f"cannot turn a batch of type {type(batch).__name__} into model arguments; pass "
        "batch_to_args=lambda batch: (args_tuple, kwargs_dict) to DiscreteSVIModule"
    )


@dataclass
class _Program:
    # Held outside nn.Module registration: the trained tensors reach Lightning (and DDP)
    # only through ParamStoreParameters, whatever else a model object holds.
    model: Callable
    guide: Callable
    loss: DiscreteELBO


class DiscreteSVIModule(pl.LightningModule):
    r"""Train ``model`` and ``guide`` with ``loss`` under a Lightning ``Trainer``.

    Before the optimizer and the DDP wrapper are built (in :meth:`setup`), one warm-up
    evaluation of the loss on ``example_batch`` creates every lazily created parameter
    (control-variate networks, REBAR's :math:`\eta` and :math:`\lambda`) with the same seed
    on every process, and registers every trained tensor of the param store as a parameter
    of this module (:class:`~pyro_discrete.lightning.params.ParamStoreParameters`). The
    warm-up changes no value.

    :param model: the Pyro model (its trained tensors must live in Pyro's param store:
        ``pyro.param``, ``pyro.module``, or :class:`~pyro.nn.PyroModule` without
        ``module_local_params``).
    :param guide: the guide.
    :param loss: the :class:`~pyro_discrete.infer.DiscreteELBO`.
    :param example_batch: one batch, as the data loader yields it, for the warm-up.
    :param float lr: Adam's learning rate for the model's and guide's parameters.
    :param float control_variate_lr_factor: control-variate parameters (``pyro_discrete/``
        names) train at ``lr`` times this (10, as the REBAR code).
    :param dict optimizer_options: other ``torch.optim.Adam`` arguments, e.g.
        ``{"betas": (0.9, 0.99999)}``.
    :param int seed: the warm-up's seed on every process; process :math:`r` then draws
        from :func:`~pyro_discrete.lightning.sync.rank_seed` ``(seed, r, step)``.
    :param int sync_every: average the running statistics across processes every this
        many training steps (1: every step); they are also averaged before a checkpoint
        is written and when training ends.
    :param batch_to_args: turns a batch into ``(args, kwargs)`` of the model and guide;
        default :func:`batch_arguments`.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        loss: DiscreteELBO,
        example_batch: Any = None,
        *,
        lr: float = 1e-3,
        control_variate_lr_factor: float = 10.0,
        optimizer_options: dict | None = None,
        seed: int = 0,
        sync_every: int = 1,
        batch_to_args: Callable[[Any], tuple[tuple, dict]] = batch_arguments,
    ) -> None:
        super().__init__()
        if sync_every < 1:
            raise ValueError(f"sync_every must be a positive number of steps, got {sync_every}")
        if not lr > 0 or not control_variate_lr_factor > 0:
            raise ValueError("lr and control_variate_lr_factor must be positive")
        self.program = _Program(model, guide, loss)
        self.example_batch = example_batch
        self.lr = lr
        self.control_variate_lr_factor = control_variate_lr_factor
        self.optimizer_options = dict(optimizer_options or {})
        self.seed = int(seed)
        self.sync_every = int(sync_every)
        self.batch_to_args = batch_to_args
        self.params = ParamStoreParameters()
        self._steps_in_process = 0
        self._known_names: set[str] = set()

    # -- before training ------------------------------------------------------------------

    def initialize(self, example_batch: Any = None, device: torch.device | None = None) -> None:
        """The warm-up (run by :meth:`setup` when not called before): seed, one
        evaluation of the loss, every trained tensor registered with this module."""
        if pyro.settings.get("module_local_params"):
            raise ValueError(
                "pyro.settings module_local_params=True keeps PyroModule parameters out of "
                "Pyro's param store, where DiscreteSVIModule finds the trained tensors; "
                "train with module_local_params=False"
            )
        batch = self.example_batch if example_batch is None else example_batch
        if batch is None:
            raise ValueError(
                "DiscreteSVIModule needs an example batch for its warm-up step (it creates the "
                "control-variate parameters before the optimizer is built): pass "
                "example_batch=next(iter(train_loader))"
            )
        device = device or self.device
        self._move_programs(device)
        args, kwargs = self.batch_to_args(_to_device(batch, device))
        pyro.set_rng_seed(self.seed)
        names = warm_up(self.program.loss, self.program.model, self.program.guide, args, kwargs)
        self.params.adopt(names)
        self.example_batch = None  # not pickled into spawned workers or kept alive

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        if not self.params.names:
            self.initialize(device=device)
        else:
            self._move_programs(device)
            self.params.bind()

    def _move_programs(self, device: torch.device) -> None:
        # buffers of nn.Module models (e.g. a pixel mean) follow the parameters' device;
        # .to keeps parameter objects, so the store still holds them
        for part in (self.program.model, self.program.guide):
            module = getattr(part, "__self__", part)  # a bound method's nn.Module
            if isinstance(module, nn.Module):
                module.to(device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.params.param_groups(self.lr, self.lr * self.control_variate_lr_factor)
        return torch.optim.Adam(groups, **self.optimizer_options)

    def on_train_start(self) -> None:
        # parameters are identical on every process (same warm-up seed, and the DDP
        # wrapper broadcasts rank 0's); samples must differ, and differ from a previous
        # run's when this one resumes at a later step
        pyro.set_rng_seed(rank_seed(self.seed, self.global_rank, self.global_step))
        average_running_statistics()
        self._known_names = set(pyro.get_param_store().keys())

    # -- training ---------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        args, kwargs = self.batch_to_args(batch)
        loss = self.program.loss.differentiable_loss(
            self.program.model, self.program.guide, *args, **kwargs
        )
        self._check_no_new_parameters()
        self._steps_in_process += 1
        if self._steps_in_process % self.sync_every == 0:
            average_running_statistics()
        examples = _batch_size(args, kwargs)
        self.log("train_loss", loss.detach(), on_step=True, prog_bar=True, batch_size=examples)
        return loss

    def _check_no_new_parameters(self) -> None:
        # a parameter created after the warm-up is outside the optimizer and the DDP
        # wrapper: each process would keep its own, untrained, copy
        store = pyro.get_param_store()
        if len(store) == len(self._known_names):
            return
        new = sorted(set(store.keys()) - self._known_names - set(running_statistics()))
        if new:
            raise RuntimeError(
                f"parameter(s) {new} appeared in Pyro's param store after the warm-up step "
                f"(at training step {self.global_step}), so they would be neither trained nor "
                "synchronised across processes: make the example batch run every sample site "
                "and network of the model and guide"
            )
        self._known_names = set(store.keys())

    def on_train_end(self) -> None:
        average_running_statistics()

    # -- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.sync_every > 1:
            average_running_statistics()
        checkpoint[CHECKPOINT_KEY] = {
            "format_version": _FORMAT_VERSION,
            "param_store": param_store_state(),
            "trained": self.params.names,
            "seed": self.seed,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                "this Lightning checkpoint holds no Pyro param store: it was not written by "
                "DiscreteSVIModule; start a new run instead of resuming from it"
            )
        if state["format_version"] > _FORMAT_VERSION:
            raise ValueError(
                f"checkpoint format {state['format_version']} is newer than this "
                f"pyro_discrete understands ({_FORMAT_VERSION}); upgrade pyro_discrete"
            )
        unknown = sorted(set(state["trained"]) - set(self.params.names))
        if unknown:
            raise ValueError(
                f"the checkpoint trained parameter(s) {unknown}, which this model, guide and "
                "estimator do not have: it was written for another set-up; resume with the "
                "same model, guide and estimator, or start afresh"
            )
        device = self.params.parameter(self.params.names[0]).device
        load_param_store_state(state["param_store"], required=self.params.names, device=device)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_size(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1
