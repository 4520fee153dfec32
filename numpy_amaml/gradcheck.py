"""Gradient checking by central finite differences, for students and for the tests.

Why central differences: (f(x+h) − f(x−h)) / 2h has error O(h²) instead of the
O(h) of a one-sided difference. Why float64: with h = 1e-5 the rounding error is
about eps/h ≈ 1e-11 in float64, but ≈ 1e-2 in float32 — float32 cannot tell a
right derivative from a slightly wrong one. Run every check in float64.

``rel_error(a, b) = ‖a − b‖ / max(‖a‖ + ‖b‖, tiny)`` over all entries: 1e-8 is a
correct derivative, 1e-6 is the bar the tests assert, 1e-2 is a bug.

Every ``check_*`` function returns numbers (a dict name -> rel_error); it prints
nothing. ``h`` is the finite-difference step. The arrays a check differentiates must be
float64: integer arrays (whose nudged copies stay integers, so every difference is 0) and
float32 arrays (whose differences are 1e-2 wrong) are refused with a TypeError that says so.
"""
import numpy as np

from numpy_amaml.backend import to_numpy, xp
from numpy_amaml.params import dot, norm as params_norm


def rel_error(a, b):
    """Relative error between two arrays (or dicts of arrays), as one float."""
    if isinstance(a, dict):
        if set(a) != set(b):
            raise ValueError(f"rel_error: keys differ: {sorted(a)} vs {sorted(b)}")
        for k in a:
            if np.shape(a[k]) != np.shape(b[k]):
                raise ValueError(f"rel_error: shapes differ at {k!r}: {np.shape(a[k])} vs {np.shape(b[k])}")
        if not a:
            return 0.0
        a = np.concatenate([to_numpy(a[k]).ravel() for k in sorted(a)])
        b = np.concatenate([to_numpy(b[k]).ravel() for k in sorted(b)])
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ: {a.shape} vs {b.shape}")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def require_float64(**arrays):
    """Raise TypeError unless every array (or dict of arrays) given is float64, naming it."""
    for name, value in arrays.items():
        for key, a in (value.items() if isinstance(value, dict) else [(None, value)]):
            dtype = getattr(a, "dtype", None)
            if dtype != np.float64:
                where = f"{name}[{key!r}]" if key is not None else name
                raise TypeError(f"gradient checks need float64 arrays, got {dtype or type(a).__name__} for "
                                f"{where}: finite differences of integers are 0, and in float32 they are "
                                f"about 1e-2 wrong (numpy_amaml.set_dtype('float64') first)")


def numerical_gradient(f, x, h=1e-5):
    """∂f/∂x by central differences; f() -> scalar reads ``x``, which is nudged in place.

    x: a float64 array (restored on return). Returns an array shaped like x.
    """
    require_float64(x=x)
    if not x.flags["C_CONTIGUOUS"]:
        raise ValueError("numerical_gradient needs a C-contiguous array it can nudge in place")
    grad = xp.zeros_like(x)
    flat_x, flat_g = x.reshape(-1), grad.reshape(-1)    # views of x and grad
    for i in range(flat_x.size):
        old = float(flat_x[i])
        flat_x[i] = old + h
        f_plus = float(f())
        flat_x[i] = old - h
        f_minus = float(f())
        flat_x[i] = old
        flat_g[i] = (f_plus - f_minus) / (2 * h)
    return grad


def numerical_gradient_dict(f, params, h=1e-5):
    """{key: ∂f/∂params[key]} by central differences; f() reads ``params`` (nudged in place)."""
    return {k: numerical_gradient(f, params[k], h) for k in params}


def directional_derivative(f, x, direction, h=1e-5):
    """(f(x + h·d) − f(x − h·d)) / 2h for arrays or dicts of arrays; f may return arrays."""
    def shift(s):
        if isinstance(x, dict):
            return {k: x[k] + s * direction[k] for k in x}
        return x + s * direction
    plus, minus = f(shift(h)), f(shift(-h))
    if isinstance(plus, tuple):       # e.g. a layer's backward: (dx, dparams)
        return tuple(_central_difference(p, m, h) for p, m in zip(plus, minus))
    return _central_difference(plus, minus, h)


def _central_difference(plus, minus, h):
    """(plus − minus) / 2h for an array or a dict of arrays."""
    if isinstance(plus, dict):
        return {k: (plus[k] - minus[k]) / (2 * h) for k in plus}
    return (plus - minus) / (2 * h)


def _random_like(a, rng):
    return xp.asarray(rng.standard_normal(a.shape))


