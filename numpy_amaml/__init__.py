"""numpy_amaml: MAML and Alpha MAML in pure NumPy, every derivative written by hand."""
from numpy_amaml.backend import set_backend, set_dtype  # noqa: F401

__version__ = "0.1.0"
