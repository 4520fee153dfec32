"""The backend: one place chooses the array library and the float dtype (docs/method.md §8).

Also a static check that no compute module imports an array library directly: the
layers, the losses, the model sweeps and the MAML code must all go through
``numpy_amaml.backend.xp`` so that ``set_backend("cupy")`` reaches every one of them.
"""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from numpy_amaml import backend

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "numpy_amaml"

# Modules (paths relative to numpy_amaml/) that may import numpy/cupy directly, and why.
# Every other module, in particular layers/*, losses/*, maml.py, alpha_maml.py and optim.py, must not.
ARRAY_IMPORT_ALLOWED = {
    "backend.py": "it is the one place that picks the array library",
    "gradcheck.py": "finite-difference comparisons (rel_error, random directions) run on the host",
    "architectures.py": "initialisation draws use a numpy Generator on the host, then backend.asarray",
    "model.py": "init_params seeds a numpy Generator for the builder's host-side draws",
    "cli.py": "command-line front end, no compute",
    "checkpoint.py": "file IO: parameters and optimizer state saved/loaded as .npz on the host",
    "omniglot.py": "data loading: PNG decoding, resizing and the .npz cache on the host",
    "omniglot_sampler.py": "task sampling on the host; batches move to the device once each",
    "sinusoid.py": "data generation: task sampling with a numpy Generator on the host",
    "plots.py": "plotting: matplotlib needs host numpy arrays",
    "sweep_plots.py": "plotting: matplotlib needs host numpy arrays",
    "tasks.py": "seed streams (numpy SeedSequence) and host-side accuracy means",
    "evaluation.py": "confidence intervals over per-task results on the host",
    "training.py": "training driver: numpy error state around the loop",
    "curvature.py": "the random start vector is drawn by a numpy Generator on the host, and the result "
                    "returned as a float64 host array; the power iteration runs on the backend",
    "memory.py": "the itemsize of the config's dtype (np.dtype): no arrays",
    "op_count.py": "NumPy instrumentation: counts the operations of NumPy arrays for bench --count-ops",
    "commands/gradcheck.py": "host-side random test inputs for the gradient-check table",
    "commands/bench.py": "benchmark script: timing tables on the host",
}
# Allowed modules that may import numpy only inside the named function (not at module level).
ARRAY_IMPORT_ONLY_INSIDE = {"model.py": "init_params"}
ARRAY_LIBRARIES = ("numpy", "cupy")


@pytest.fixture
def fresh_backend(monkeypatch):
    """Forget the chosen backend/dtype so environment variables are read again;
    monkeypatch restores the previous state (and environment) after the test."""
    for key in ("name", "module", "dtype"):
        monkeypatch.setitem(backend._active, key, None)
    monkeypatch.delenv("NUMPY_AMAML_BACKEND", raising=False)
    monkeypatch.delenv("NUMPY_AMAML_DTYPE", raising=False)
    return monkeypatch


# ---- selection and defaults ----------------------------------------------------------

def test_defaults_are_numpy_and_float32(fresh_backend):
    assert backend.backend_name() == "numpy"
    assert backend.array_module() is np
    assert backend.float_dtype() is np.float32
    a = backend.asarray([1, 2, 3])
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert backend.xp.zeros(2).__class__ is np.ndarray
    assert "numpy" in repr(backend.xp)


def test_set_dtype_float64_then_restore(fresh_backend):
    backend.set_dtype("float64")
    assert backend.float_dtype() is np.float64
    assert backend.asarray([1.0]).dtype == np.float64
    backend.set_dtype(np.float32)          # numpy types and dtypes are accepted too
    assert backend.float_dtype() is np.float32
    backend.set_dtype(np.dtype("float64"))
    assert backend.float_dtype() is np.float64
    backend.set_dtype("float32")
    assert backend.asarray([1.0]).dtype == np.float32


def test_asarray_explicit_dtype_wins(fresh_backend):
    assert backend.asarray([1, 2], dtype=np.int64).dtype == np.int64
    assert backend.asarray([1.0], dtype=np.float64).dtype == np.float64


def test_to_numpy_returns_host_array():
    a = backend.asarray([1.5, 2.5])
    out = backend.to_numpy(a)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [1.5, 2.5])