def check_layer(layer, params, x, config=None, seed=0, h=1e-5):
    """Check all four functions of ``layer`` (a module of numpy_amaml.layers) at (params, x).

    params: dict of float64 arrays; x: float64 array; config: keyword args of forward.
    Returns {name: rel_error} for
      backward:<x|param>     backward vs finite differences of ⟨forward, dy⟩
      r_forward              Ry vs directional finite difference of forward
      r_backward:<x|param>   R{dx}, R{dparam} vs directional finite difference of backward
    """
    require_float64(params=params, x=x)
    config = config or {}
    rng = np.random.default_rng(seed)
    y, cache = layer.forward(params, x, **config)
    dy = _random_like(y, rng)
    errors = {}

    # backward: the gradient of s(x, params) = ⟨forward(params, x), dy⟩
    dx, dparams = layer.backward(dy, cache)
    x_work = x.copy()
    p_work = {k: v.copy() for k, v in params.items()}

    def s():
        return float((layer.forward(p_work, x_work, **config)[0] * dy).sum())
    errors["backward:x"] = rel_error(dx, numerical_gradient(s, x_work, h))
    for k in params:
        errors[f"backward:{k}"] = rel_error(dparams[k], numerical_gradient(s, p_work[k], h))

    # r_forward: the directional derivative of forward along (Rx, Rparams)
    Rx = _random_like(x, rng)
    Rparams = {k: _random_like(v, rng) for k, v in params.items()}
    Ry, rcache = layer.r_forward(params, x, Rparams, Rx, cache)
    point = {"x": x, **params}
    direction = {"x": Rx, **Rparams}

    def forward_at(p):
        return layer.forward({k: p[k] for k in params}, p["x"], **config)[0]
    errors["r_forward"] = rel_error(Ry, directional_derivative(forward_at, point, direction, h))

    # r_backward: the directional derivative of backward along (Rx, Rparams) while the
    # incoming gradient moves too, dy(t) = dy + t·Rdy
    Rdy = _random_like(y, rng)
    Rdx, Rdparams = layer.r_backward(dy, Rdy, cache, rcache)
    point["t"], direction["t"] = xp.zeros(()), xp.ones(())

    def backward_at(p):
        cache_p = layer.forward({k: p[k] for k in params}, p["x"], **config)[1]
        return layer.backward(dy + p["t"] * Rdy, cache_p)
    num_dx, num_dparams = directional_derivative(backward_at, point, direction, h)
    errors["r_backward:x"] = rel_error(Rdx, num_dx)
    for k in params:
        errors[f"r_backward:{k}"] = rel_error(Rdparams[k], num_dparams[k])
    return errors


def check_loss(loss, pred, target, seed=0, h=1e-5):
    """Check a loss module (numpy_amaml.losses) at (pred, target).

    Returns {"backward": ..., "r_backward": ...}: the gradient of Σ_tasks loss vs finite
    differences, and R{dpred} vs the directional finite difference of that gradient.
    """
    require_float64(pred=pred)
    rng = np.random.default_rng(seed)
    _, cache = loss.forward(pred, target)
    work = pred.copy()
    numeric = numerical_gradient(lambda: float(loss.forward(work, target)[0].sum()), work, h)
    errors = {"backward": rel_error(loss.backward(cache), numeric)}
    Rpred = _random_like(pred, rng)
    numeric_R = directional_derivative(lambda p: loss.backward(loss.forward(p, target)[1]), pred, Rpred, h)
    errors["r_backward"] = rel_error(loss.r_backward(Rpred, cache), numeric_R)
    return errors


def check_model_gradient(model, params, x, y, h=1e-5):
    """rel_error of model.loss_and_grad against finite differences of Σ_tasks loss,
    entry by entry (use a small model: one loss evaluation per entry, twice)."""
    require_float64(params=params, x=x)
    _, grads = model.loss_and_grad(params, x, y)
    work = {k: v.copy() for k, v in params.items()}
    numeric = numerical_gradient_dict(lambda: float(model.loss(work, x, y).sum()), work, h)
    return rel_error(grads, numeric)


def _random_direction(params, rng):
    """A random direction like ``params``, of unit norm over all entries."""
    d = {k: _random_like(a, rng) for k, a in params.items()}
    norm = params_norm(d)
    return {k: a / norm for k, a in d.items()}


def check_model_hvp(model, params, x, y, v=None, seed=0, h=1e-5):
    """Check model.hvp (exact R-operator H v) two ways; returns
      {"hvp": rel_error(H v, ‖v‖ (∇L(θ + h v̂) − ∇L(θ − h v̂)) / 2h),   v̂ = v / ‖v‖,
       "symmetry": |⟨u, H v⟩ − ⟨v, H u⟩| / (|⟨u, H v⟩| + |⟨v, H u⟩|)}.
    v (default: random, unit norm) and u (random, unit norm) are dicts like params.
    The difference steps along the unit vector v̂, so h is the distance moved in
    parameter space whatever the size of v or of the model (a step h‖v‖ of a big v
    would often straddle a ReLU or max-pool kink, where the gradient jumps)."""
    require_float64(params=params, x=x)
    rng = np.random.default_rng(seed)
    if v is None:
        v = _random_direction(params, rng)
    u = _random_direction(params, rng)
    Hv, Hu = model.hvp(params, x, y, v), model.hvp(params, x, y, u)
    norm = params_norm(v)
    if norm == 0.0:
        numeric = {k: xp.zeros_like(a) for k, a in Hv.items()}
    else:
        v_hat = {k: a / norm for k, a in v.items()}
        numeric = directional_derivative(lambda p: model.loss_and_grad(p, x, y)[1], params, v_hat, h)
        numeric = {k: norm * a for k, a in numeric.items()}
    uHv, vHu = dot(u, Hv), dot(v, Hu)
    return {"hvp": rel_error(Hv, numeric),
            "symmetry": abs(uHv - vHu) / max(abs(uHv) + abs(vHu), 1e-300)}
