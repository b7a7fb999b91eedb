import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def single_thread():
    """These tests run tiny tensor ops, where intra-op threads only add contention
    (several times slower when pytest-xdist workers share two cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
