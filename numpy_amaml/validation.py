"""Input validation shared by layers, losses and models: clear errors, named problems."""
from numpy_amaml.backend import xp


class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or Inf."""


def check_float_array(a, name, ndim=None, finite=True):
    """Raise TypeError/ValueError unless ``a`` is a real floating array.

    ndim: an int or a tuple of allowed ranks (None: any rank).
    finite: also reject NaN and Inf.
    """
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            raise ValueError(f"{name} must have rank {' or '.join(map(str, allowed))}, "
                             f"got shape {tuple(a.shape)}")
    if finite and not bool(xp.isfinite(a).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf")


def check_params(params, shapes, name="params"):
    """Check a params dict against ``shapes`` (key -> shape without task axis).

    Every array may carry one extra leading task axis, the same B for all of them.
    Returns B, or None when no array has a task axis.
    """
    if not isinstance(params, dict):
        raise TypeError(f"{name} must be a dict of arrays, got {type(params).__name__}")
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"{name} keys do not match the model: missing {missing}, unexpected {extra}")
    task_axes = set()
    for key, shape in shapes.items():
        a = params[key]
        check_float_array(a, f"{name}[{key!r}]", finite=False)     # finiteness: below, all at once
        shape = tuple(shape)
        if tuple(a.shape) == shape:
            task_axes.add(None)
        elif a.ndim == len(shape) + 1 and tuple(a.shape[1:]) == shape:
            task_axes.add(a.shape[0])
        else:
            raise ValueError(f"{name}[{key!r}] has shape {tuple(a.shape)}; expected {shape} "
                             f"or (B,) + {shape} with a leading task axis")
    if len(task_axes) > 1:
        raise ValueError(f"{name} mix task-axis sizes / shared arrays: {sorted(map(str, task_axes))}")
    # One device→host transfer for every array's flag: on a GPU each bool() would wait for the device.
    finite = xp.stack([xp.isfinite(params[key]).all() for key in shapes]).tolist()
    for key, ok in zip(shapes, finite):
        if not ok:
            raise NonFiniteError(f"{name}[{key!r}] contains NaN or Inf")
    return task_axes.pop() if task_axes else None
