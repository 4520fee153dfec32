"""Array operations per meta-iteration: the kernel launches a GPU would make, counted on NumPy.

On CuPy nearly every array operation is one kernel launch (an element-wise ufunc, a reduction,
a cuBLAS product, a copy or a fill), and for MAML's small arrays the launches, not the
arithmetic, set the time. ``counting()`` runs a computation with NumPy arrays of a counting
subclass, on the code paths of the CuPy backend (backend name "cupy": the whole meta-batch in
one chunk, no CPU threads, check_params' single read), and counts one operation for

  * each ufunc call: operators (a * b, a += b, x > 0), xp.maximum, xp.sqrt, ... (matmul
    included), and ufunc reductions (np.add.reduce);
  * each other xp function or array method that writes array data: a new result (einsum,
    a.sum(), a.mean(), concatenate, a copying reshape, fancy indexing, astype, zeros) or an
    in-place write (a[...] = b, a.fill); a result that is a view of an input (reshape,
    swapaxes, broadcast_to, squeeze, slicing) costs nothing, as on the GPU, and neither does
    xp.empty (an allocation);
  * each host array given to xp.asarray (a host→device copy);
and, apart from the operations, each read of array values by the host (float(a), bool(a),
a.item(), a.tolist(), backend.to_numpy(a)): on a GPU the host waits there for the device.
An operation inside a counted one (the ufuncs that einsum may call) is not counted again.
A full reduction gives a 0-d array, as on CuPy, not a NumPy scalar.

The count is the GPU's launch count up to each library's own choices: CuPy may run one
operation as two kernels (a reduction in two passes, a copy to make a matmul operand
contiguous) and cuBLAS may pick several kernels for one product.

Each operation is charged to where it runs: the outermost function of numpy_amaml.layers or
numpy_amaml.losses on the stack (``batchnorm.r_backward``, ``softmax_ce.forward``), else the
innermost numpy_amaml function (``optim.Adam.step``, ``maml.adapt_and_reverse``).
"""
import contextlib
import sys
import types
from collections import Counter

import numpy as np

from numpy_amaml import backend

PACKAGE = "numpy_amaml."
LAYER_PACKAGES = ("numpy_amaml.layers.", "numpy_amaml.losses.")
NOT_CHARGED = ("numpy_amaml.op_count", "numpy_amaml.backend")
ALLOCATIONS = ("empty", "empty_like")                      # no data written: no kernel
TRANSFERS = ("asarray", "array", "ascontiguousarray")      # of host data: a host→device copy
REDUCTIONS = ("sum", "mean", "max", "min", "argmax", "argmin", "any", "all", "prod", "var", "std")
PRODUCTS = ("matmul", "dot", "vdot", "tensordot", "inner")
ELEMENT_WISE = ("where", "clip")
KINDS = ("element-wise", "reduction", "matmul/dot", "copy/fill", "host→device")


class Tally:
    """What one counted computation did: ``operations`` {(where, kind): n} and ``host_reads``
    {where: n}; ``depth`` > 0 while an operation runs (operations inside it are not counted)."""

    def __init__(self):
        self.operations, self.host_reads, self.depth = Counter(), Counter(), 0

    def reset(self):
        self.operations.clear()
        self.host_reads.clear()

    def copy(self):
        """The counts so far, as a Tally of their own."""
        tally = Tally()
        tally.operations.update(self.operations)
        tally.host_reads.update(self.host_reads)
        return tally

    def total(self):
        return sum(self.operations.values())

    def by_place(self):
        """{where: operations}"""
        places = Counter()
        for (where, _), n in self.operations.items():
            places[where] += n
        return places

    def by_kind(self):
        """{kind: operations}"""
        kinds = Counter()
        for (_, kind), n in self.operations.items():
            kinds[kind] += n
        return kinds


_tally = None                  # the Tally of the active counting() block


def _where():
    """The layer or library function that the current operation runs in (module docstring)."""
    frame, innermost, layer = sys._getframe(1), None, None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(PACKAGE) and not module.startswith(NOT_CHARGED):
            code = frame.f_code
            if module.startswith(LAYER_PACKAGES):
                layer = f"{module.rsplit('.', 1)[1]}.{code.co_name}"
            elif innermost is None:
                qualname = getattr(code, "co_qualname", code.co_name).split(".<locals>")[0]
                innermost = f"{module[len(PACKAGE):]}.{qualname}"
        frame = frame.f_back
    return layer or innermost or "outside numpy_amaml"


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, CountingArray) else a


