"""The one place that chooses the array library and the default float dtype.

Every compute module writes ``from numpy_amaml.backend import xp`` and calls
``xp.matmul``, ``xp.zeros`` ... ; ``xp`` forwards each attribute to the active
library, so ``set_backend("cupy")`` switches all of them at once.

Selection (first match wins):
  * ``set_backend("numpy" | "cupy")`` / ``set_dtype("float32" | "float64")`` calls;
  * environment variables ``NUMPY_AMAML_BACKEND`` and ``NUMPY_AMAML_DTYPE``;
  * defaults: NumPy and float32 (training). Gradient checks use float64.
"""
import contextlib
import os

import numpy

BACKENDS = ("numpy", "cupy")
DTYPES = {"float32": numpy.float32, "float64": numpy.float64}

_active = {"name": None, "module": None, "dtype": None}


def _import_backend(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "numpy":
        return numpy
    try:
        import cupy
    except ImportError as err:
        raise ImportError(
            "backend 'cupy' was requested but CuPy is not installed; install the "
            "cupy wheel matching your CUDA version (`pip install cupy-cuda12x` or `cupy-cuda13x`) "
            "or use NUMPY_AMAML_BACKEND=numpy") from err
    return cupy


def set_backend(name):
    """Make ``name`` ('numpy' or 'cupy') the array library of every compute module."""
    _active["module"] = _import_backend(name)
    _active["name"] = name
    xp.__dict__.clear()                  # the names xp kept belong to the previous library


def set_dtype(name):
    """Make ``name`` ('float32' or 'float64') the default float dtype."""
    if isinstance(name, type) or isinstance(name, numpy.dtype):
        name = numpy.dtype(name).name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {tuple(DTYPES)}")
    _active["dtype"] = DTYPES[name]


def _from_environment(variable, default, setter, allowed):
    """setter(the environment variable's value, lower case), or a ValueError that names it."""
    value = os.environ.get(variable, default)
    try:
        setter(value.lower())
    except ValueError:
        raise ValueError(f"{variable} must be one of {tuple(allowed)}, got {value!r}") from None


def backend_name():
    if _active["name"] is None:
        _from_environment("NUMPY_AMAML_BACKEND", "numpy", set_backend, BACKENDS)
    return _active["name"]


def array_module():
    """The active array library (the ``numpy`` or ``cupy`` module)."""
    backend_name()
    return _active["module"]


def float_dtype():
    """The active default float dtype (numpy.float32 unless asked otherwise)."""
    if _active["dtype"] is None:
        _from_environment("NUMPY_AMAML_DTYPE", "float32", set_dtype, DTYPES)
    return _active["dtype"]


def asarray(a, dtype=None):
    """Move ``a`` to the active library, as ``dtype`` (default: ``float_dtype()``)."""
    return array_module().asarray(a, dtype=float_dtype() if dtype is None else dtype)


def to_numpy(a):
    """``a``'s values as a NumPy array on the host: ``a.get()`` for an array that has it (a copy
    from a CuPy array; numpy_amaml.op_count's counting arrays count the read), else
    ``numpy.asarray(a)`` (identity for a NumPy array)."""
    return a.get() if hasattr(a, "get") else numpy.asarray(a)


@contextlib.contextmanager
def standing_in(name, module):
    """Within the block, ``module`` serves as the array library and ``name`` as the backend's
    name; afterwards the previous ones return. numpy_amaml.op_count uses it to run NumPy arrays
    that count their operations through the code paths of the CuPy backend."""
    previous = (backend_name(), array_module())
    _active["name"], _active["module"] = name, module
    xp.__dict__.clear()
    try:
        yield
    finally:
        _active["name"], _active["module"] = previous
        xp.__dict__.clear()


class _ArrayModule:
    """Forwards ``xp.name`` to the active library, so a switch reaches every module.

    Each name is looked up once and then kept on the instance, so that ``xp.name`` is a
    plain attribute read (≈ 40 ns instead of ≈ 800 ns: the sinusoid's meta-iteration makes
    a few hundred); ``set_backend`` forgets them."""

    def __getattr__(self, name):         # only for names not yet kept
        value = getattr(array_module(), name)
        self.__dict__[name] = value
        return value

    def __repr__(self):
        return f"<array module: {backend_name()}>"


xp = _ArrayModule()
