"""numpy_amaml: MAML and Alpha MAML in pure NumPy, every derivative written by hand.

``set_backend`` and ``set_dtype`` (numpy_amaml.backend) load on first use, so that importing the
package alone does not import NumPy: ``python -m numpy_amaml`` can then end a Ctrl-C that
arrives while NumPy loads in one line (numpy_amaml/__main__.py)."""
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("set_backend", "set_dtype"):
        from numpy_amaml import backend
        return getattr(backend, name)
    raise AttributeError(f"module 'numpy_amaml' has no attribute {name!r}")
