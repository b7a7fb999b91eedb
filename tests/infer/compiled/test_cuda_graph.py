"""The capture guards of the cuda_graph backend, exercised on the CPU (no GPU in CI)."""

from __future__ import annotations

import pytest
import torch

from pyro_discrete.infer.compiled import cuda_graph
from pyro_discrete.infer.compiled.cuda_graph import CaptureError, CpuStateGuard, StagedConstants


def test_cpu_random_draw_is_refused():
    with pytest.raises(CaptureError, match="random numbers on the CPU"), CpuStateGuard([]):
        torch.randperm(5)


def test_in_place_update_of_cpu_state_is_refused_but_temporaries_are_fine():
    state = torch.zeros(3)
    with CpuStateGuard([state]):
        scratch = torch.zeros(3)
        scratch.add_(1.0)  # a temporary: replaying it changes nothing outside
        with pytest.raises(CaptureError, match="updates CPU state in place"):
            state.add_(1.0)


def test_staged_constants_serve_the_warm_up_copy(monkeypatch):
    monkeypatch.setattr(cuda_graph, "_target_is_cuda", lambda kwargs: True)
    staged: list = []
    with StagedConstants(staged, capturing=False):
        warm = torch.tensor([0.1, 0.2], device="cpu")
    with StagedConstants(staged, capturing=True):
        captured = torch.tensor([0.1, 0.2], device="cpu")
    assert torch.equal(warm, captured) and captured is not staged[0][1]
    with pytest.raises(CaptureError, match="changed between the warm-up"):
        with StagedConstants(staged, capturing=True):
            torch.tensor([0.3, 0.2], device="cpu")
