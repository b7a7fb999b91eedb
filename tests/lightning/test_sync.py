"""Seeds per process, and averaging running statistics outside a process group.

Averaging across two processes is tested in test_distributed.py.
"""

from __future__ import annotations

import torch

from pyro_discrete.infer.control_variates import running_statistic, set_running_statistic
from pyro_discrete.lightning import average_running_statistics, rank_seed


def test_rank_seeds_differ_by_rank_and_by_starting_step():
    seeds = {rank_seed(7, rank, step) for rank in range(4) for step in (0, 100)}
    assert len(seeds) == 8
    assert rank_seed(7, 1, 100) == rank_seed(7, 1, 100)
    assert all(0 <= s < 2**32 for s in seeds)
    assert rank_seed(7, 0) != rank_seed(8, 0)


def test_one_process_has_nothing_to_average():
    name = "pyro_discrete/nvil/z/mean"
    running_statistic(name, torch.zeros(()))
    set_running_statistic(name, torch.tensor(2.5))
    assert average_running_statistics() == 0
    assert running_statistic(name, torch.zeros(())).item() == 2.5
