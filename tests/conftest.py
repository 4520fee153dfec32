"""Shared fixtures. Gradient checks run in float64 (see numpy_amaml/gradcheck.py)."""
import pytest

from numpy_amaml import backend, omniglot


@pytest.fixture
def float64():
    """Make float64 the default dtype for one test, then restore the previous one."""
    previous = backend.float_dtype()
    backend.set_dtype("float64")
    yield
    backend.set_dtype(previous)


@pytest.fixture
def tiny_omniglot(tmp_path, monkeypatch):
    """A 12-character Omniglot in the official layout (tests/test_omniglot_data.py), in
    tmp_path/omniglot; the decoded cache goes to tmp_path/cache, never to <repo>/data."""
    from tests.test_omniglot_data import tiny_entries, write_sums, write_zip
    data = tmp_path / "omniglot"
    data.mkdir()
    for set_name in omniglot.SETS:
        write_zip(data / f"images_{set_name}.zip", tiny_entries(set_name))
    write_sums(data)
    monkeypatch.setattr(omniglot, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    return data
