"""Fixtures for the distribution tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    # These tests use vectors of ~1e5 elements, too small to gain from intra-op threads;
    # under pytest-xdist on a 2-core machine, 2 threads per worker oversubscribe the cores
    # and the spin-waiting made the directory 10x slower. Restored afterwards so other
    # test directories in the same session are unaffected.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
