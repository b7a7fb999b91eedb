r"""The conversion between Lightning's training state and a run's checkpoint, for
``fit --devices N`` (:mod:`~pyro_discrete.cli.parallel`):

- parameters, control-variate parameters and running statistics: Pyro's param store
  (identical on every process: DDP averages the gradients, running statistics are
  averaged every step by :class:`~pyro_discrete.lightning.DiscreteSVIModule`);
- optimizer: the per-parameter Adam moments of the ``torch.optim.Adam`` Lightning steps,
  keyed by param-store name as :class:`~pyro_discrete.optim.MultiTensorAdam` keys them;
- data: the training rows as a :class:`~torch.utils.data.Dataset`.
"""

from __future__ import annotations

import pyro
import torch
from torch.utils.data import Dataset

from pyro_discrete.lightning import DiscreteSVIModule, load_param_store_state, rank_seed

__all__ = [
    "ADAM_BETAS",
    "CheckpointedModule",
    "RowDataset",
    "load_optimizer_state",
    "optimizer_state",
]

#: Adam's moments as the single-process optimizer keeps them (see ``tasks.make_optimizer``)
ADAM_BETAS = (0.9, 0.99999)


class RowDataset(Dataset):
    """The training rows; with ``probs`` given, a fresh Bernoulli draw of the row on every
    access (dynamic binarisation), from the process's RNG, which each rank seeds apart."""

    def __init__(self, rows: torch.Tensor, binarise_on_access: bool) -> None:
        self.rows, self.binarise = rows, binarise_on_access

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        row = self.rows[index]
        return torch.bernoulli(row) if self.binarise else row


class CheckpointedModule(DiscreteSVIModule):
    """:class:`DiscreteSVIModule` continuing a CLI checkpoint: its param store and Adam
    moments are loaded once the optimizer exists, and step numbers go on from its step."""

    def __init__(self, *args, checkpoint: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cli_checkpoint = checkpoint
        self.start_step = 0 if checkpoint is None else int(checkpoint["step"])

    def on_train_start(self) -> None:
        if self.cli_checkpoint is not None:
            device = self.params.parameter(self.params.names[0]).device
            load_param_store_state(
                self.cli_checkpoint["param_store"], required=self.params.names, device=device
            )
            load_optimizer_state(self.trainer.optimizers[0], self.cli_checkpoint["optim"])
        super().on_train_start()
        # a resumed run draws other samples than the steps it already took
        seed = rank_seed(self.seed, self.global_rank, self.start_step + self.global_step)
        pyro.set_rng_seed(seed)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    params = dict(pyro.get_param_store().named_parameters())
    trained = {p for group in optimizer.param_groups for p in group["params"]}
    for name, moments in state.items():
        param = params.get(name)
        if param is None or param not in trained:
            continue  # moments of a parameter this set-up does not train: nothing to resume
        optimizer.state[param] = {
            k: v.to(param.device) if torch.is_tensor(v) and k != "step" else v
            for k, v in moments.items()
        }


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    store = pyro.get_param_store()
    return {
        store.param_name(p): {k: v.detach().cpu().clone() for k, v in s.items()}
        for p, s in optimizer.state.items()
    }
