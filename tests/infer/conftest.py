"""Double precision for the estimator tests: z-tests against exact gradients."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _double_precision():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)
