"""Input validation shared by layers, losses and models: clear errors, named problems."""
from numpy_amaml.backend import backend_name, xp


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
    (Called on every sweep of the model, so written to make few calls: for the sinusoid
    MLP it is a noticeable part of a meta-iteration.)
    """
    if not isinstance(params, dict):
        raise TypeError(f"{name} must be a dict of arrays, got {type(params).__name__}")
    if params.keys() != shapes.keys():
        missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
        raise ValueError(f"{name} keys do not match the model: missing {missing}, unexpected {extra}")
    task_axes = set()
    for key, shape in shapes.items():
        a = params[key]
        if getattr(getattr(a, "dtype", None), "kind", None) != "f":
            check_float_array(a, f"{name}[{key!r}]", finite=False)     # raises, naming the problem
        shape = tuple(shape)
        if a.shape == shape:
            task_axes.add(None)
        elif a.shape[1:] == shape and a.ndim == len(shape) + 1:
            task_axes.add(a.shape[0])
        else:
            raise ValueError(f"{name}[{key!r}] has shape {tuple(a.shape)}; expected {shape} "
                             f"or (B,) + {shape} with a leading task axis")
    if len(task_axes) > 1:
        raise ValueError(f"{name} mix task-axis sizes / shared arrays: {sorted(map(str, task_axes))}")
    finite = [xp.isfinite(params[key]).all() for key in shapes]
    if backend_name() != "numpy":     # one device→host transfer: on a GPU each bool() would wait
        finite = xp.stack(finite).tolist()
    for key, ok in zip(shapes, finite):
        if not ok:
            raise NonFiniteError(f"{name}[{key!r}] contains NaN or Inf")
    return task_axes.pop() if task_axes else None
