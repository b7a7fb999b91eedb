"""Training runs for tests/lightning/test_distributed.py, one process per rank.

Run as ``python ddp_worker.py SCENARIO OUT_DIR DEVICES [CKPT]``; with DEVICES > 1,
Lightning's ``"ddp"`` strategy runs this same command again for each further rank (gloo,
one thread per process). Every rank writes ``OUT_DIR/<run>_rank<r>.pt``: its whole param
store after training, the losses of its steps and what it saw when training started.

Scenarios:

- ``train``: an NVIL and a RELAX belief net trained for 30 steps (NVIL checkpointed at
  steps 15 and 30), then 40 gradient draws of RELAX at fixed parameters on a problem with
  exact gradients (local and averaged gradients, and the guide's samples, per rank);
  then :func:`average_running_statistics` on values that differ by rank, and on ranks
  holding different statistics;
- ``resume``: the NVIL net resumed from CKPT and trained 15 more steps, checkpointed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch
from lightning.pytorch.callbacks import Callback
from pyro.poutine.messenger import Messenger
from torch.utils.data import TensorDataset

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.infer.control_variates import running_statistic, set_running_statistic
from pyro_discrete.lightning import average_running_statistics, fit, param_store_state
from pyro_discrete.models import SigmoidBeliefNet

NVIL_STEPS = 15  # steps between checkpoints; a run is two of them
GRADIENT_DRAWS = 40


class Record(Callback):
    """Losses per step and the state found when training starts (after a resume)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.start: dict = {}

    def on_train_start(self, trainer, module) -> None:
        optimizer = trainer.optimizers[0]
        first = optimizer.param_groups[0]["params"][0]
        self.start = {
            "global_step": trainer.global_step,
            "store": param_store_state(),
            "adam_steps": float(optimizer.state[first]["step"]) if optimizer.state else 0.0,
        }

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def belief_net_data() -> tuple[SigmoidBeliefNet, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((480, 12), 0.2), generator=g)
    return SigmoidBeliefNet(x_dim=12, latent_dims=(4,), name="sbn"), TensorDataset(x)


def train_belief_net(out: Path, run: str, estimator: str, devices: int, **fit_options) -> None:
    pyro.clear_param_store()
    torch.manual_seed(0)
    net, data = belief_net_data()
    options = {"hidden": (16,)} if estimator == "relax" else {}
    record = Record()
    trainer, _ = fit(
        net.model,
        net.guide,
        DiscreteELBO(estimator, max_plate_nesting=1, **options),
        data,
        batch_size=8,
        lr=0.03,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        root_dir=out / run,
        callbacks=[record],
        **fit_options,
    )
    dump(out, run, trainer, record.losses, record.start)


def dump(out: Path, run: str, trainer, losses: list, start: dict, **extra) -> None:
    optimizer = trainer.optimizers[0]
    first = optimizer.param_groups[0]["params"][0]
    adam = optimizer.state.get(first, {})
    state = {
        "store": param_store_state(),
        "losses": losses,
        "start": start,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "adam_steps": float(adam["step"]) if adam else 0.0,
        "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
        **extra,
    }
    torch.save(state, out / f"{run}_rank{trainer.global_rank}.pt")


class SampleRecorder(Messenger):
    """The values a guide's latent sites take (to see each rank draw its own)."""

    def __init__(self, site: str) -> None:
        super().__init__()
        self.site = site
        self.values: list[torch.Tensor] = []

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["name"] == self.site and not msg["is_observed"]:
            self.values.append(msg["value"].detach().clone())


class GradientDraws(Callback):
    """Per step: each parameter's local gradient (tensor hooks, before DDP averages it)
    and the averaged gradient; then the gradient is dropped so parameters stay fixed."""

    def __init__(self, samples: SampleRecorder) -> None:
        self.samples = samples
        self.local: dict[str, list] = {}
        self.averaged: dict[str, list] = {}
        self.first_samples: list[torch.Tensor] = []
        self._last: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, module) -> None:
        for name in module.params.names:
            self.local[name], self.averaged[name] = [], []
            module.params.parameter(name).register_hook(self._hook(name))

    def _hook(self, name):
        def keep(grad):
            # the last call is the backward pass (REBAR/RELAX also differentiate their
            # variance objective inside the step, which calls it first)
            self._last[name] = grad.detach().clone()

        return keep

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.samples.values.clear()

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        for name in module.params.names:
            p = module.params.parameter(name)
            self.local[name].append(self._last.pop(name))
            self.averaged[name].append(p.grad.detach().clone())
            p.grad = None  # Adam skips it: the next draw is at the same parameters
        self.first_samples.append(self.samples.values[0])


def gradient_draws(out: Path, devices: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from infer.problems import sbn_two_layer

    torch.set_default_dtype(torch.float64)
    problem = sbn_two_layer()
    problem.reset()
    (x,) = problem.args
    samples = SampleRecorder("z1")
    draws = GradientDraws(samples)
    # every item is the problem's whole data set: each step is one draw at those data
    data = TensorDataset(x.expand(GRADIENT_DRAWS * devices, *x.shape))
    trainer, _ = fit(
        problem.model,
        samples(problem.guide),
        DiscreteELBO(
            "relax",
            num_particles=200,
            vectorize_particles=True,
            max_plate_nesting=2,
            hidden=(16,),
        ),
        data,
        batch_size=1,
        max_steps=GRADIENT_DRAWS,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        batch_to_args=lambda batch: ((batch[0][0],), {}),
        callbacks=[draws],
    )
    dump(
        out,
        "gradients",
        trainer,
        [],
        {},
        local={k: torch.stack(v) for k, v in draws.local.items()},
        averaged={k: torch.stack(v) for k, v in draws.averaged.items()},
        samples=torch.stack(draws.first_samples),
    )
    torch.set_default_dtype(torch.float32)


def running_statistics_checks(out: Path) -> None:
    """Average a statistic worth rank + 1; then hold different statistics on the ranks."""
    rank = torch.distributed.get_rank()
    pyro.clear_param_store()
    like = torch.zeros(())
    name = "pyro_discrete/test/site/mean"
    running_statistic(name, like)
    set_running_statistic(name, torch.tensor(rank + 1.0))
    averaged = average_running_statistics()
    value = float(pyro.get_param_store()[name])
    if rank == 1:
        running_statistic("pyro_discrete/test/other_site/mean", like)
    try:
        average_running_statistics()
        error = ""
    except RuntimeError as e:
        error = str(e)
    torch.save({"averaged": averaged, "value": value, "error": error}, out / f"sync_rank{rank}.pt")


def main(scenario: str, out: str, devices: str, ckpt: str | None = None) -> None:
    torch.set_num_threads(1)
    out_dir, n = Path(out), int(devices)
    if scenario == "train":
        train_belief_net(
            out_dir, "nvil", "nvil", n, max_steps=2 * NVIL_STEPS, checkpoint_every=NVIL_STEPS
        )
        train_belief_net(out_dir, "relax", "relax", n, max_steps=2 * NVIL_STEPS)
        gradient_draws(out_dir, n)
        running_statistics_checks(out_dir)
    elif scenario == "resume":
        run = f"resume_on_{n}"
        train_belief_net(
            out_dir,
            run,
            "nvil",
            n,
            max_steps=NVIL_STEPS + int(ckpt_step(ckpt)),
            checkpoint_every=NVIL_STEPS,
            ckpt_path=ckpt,
        )
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


def ckpt_step(path: str | None) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


if __name__ == "__main__":
    main(*sys.argv[1:])
