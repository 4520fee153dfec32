"""Shared fixtures. Gradient checks run in float64 (see numpy_amaml/gradcheck.py)."""
import pytest

from numpy_amaml import backend


@pytest.fixture
def float64():
    """Make float64 the default dtype for one test, then restore the previous one."""
    previous = backend.float_dtype()
    backend.set_dtype("float64")
    yield
    backend.set_dtype(previous)
