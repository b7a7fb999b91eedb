import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Point the data cache at a per-session directory so tests never touch ~/.cache."""
    old = os.environ.get("PYRO_DISCRETE_CACHE")
    path = tmp_path_factory.mktemp("pyro_discrete_cache")
    os.environ["PYRO_DISCRETE_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["PYRO_DISCRETE_CACHE"]
    else:
        os.environ["PYRO_DISCRETE_CACHE"] = old


@pytest.fixture(autouse=True)
def single_thread():
    """These tests run tiny tensor ops, where intra-op threads only add contention
    (several times slower when pytest-xdist workers share two cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
