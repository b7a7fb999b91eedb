"""Fixtures for the whole suite: one intra-op thread and a clean Pyro param store.

The tests run small tensor ops, where intra-op threads only add contention: under
pytest-xdist on two cores, two threads per worker made some directories ten times slower.
"""

import os

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


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """A data cache of the test session (``PYRO_DISCRETE_CACHE``), for tests that run the CLI.

    Set for the whole session once requested: binarised MNIST is cached there on first use,
    and every later CLI test, in this process or in the subprocesses it starts, reuses it.
    """
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("PYRO_DISCRETE_CACHE")
    os.environ["PYRO_DISCRETE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PYRO_DISCRETE_CACHE", None)
    else:
        os.environ["PYRO_DISCRETE_CACHE"] = old
