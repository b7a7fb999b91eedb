import os

import pytest


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
