r"""What data-parallel processes share besides gradients: running statistics and seeds.

Running statistics (NVIL's mean and variance, decaying-average baselines, annealing step
counters; :func:`pyro_discrete.infer.control_variates.running_statistics`) are updated
by every process from its own samples, outside any gradient. :func:`average_running_statistics`
all-reduces them to their mean across processes. Each statistic is a decaying average

.. math:: s_{t+1} = \alpha\, s_t + (1 - \alpha)\, \bar u_t,

linear in the batch statistic :math:`\bar u_t`; starting from a common :math:`s_t`, the
mean over :math:`W` processes of their updates is the update with the mean of their
batch statistics, i.e. the single-process update with the whole effective batch (for
NVIL's variance, up to the centring by each process's own new mean). Step counters are
equal on every process and stay so.

Each process draws its own samples: :func:`rank_seed` derives a seed from the run's seed,
the process's rank and the step it starts at (so a resumed run does not replay the noise
of the first steps).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.distributed as dist

from pyro_discrete.infer.control_variates import running_statistics

__all__ = ["average_running_statistics", "distributed", "rank_seed"]


def distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A 32-bit seed for process ``rank`` of a run seeded ``seed``, starting at ``step``.

    >>> rank_seed(0, 0) != rank_seed(0, 1) != rank_seed(0, 1, step=100)
    True
    """
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _layout_signature(names: list[str], sizes: list[int]) -> float:
    text = ";".join(f"{n}:{s}" for n, s in zip(names, sizes, strict=True))
    return float(zlib.crc32(text.encode()) % (1 << 20))


def average_running_statistics(group=None) -> int:
    """Replace every running statistic by its mean over the processes of ``group``, in
    place; return how many were averaged (0 when not distributed).

    Every process must call it at the same point. The statistics' names and sizes are
    checked to agree first (one 3-element all-reduce), so that processes whose models
    created different statistics fail with the names instead of averaging unrelated
    numbers or hanging.

    :raises RuntimeError: when the processes hold different running statistics.
    """
    if not distributed():
        return 0
    stats = running_statistics()
    names = list(stats)
    tensors = [stats[n] for n in names]
    world = dist.get_world_size(group)
    device = tensors[0].device if tensors else _collective_device(group)
    # sum of h and of h^2 over processes equal W h and W h^2 only if every h is equal
    # (Cauchy-Schwarz); h < 2^20 keeps h^2 exact in float64
    h = _layout_signature(names, [t.numel() for t in tensors])
    header = torch.tensor([1.0, h, h * h], dtype=torch.float64, device=device)
    dist.all_reduce(header, group=group)
    if not (header[0] == world and header[1] == world * h and header[2] == world * h * h):
        raise RuntimeError(
            "the processes hold different running statistics (this process: "
            f"{names or 'none'}): some site's control variate was created on one process "
            "only; make every process's model run the same sample sites at every step"
        )
    if not tensors:
        return 0
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat /= world
    with torch.no_grad():
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return len(tensors)


def _collective_device(group) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo, CPU ones
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
