"""Fixtures for the whole suite: one intra-op thread and a clean Pyro param store.

The tests run small tensor ops, where intra-op threads only add contention: under
pytest-xdist on two cores, two threads per worker made some directories ten times slower.
"""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
