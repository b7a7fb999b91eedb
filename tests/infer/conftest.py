"""Double precision and one thread for the estimator tests (deterministic z-tests)."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _double_precision_single_thread():
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    pyro.clear_param_store()
