r"""One call to train on one process, several GPUs or several machines: :func:`fit`.

:func:`fit` builds the data loader, the :class:`~pyro_discrete.lightning.DiscreteSVIModule`
and the Lightning ``Trainer`` and runs it. With ``devices=W`` processes (times
``num_nodes`` machines) each process reads its own shard of the data (Lightning puts a
:class:`~torch.utils.data.distributed.DistributedSampler` under the loader), so one
optimizer step consumes

.. math:: B_{\mathrm{eff}} = B \times \mathrm{devices} \times \mathrm{num\_nodes}
          \times \mathrm{accumulate\_grad\_batches}

examples, where :math:`B` is ``batch_size`` (per process). The gradient is the mean of the
processes' gradients: the same scale as one process's batch of :math:`B`, with the
variance of :math:`B_{\mathrm{eff}}` examples.

Under ``strategy="ddp"`` Lightning starts processes 1 to W-1 by running the same command
again (the script, or ``pyro-discrete ...``), so everything before :func:`fit` must be
deterministic and cheap to repeat; started by ``torchrun`` or a cluster scheduler
(SLURM, ...), every process runs the command itself and Lightning detects the
environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.lightning.module import DiscreteSVIModule, batch_arguments

__all__ = ["Throughput", "fit"]


class Throughput(Callback):
    """Examples per second of training, over all processes, after ``skip`` warm-up steps.

    Measured between the end of the ``skip``-th step of this run and the end of the last, so
    process start-up, the warm-up evaluation and first-step allocations are not counted.
    :attr:`examples_per_s` is ``None`` until at least one timed step has run.
    """

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.examples_per_s: float | None = None
        self.steps_per_s: float | None = None
        self.first_step: int | None = None
        self._start: float | None = None
        self._steps = 0
        self._examples = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.first_step = trainer.global_step  # later than 0 when resuming

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.first_step + self.skip:
            self._start = time.perf_counter()
            self._steps = self._examples = 0
            return
        if self._start is None:
            return
        args, kwargs = pl_module.batch_to_args(batch)
        local = next((int(v.shape[0]) for v in (*args, *kwargs.values()) if torch.is_tensor(v)), 1)
        self._steps += 1
        self._examples += local * trainer.world_size
        elapsed = time.perf_counter() - self._start
        self.examples_per_s = self._examples / elapsed
        self.steps_per_s = self._steps / elapsed


def fit(
    model: Callable,
    guide: Callable,
    loss: DiscreteELBO,
    dataset: Dataset,
    *,
    max_steps: int,
    batch_size: int = 24,
    lr: float = 1e-3,
    control_variate_lr_factor: float = 10.0,
    optimizer_options: dict | None = None,
    devices: int | str = 1,
    accelerator: str = "cpu",
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    seed: int = 0,
    sync_every: int = 1,
    root_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    ckpt_path: str | Path | None = None,
    batch_to_args: Callable[[Any], tuple[tuple, dict]] = batch_arguments,
    callbacks: Sequence[Callback] = (),
    logger: Any = False,
    progress: bool = False,
    **trainer_options,
) -> tuple[pl.Trainer, DiscreteSVIModule]:
    r"""Train ``model`` and ``guide`` on ``dataset`` for ``max_steps`` optimizer steps.

    :param dataset: a map-style dataset; each item (or tuple of items, as in a
        :class:`~torch.utils.data.TensorDataset`) holds the model arguments of one example.
    :param int max_steps: total optimizer steps (a resumed run continues up to it).
    :param int batch_size: examples per process per step; the effective batch is
        ``batch_size * devices * num_nodes``. Incomplete last batches are dropped, so
        every process weighs equally.
    :param devices: processes per machine (CPU processes or GPUs).
    :param str accelerator: ``"cpu"``, ``"gpu"``, ``"auto"``.
    :param strategy: ``"auto"``, ``"ddp"`` (Lightning starts the processes; also under
        ``torchrun`` and cluster schedulers), or a Lightning strategy object.
    :param int num_nodes: machines.
    :param int seed: parameters start from this seed on every process; each process then
        draws its own samples (see :class:`DiscreteSVIModule`).
    :param int sync_every: steps between averages of the running statistics.
    :param root_dir: Lightning's ``default_root_dir`` (logs, checkpoints).
    :param int checkpoint_every: also write ``step=N.ckpt`` every this many steps (and
        ``last.ckpt``) under ``root_dir/checkpoints``; ``None`` writes none.
    :param ckpt_path: a checkpoint to resume from (written with any number of processes).
    :param trainer_options: other ``lightning.pytorch.Trainer`` arguments.
    :returns: the trainer and the trained module; Pyro's param store holds the result.

    Lightning's ``Trainer`` reference: https://lightning.ai/docs/pytorch/stable/common/trainer.html
    """
    pl.seed_everything(seed, workers=True, verbose=False)  # also the sampler's shuffle seed
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    if len(loader) == 0:
        raise ValueError(
            f"the dataset has {len(dataset)} examples, fewer than batch_size={batch_size}"
        )
    example = next(iter(DataLoader(dataset, batch_size=batch_size)))
    module = DiscreteSVIModule(
        model,
        guide,
        loss,
        example,
        lr=lr,
        control_variate_lr_factor=control_variate_lr_factor,
        optimizer_options=optimizer_options,
        seed=seed,
        sync_every=sync_every,
        batch_to_args=batch_to_args,
    )
    callbacks = list(callbacks)
    if checkpoint_every is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(root_dir or ".") / "checkpoints",
                filename="{step}",
                every_n_train_steps=checkpoint_every,
                save_top_k=-1,
                save_last=True,
            )
        )
    trainer_options.setdefault("enable_model_summary", False)
    trainer = pl.Trainer(
        max_steps=max_steps,
        devices=devices,
        accelerator=accelerator,
        strategy=strategy,
        num_nodes=num_nodes,
        default_root_dir=root_dir,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=progress,
        enable_checkpointing=checkpoint_every is not None,
        **trainer_options,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module