def _counted(value):
    """Arrays (and NumPy scalars, as 0-d arrays) as CountingArrays; tuples and lists alike."""
    if isinstance(value, np.ndarray):
        return value if isinstance(value, CountingArray) else value.view(CountingArray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(CountingArray)
    if isinstance(value, (tuple, list)):
        return type(value)(_counted(v) for v in value)
    return value


def _arrays(args, kwargs):
    """The arrays among the arguments (one level into lists and tuples: concatenate's)."""
    found = []
    for a in list(args) + list(kwargs.values()):
        for b in (a if isinstance(a, (tuple, list)) else (a,)):
            if isinstance(b, np.ndarray):
                found.append(b)
    return found


def _writes_new_data(result, inputs):
    """Whether ``result`` holds newly written data: not a view of one of the inputs."""
    if isinstance(result, (tuple, list)):
        return any(_writes_new_data(r, inputs) for r in result)
    if isinstance(result, np.generic):
        return True
    if not isinstance(result, np.ndarray):
        return False
    return not any(np.may_share_memory(_plain(result), _plain(a)) for a in inputs)


def _run(kind, call, inputs=(), writes=None):
    """call() as one operation of ``kind``: counted (unless inside another counted operation,
    or ``writes`` is False, or, when ``writes`` is None, its result is a view of an input);
    the result comes back as CountingArrays."""
    if _tally is None or _tally.depth:
        return _counted(call())
    _tally.depth += 1
    try:
        result = call()
    finally:
        _tally.depth -= 1
    if _writes_new_data(result, inputs) if writes is None else writes:
        _tally.operations[_where(), kind] += 1
    return _counted(result)


def _ufunc_kind(ufunc, method):
    if method != "__call__":                                    # reduce, accumulate, ...
        return "reduction"
    return "matmul/dot" if ufunc is np.matmul else "element-wise"


def _kind(name, args):
    """The kind of an operation that is not a ufunc, by its name."""
    if name == "einsum":
        return "reduction" if len(args) == 2 else "matmul/dot"        # (subscripts, one operand)
    if name in REDUCTIONS:
        return "reduction"
    if name in PRODUCTS:
        return "matmul/dot"
    return "element-wise" if name in ELEMENT_WISE else "copy/fill"


def _host_read(self):
    if _tally is not None and not _tally.depth:
        _tally.host_reads[_where()] += 1


class CountingArray(np.ndarray):
    """A NumPy array whose operations and host reads go to the active Tally."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = _run(_ufunc_kind(ufunc, method),
                      lambda: getattr(ufunc, method)(*map(_plain, inputs), **kwargs), writes=True)
        if out is not None:                            # in place: hand back the caller's own arrays
            return out[0] if len(out) == 1 else out
        return result

    def __array_function__(self, func, array_types, args, kwargs):
        return _run(_kind(func.__name__, args),
                    lambda: super(CountingArray, self).__array_function__(func, array_types, args, kwargs),
                    _arrays(args, kwargs))

    def __getitem__(self, index):
        value = np.ndarray.__getitem__(self, index)
        if isinstance(value, np.generic):              # one element: on CuPy a 0-d view, no kernel
            return _counted(value)
        return _run("copy/fill", lambda: value, [self])  # a copy for fancy indexing

    def get(self):
        """The values on the host (backend.to_numpy calls this, as for a CuPy array)."""
        _host_read(self)
        return self.view(np.ndarray)


def _method(name, writes=None):
    plain = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        return _run(_kind(name, args), lambda: plain(self, *args, **kwargs), [self], writes)
    method.__name__ = name
    return method


def _reading(name):
    plain = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        _host_read(self)
        return plain(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in REDUCTIONS + ("astype", "copy", "reshape", "ravel", "flatten", "repeat", "take", "dot",
                           "clip", "cumsum"):
    setattr(CountingArray, _name, _method(_name))
for _name in ("__setitem__", "fill"):
    setattr(CountingArray, _name, _method(_name, writes=True))
for _name in ("__float__", "__int__", "__bool__", "__index__", "item", "tolist"):
    setattr(CountingArray, _name, _reading(_name))


class CountingModule:
    """A stand-in for the ``numpy`` module (or one of its submodules): each function call is
    one operation, and array results come back as CountingArrays."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return CountingModule(value)
        if isinstance(value, type) or not callable(value):         # dtypes, errstate, constants
            return value

        def function(*args, **kwargs):
            inputs = _arrays(args, kwargs)
            if isinstance(value, np.ufunc):
                writes, kind = True, _ufunc_kind(value, "__call__")
            elif name in ALLOCATIONS:
                writes, kind = False, "copy/fill"
            elif name in TRANSFERS and not any(isinstance(a, CountingArray) for a in inputs):
                writes, kind = True, "host→device"
            else:
                writes, kind = None, _kind(name, args)
            return _run(kind, lambda: value(*args, **kwargs), inputs, writes)
        self.__dict__[name] = function
        return function


@contextlib.contextmanager
def counting():
    """Count the array operations of the block (module docstring): yields the Tally. Arrays
    made by the backend inside the block (backend.asarray, xp.zeros, ...) count; make the
    problem inside it."""
    global _tally
    if _tally is not None:
        raise RuntimeError("op_count.counting() blocks do not nest")
    _tally = Tally()
    try:
        with backend.standing_in("cupy", CountingModule(np)):
            yield _tally
    finally:
        _tally = None
