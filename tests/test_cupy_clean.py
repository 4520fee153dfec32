"""No NumPy function touches the backend's arrays: a static check, so that CPU-only CI catches
what would break on CuPy.

On CuPy a NumPy function given a device array fails ("Implicit conversion to a NumPy array
is not allowed"); a NumPy result mixed into device arrays fails the same way. Compute code
therefore calls ``xp`` (numpy_amaml.backend), never ``numpy``. This test reads every module
of numpy_amaml/ and reports, with file:line, each use of the ``numpy`` module
(``np.name``, ``numpy.name``, ``from numpy import name``) that is neither

  * a name that touches no array data (HOST_NAMES: dtypes and scalar types, constants,
    NumPy's random generators for host-side seeds and draws, the error-state context), nor
  * inside a scope of HOST_SCOPES: a module or function whose arrays are host arrays by
    construction (data loading and sampling before the one transfer per meta-batch, plots,
    files, comparisons of ``to_numpy`` copies), each with the reason.

(tests/test_backend.py checks the imports: only some modules may import numpy at all.)
"""
import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "numpy_amaml"

# numpy names that never touch array data, wherever they are used
HOST_NAMES = {
    **dict.fromkeys(("dtype", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                     "bool_", "integer", "floating", "number", "iinfo", "finfo"), "a dtype or scalar type"),
    **dict.fromkeys(("pi", "e", "nan", "inf", "newaxis"), "a constant"),
    "random": "host-side random generators and seed sequences: seeds and draws on the host, which "
              "backend.asarray then moves to the device",
    "errstate": "NumPy's floating-point error state, a context manager: it touches no array (CuPy has none)",
    "__version__": "the version string",
}

# "module" (path under numpy_amaml/) or "module:function" (a qualified name: Class.method,
# outer.inner; a nested function is inside its outer one's scope) -> why its arrays are host arrays
HOST_SCOPES = {
    "backend.py": "the one module that picks the array library",
    "op_count.py": "NumPy instrumentation: counts the operations of NumPy arrays (it never runs on CuPy)",
    "omniglot.py": "data loading: PNG decoding, resizing and the .npz cache, on the host",
    "omniglot_sampler.py": "task sampling on the host; each meta-batch moves to the device once "
                           "(evaluation.to_task_batch)",
    "sinusoid.py:sine": "the targets of host-drawn inputs, before backend.asarray",
    "plots.py": "matplotlib figures from logged numbers and to_numpy copies",
    "sweep_plots.py": "matplotlib figures from the sweep's CSV numbers",
    "checkpoint.py:save_checkpoint": "writes to_numpy copies with np.savez",
    "checkpoint.py:load_checkpoint": "reads the .npz file on the host, then backend.asarray",
    "architectures.py:sinusoid_mlp.init": "initial draws on the host; model.init_params moves them",
    "architectures.py:omniglot_cnn.init": "initial draws on the host; model.init_params moves them",
    "gradcheck.py:rel_error": "compares to_numpy copies in float64 (np.shape reads only .shape)",
    "evaluation.py:mean_ci": "confidence intervals of per-task numbers already on the host",
    "evaluation.py:measure_adaptation": "joins the metric's per-task host values (to_numpy copies)",
    "evaluation.py:evaluate_omniglot": "joins the sampler's host arrays before to_task_batch",
    "tasks.py:OmniglotTask.validate": "joins per-task accuracies, host values from query_accuracy",
    "commands/gradcheck.py": "the gradient-check table's inputs: host draws before backend.asarray, "
                             "and kink margins computed on to_numpy copies",
    "commands/bench.py:make_problem": "the benchmark's synthetic tasks, drawn on the host before backend.asarray",
}


def numpy_uses(tree):
    """[(lineno, name, scope)] for every use of the numpy module: ``np.name`` (name: the
    first attribute) and ``from numpy[.sub] import name``; scope is the qualified name of
    the enclosing function or class ("" at module level)."""
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name == "numpy"}
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id in aliases:
                found.append((child.lineno, child.attr, scope))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 \
                    and (child.module or "").split(".")[0] == "numpy":
                found.extend((child.lineno, alias.name, scope) for alias in child.names)
            visit(child, inner)

    visit(tree, "")
    return found


def in_host_scope(rel, scope):
    return rel in HOST_SCOPES or any(
        key == f"{rel}:{scope}" or f"{rel}:{scope}".startswith(key + ".") for key in HOST_SCOPES)


def library_modules():
    return {p.relative_to(PACKAGE_DIR).as_posix(): ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
            for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_the_scanner_sees_aliases_from_imports_and_scopes():
    tree = ast.parse("import numpy as np\nimport numpy\nfrom numpy.linalg import norm\n"
                     "class A:\n    def f(self, x):\n        return np.sqrt(x) + numpy.float32(1)\n"
                     "def g():\n    def h():\n        return np.random.default_rng(0)\n")
    assert numpy_uses(tree) == [(3, "norm", ""), (6, "sqrt", "A.f"), (6, "float32", "A.f"), (9, "random", "g.h")]
    assert in_host_scope("architectures.py", "omniglot_cnn.init.draw")
    assert not in_host_scope("architectures.py", "omniglot_cnn")
    assert not in_host_scope("evaluation.py", "mean_ci_other")


def test_no_numpy_function_touches_the_backends_arrays():
    modules = library_modules()
    assert {"layers/batchnorm.py", "maml.py", "curvature.py"} <= set(modules)
    offenders = [f"numpy_amaml/{rel}:{lineno}: np.{name} in {scope or 'the module body'}"
                 for rel, tree in modules.items() for lineno, name, scope in numpy_uses(tree)
                 if name not in HOST_NAMES and not in_host_scope(rel, scope)]
    assert not offenders, ("NumPy calls outside the host-side scopes (use xp from numpy_amaml.backend, or, "
                           "for host-only code, add the scope to HOST_SCOPES with the reason):\n"
                           + "\n".join(offenders))


def test_every_host_scope_exists_and_uses_numpy():
    """No stale exception: each HOST_SCOPES entry names a module (and function) that is there
    and still uses numpy beyond HOST_NAMES."""
    modules = library_modules()
    stale = []
    for key in HOST_SCOPES:
        rel, _, function = key.partition(":")
        uses = [scope for _, name, scope in numpy_uses(modules[rel])
                if name not in HOST_NAMES] if rel in modules else []
        if not any(not function or scope == function or scope.startswith(function + ".") for scope in uses):
            stale.append(key)
    assert not stale, f"HOST_SCOPES entries with no numpy use to excuse (remove them): {stale}"