def test_environment_variables_are_read(fresh_backend):
    fresh_backend.setenv("NUMPY_AMAML_BACKEND", "NumPy")     # case-insensitive
    fresh_backend.setenv("NUMPY_AMAML_DTYPE", "float64")
    assert backend.backend_name() == "numpy"
    assert backend.float_dtype() is np.float64
    assert backend.asarray([1]).dtype == np.float64


def test_explicit_call_beats_environment(fresh_backend):
    fresh_backend.setenv("NUMPY_AMAML_DTYPE", "float64")
    backend.set_dtype("float32")
    assert backend.float_dtype() is np.float32


def test_environment_variables_in_a_fresh_interpreter():
    """The same, end to end: a new Python process that only sees the environment."""
    env = dict(os.environ, NUMPY_AMAML_BACKEND="numpy", NUMPY_AMAML_DTYPE="float64",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    code = ("from numpy_amaml import backend\n"
            "print(backend.backend_name(), backend.asarray([1.0]).dtype)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["numpy", "float64"]


def test_unknown_backend_from_environment(fresh_backend):
    fresh_backend.setenv("NUMPY_AMAML_BACKEND", "jax")
    with pytest.raises(ValueError, match="NUMPY_AMAML_BACKEND must be one of .*, got 'jax'"):
        backend.array_module()


# ---- errors ------------------------------------------------------------------------

def test_unknown_backend_is_a_value_error_naming_it(fresh_backend):
    with pytest.raises(ValueError, match=r"unknown backend 'torch'.*numpy.*cupy"):
        backend.set_backend("torch")
    assert backend.backend_name() == "numpy"      # the failed call changed nothing


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cupy_missing_gives_clear_import_error(fresh_backend):
    with pytest.raises(ImportError, match=r"backend 'cupy' was requested but CuPy is not installed"):
        backend.set_backend("cupy")
    assert backend.backend_name() == "numpy"      # still usable afterwards
    fresh_backend.setitem(backend._active, "name", None)
    fresh_backend.setenv("NUMPY_AMAML_BACKEND", "cupy")
    with pytest.raises(ImportError, match="pip install cupy"):
        backend.array_module()


@pytest.mark.parametrize("bad", ["float16", "double", "int32", np.int64])
def test_unknown_dtype_is_a_value_error(fresh_backend, bad):
    with pytest.raises(ValueError, match="unknown dtype"):
        backend.set_dtype(bad)
    assert backend.float_dtype() is np.float32    # unchanged


# ---- no compute module imports an array library ----------------------------------------

def _array_imports(tree):
    """[(lineno, library, enclosing function or None)] for every numpy/cupy import."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top in ARRAY_LIBRARIES:
                    found.append((child.lineno, top, function))
            visit(child, inner)

    visit(tree, None)
    return found


def _package_modules():
    return sorted(p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py"))


def test_import_scanner_sees_nested_and_aliased_imports():
    tree = ast.parse("import os\nimport numpy as np\ndef f():\n    from cupy.linalg import norm\n")
    assert _array_imports(tree) == [(2, "numpy", None), (4, "cupy", "f")]


def test_only_allow_listed_modules_import_an_array_library():
    modules = _package_modules()
    assert "layers/linear.py" in modules and "backend.py" in modules
    offenders = []
    for rel in modules:
        tree = ast.parse((PACKAGE_DIR / rel).read_text(encoding="utf-8"), filename=rel)
        for lineno, lib, function in _array_imports(tree):
            if rel not in ARRAY_IMPORT_ALLOWED:
                offenders.append(f"numpy_amaml/{rel}:{lineno} imports {lib}; compute modules must "
                                 f"use `from numpy_amaml.backend import xp`")
            elif rel in ARRAY_IMPORT_ONLY_INSIDE and function != ARRAY_IMPORT_ONLY_INSIDE[rel]:
                offenders.append(f"numpy_amaml/{rel}:{lineno} imports {lib} outside "
                                 f"{ARRAY_IMPORT_ONLY_INSIDE[rel]}()")
    assert not offenders, "direct array-library imports:\n" + "\n".join(offenders)


def test_compute_modules_are_not_allow_listed():
    compute = [rel for rel in ARRAY_IMPORT_ALLOWED
               if rel.startswith(("layers/", "losses/")) or rel in ("maml.py", "alpha_maml.py", "optim.py", "validation.py",
                                                                  "params.py")]
    assert compute == []
