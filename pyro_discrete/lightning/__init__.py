"""Data-parallel training on PyTorch Lightning: several processes, GPUs or machines.

Install with ``pip install "pyro-discrete[lightning]"``; the rest of pyro_discrete never
imports Lightning. See the guide page *Data-parallel training* (``docs/data_parallel.md``).

- :class:`DiscreteSVIModule`: a ``LightningModule`` for a model, a guide and a
  :class:`~pyro_discrete.infer.DiscreteELBO`;
- :func:`fit`: data loader, module and ``Trainer`` in one call;
- :mod:`~pyro_discrete.lightning.params`: Pyro's param store as ``nn.Parameter`` s and in
  checkpoints; :mod:`~pyro_discrete.lightning.sync`: running statistics and seeds across
  processes.
"""

from __future__ import annotations

try:
    import lightning.pytorch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "pyro_discrete.lightning needs PyTorch Lightning: pip install 'pyro-discrete[lightning]' "
        "(or pip install lightning)"
    ) from e

from pyro_discrete.lightning.module import CHECKPOINT_KEY, DiscreteSVIModule, batch_arguments
from pyro_discrete.lightning.params import (
    ParamStoreParameters,
    load_param_store_state,
    param_store_state,
    warm_up,
)
from pyro_discrete.lightning.sync import average_running_statistics, rank_seed
from pyro_discrete.lightning.training import Throughput, fit

__all__ = [
    "CHECKPOINT_KEY",
    "DiscreteSVIModule",
    "ParamStoreParameters",
    "Throughput",
    "average_running_statistics",
    "batch_arguments",
    "fit",
    "load_param_store_state",
    "param_store_state",
    "rank_seed",
    "warm_up",
]
