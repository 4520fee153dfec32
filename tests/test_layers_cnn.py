"""The CNN layers (conv2d, conv2d_naive, batchnorm, maxpool, meanpool, flatten) and the
Omniglot CNN: every derivative against finite differences in float64 (≤ 1e-6), the fast
convolution against the naive one, and task batches against a loop over tasks."""
import itertools
import types

import numpy as np
import pytest

from numpy_amaml import backend
from numpy_amaml.backend import xp
from numpy_amaml.gradcheck import check_layer, check_model_gradient, check_model_hvp, rel_error
from numpy_amaml.layers import batchnorm, conv2d, conv2d_naive, flatten, maxpool, meanpool
from numpy_amaml.architectures import omniglot_cnn

TOL = 1e-6


pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


def randn(rng, *shape):
    return xp.asarray(rng.standard_normal(shape))


def conv_case(rng, B, N, H, W, C_in, C_out):
    """x and params for a convolution; B = None: no task axis."""
    lead = () if B is None else (B,)
    x = randn(rng, *lead, N, H, W, C_in)
    return x, {"W": randn(rng, *lead, 3, 3, C_in, C_out), "b": randn(rng, *lead, C_out)}


def assert_checked(errors):
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst}: rel_error {errors[worst]:.2e} > {TOL} ({errors})"


def all_four(layer, params, x, Rparams, Rx, dy, Rdy, config=None):
    """(y, dx, dparams, Ry, Rdx, Rdparams) from the four functions of ``layer``."""
    y, cache = layer.forward(params, x, **(config or {}))
    dx, dparams = layer.backward(dy, cache)
    Ry, rcache = layer.r_forward(params, x, Rparams, Rx, cache)
    Rdx, Rdparams = layer.r_backward(dy, Rdy, cache, rcache)
    return y, dx, dparams, Ry, Rdx, Rdparams


def assert_same(a, b, tol):
    """Two results of all_four agree to a relative ``tol``."""
    for name, u, v in zip(("y", "dx", "dparams", "Ry", "Rdx", "Rdparams"), a, b):
        err = rel_error(u, v)
        assert err <= tol, f"{name}: rel_error {err:.2e} > {tol}"


# ---- convolution -------------------------------------------------------------------

CONV_CASES = [   # (B, N, H, W, C_in, C_out, stride)
    (None, 2, 5, 4, 2, 3, 1),
    (None, 2, 5, 5, 2, 2, 2),     # odd sizes, stride 2
    (2, 2, 4, 6, 1, 2, 2),        # even sizes, stride 2, task axis
    (2, 1, 3, 5, 2, 2, 1),
    (3, 2, 1, 2, 2, 1, 2),        # 1×2 image
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case):
    *shape, stride = case
    rng = np.random.default_rng(sum(shape[1:]) + stride)
    x, params = conv_case(rng, *shape)
    assert_checked(check_layer(conv2d, params, x, {"stride": stride}, seed=1))


@pytest.mark.parametrize("case", [(None, 2, 4, 3, 2, 2, 1), (2, 1, 5, 4, 1, 2, 2), (2, 1, 3, 3, 2, 1, 1)])
def test_conv2d_naive_gradcheck(case):
    *shape, stride = case
    rng = np.random.default_rng(10 + stride)
    x, params = conv_case(rng, *shape)
    assert_checked(check_layer(conv2d_naive, params, x, {"stride": stride}, seed=2))


@pytest.mark.parametrize("case", CONV_CASES + [(2, 3, 7, 6, 3, 4, 2), (None, 3, 6, 7, 4, 3, 1)])
def test_conv2d_fast_equals_naive(case):
    *shape, stride = case
    rng = np.random.default_rng(3)
    x, params = conv_case(rng, *shape)
    Rx, Rparams = conv_case(rng, *shape)
    y, _ = conv2d.forward(params, x, stride=stride)
    dy, Rdy = randn(rng, *y.shape), randn(rng, *y.shape)
    H_out = (shape[2] + 2 - 3) // stride + 1
    assert y.shape[-3] == H_out
    args = (params, x, Rparams, Rx, dy, Rdy, {"stride": stride})
    assert_same(all_four(conv2d, *args), all_four(conv2d_naive, *args), 1e-12)


def test_conv2d_rx_none_matches_zero_tangent():
    rng = np.random.default_rng(4)
    x, params = conv_case(rng, 2, 2, 5, 5, 2, 3)
    _, Rparams = conv_case(rng, 2, 2, 5, 5, 2, 3)
    for layer in (conv2d, conv2d_naive):
        y, cache = layer.forward(params, x, stride=2)
        dy, Rdy = randn(rng, *y.shape), randn(rng, *y.shape)
        Ry0, rc0 = layer.r_forward(params, x, Rparams, None, cache)
        Ry1, rc1 = layer.r_forward(params, x, Rparams, xp.zeros_like(x), cache)
        assert rel_error(Ry0, Ry1) == 0.0
        assert rel_error(layer.r_backward(dy, Rdy, cache, rc0)[1], layer.r_backward(dy, Rdy, cache, rc1)[1]) == 0.0


def test_conv2d_bad_input():
    rng = np.random.default_rng(5)
    x, params = conv_case(rng, None, 2, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="stride"):
        conv2d.forward(params, x, stride=3)
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\)"):
        conv2d.forward(params, randn(rng, 2, 4, 4, 3))


def _dx_by_indices(dy, W, shift):
    """Stride 1, no task axis: dx[r, c] = Σ_{p,q} dy_pad[r + shift − p, c + shift − q] W[p, q]ᵀ
    (dy_pad: dy zero-padded by one pixel; an index outside dy_pad contributes 0). shift = 2 is
    the gather of the stride-1 input gradient; shift = 1 is the same sum one pixel off."""
    N, H, Wd, _ = dy.shape
    dy_pad = xp.pad(dy, [(0, 0), (1, 1), (1, 1), (0, 0)])
    dx = xp.zeros((N, H, Wd, W.shape[2]))
    for r, c, p, q in itertools.product(range(H), range(Wd), range(3), range(3)):
        a, b = r + shift - p, c + shift - q
        if 0 <= a < H + 2 and 0 <= b < Wd + 2:
            dx[:, r, c] += dy_pad[:, a, b] @ W[p, q].T
    return dx


@pytest.mark.parametrize("C_in, C_out", [(2, 3), (3, 2)])     # the layer scatters, then gathers
def test_conv2d_stride1_input_grad_by_three_routes(C_in, C_out):
    """For stride 1, dx = col2im(dy Wmᵀ) (the layer's backward) also equals the gather
    dx = im2col(dy) W_flip_m with W_flip[p, q] = W[2 − p, 2 − q]ᵀ (the kernel flipped in space and
    transposed in its channels), the double sum Σ_{p,q} dy_pad[r + 2 − p, c + 2 − q] W[p, q]ᵀ with
    explicit indices, and conv2d_naive's loops over output pixels; the sum one pixel off
    (dy_pad[r + 1 − p]) does not. The model answer of notebook 8's Question 8.3 quotes these."""
    rng = np.random.default_rng(30 + C_in)
    x, params = conv_case(rng, None, 2, 6, 5, C_in, C_out)         # non-square 6×5 images
    W = params["W"]
    y, cache = conv2d.forward(params, x, stride=1)
    dy = randn(rng, *y.shape)
    layer = conv2d.backward(dy, cache)[0]
    W_flip = xp.swapaxes(W[::-1, ::-1], -1, -2)
    routes = {
        "im2col(dy) W_flip": (conv2d.im2col(dy, 1) @ W_flip.reshape(9 * C_out, C_in)).reshape(x.shape),
        "sum, dy_pad[r+2-p]": _dx_by_indices(dy, W, shift=2),
        "conv2d_naive": conv2d_naive.backward(dy, conv2d_naive.forward(params, x)[1])[0],
    }
    for name, dx in routes.items():
        assert rel_error(dx, layer) <= 1e-13, f"{name}: rel_error {rel_error(dx, layer):.1e}"
    assert rel_error(_dx_by_indices(dy, W, shift=1), layer) > 0.1


# ---- batch norm, pooling, flatten -------------------------------------------------

BN_CASES = [   # (x shape, gamma shape, config)
    ((3, 4, 4, 2), (2,), {}),
    ((2, 3, 3, 2, 2), (2, 2), {}),
    ((5, 3), (3,), {}),
    ((2, 4, 3), (2, 3), {"eps": 1e-3}),
    ((2, 2, 5, 3, 1), (2, 1), {"eps": 0.1}),
]


@pytest.mark.parametrize("x_shape,g_shape,config", BN_CASES)
def test_batchnorm_gradcheck(x_shape, g_shape, config):
    rng = np.random.default_rng(len(x_shape) + sum(x_shape))
    x = randn(rng, *x_shape) * 2.0 + 0.5
    params = {"gamma": randn(rng, *g_shape), "beta": randn(rng, *g_shape)}
    assert_checked(check_layer(batchnorm, params, x, config, seed=3))


def test_batchnorm_normalises_per_task_and_channel():
    rng = np.random.default_rng(6)
    x = randn(rng, 3, 4, 5, 5, 2) * 3.0 + 7.0
    ones, zeros = xp.ones((3, 2)), xp.zeros((3, 2))
    y, _ = batchnorm.forward({"gamma": ones, "beta": zeros}, x)
    assert float(xp.abs(y.mean(axis=(1, 2, 3))).max()) < 1e-12
    assert float(xp.abs(y.var(axis=(1, 2, 3)) - 1.0).max()) < 1e-3     # var/(var + eps)


def test_batchnorm_r_forward_equals_the_formula_with_rx_hat():
    """r_forward collects Ry by the arrays it multiplies; here Ry = Rγ x̂ + γ Rx̂ + Rβ
    with Rx̂ = (Rx − E[Rx] − x̂ E[x̂ Rx])/σ formed as in the module docstring."""
    rng = np.random.default_rng(7)
    x, Rx = randn(rng, 2, 3, 4, 4, 5) * 2.0 + 1.0, randn(rng, 2, 3, 4, 4, 5)
    params = {"gamma": randn(rng, 2, 5), "beta": randn(rng, 2, 5)}
    Rparams = {"gamma": randn(rng, 2, 5), "beta": randn(rng, 2, 5)}
    _, cache = batchnorm.forward(params, x)
    x_hat, _, sigma, axes = cache
    mean = lambda a: a.mean(axis=axes, keepdims=True)
    Rx_hat = (Rx - mean(Rx) - x_hat * mean(x_hat * Rx)) / sigma
    expand = lambda p: p[:, None, None, None, :]
    formula = expand(Rparams["gamma"]) * x_hat + expand(params["gamma"]) * Rx_hat + expand(Rparams["beta"])
    assert rel_error(batchnorm.r_forward(params, x, Rparams, Rx, cache)[0], formula) <= 1e-12


def test_batchnorm_rx_none_matches_zero_tangent():
    """Rx = None (the data's tangent) takes the short path; it must equal Rx = 0."""
    rng = np.random.default_rng(8)
    x = randn(rng, 2, 3, 4, 4, 5)
    params = {"gamma": randn(rng, 2, 5), "beta": randn(rng, 2, 5)}
    Rparams = {"gamma": randn(rng, 2, 5), "beta": randn(rng, 2, 5)}
    y, cache = batchnorm.forward(params, x)
    dy, Rdy = randn(rng, *y.shape), randn(rng, *y.shape)
    Ry0, rc0 = batchnorm.r_forward(params, x, Rparams, None, cache)
    Ry1, rc1 = batchnorm.r_forward(params, x, Rparams, xp.zeros_like(x), cache)
    assert rel_error(Ry0, Ry1) <= 1e-12
    for a, b in zip(batchnorm.r_backward(dy, Rdy, cache, rc0), batchnorm.r_backward(dy, Rdy, cache, rc1)):
        assert rel_error(a, b) <= 1e-12


def test_batchnorm_frozen_statistics_dx_fails_the_check():
    """With μ and σ treated as constants, dx = γ dy/σ: the gradient of another function (a layer
    with fixed statistics), which check_layer's backward:x rejects for batch statistics by a
    relative error above 0.01, as the model answer of notebook 8's Question 8.10 says; the
    package's dx passes the same check."""
    rng = np.random.default_rng(9)
    params = {"gamma": xp.asarray(rng.uniform(0.5, 1.5, 4)), "beta": randn(rng, 4)}
    x = 2 + 3 * randn(rng, 6, 3, 3, 4)
    frozen = types.SimpleNamespace(forward=batchnorm.forward, r_forward=batchnorm.r_forward,
                                   r_backward=batchnorm.r_backward,
                                   backward=lambda dy, cache: (dy * cache[1] / cache[2], batchnorm.backward(dy, cache)[1]))
    assert check_layer(frozen, params, x, seed=3)["backward:x"] > 0.01
    assert check_layer(batchnorm, params, x, seed=3)["backward:x"] <= TOL


POOL_SHAPES = [(2, 4, 4, 2), (2, 1, 5, 7, 2), (3, 2, 6, 4, 1), (1, 3, 3, 3)]


@pytest.mark.parametrize("x_shape", POOL_SHAPES)
def test_maxpool_gradcheck(x_shape):
    rng = np.random.default_rng(sum(x_shape))
    x = randn(rng, *x_shape)
    y, _ = maxpool.forward({}, x)
    assert y.shape == x_shape[:-3] + (x_shape[-3] // 2, x_shape[-2] // 2, x_shape[-1])
    assert_checked(check_layer(maxpool, {}, x, seed=4))


def test_maxpool_floors_odd_sizes_and_picks_one_winner():
    x = xp.ones((1, 3, 5, 1))                   # every window is a four-way tie
    y, cache = maxpool.forward({}, x)
    assert y.shape == (1, 1, 2, 1)
    dx, _ = maxpool.backward(xp.ones(y.shape), cache)
    expected = np.zeros((1, 3, 5, 1))
    expected[0, 0, [0, 2], 0] = 1.0              # the top-left entry of each window wins
    assert np.array_equal(backend.to_numpy(dx), expected)
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 3\)"):
        maxpool.forward({}, xp.ones((2, 1, 4, 3)))


@pytest.mark.parametrize("x_shape", POOL_SHAPES)
def test_meanpool_gradcheck(x_shape):
    rng = np.random.default_rng(sum(x_shape) + 1)
    x = randn(rng, *x_shape)
    y, _ = meanpool.forward({}, x)
    assert y.shape == x_shape[:-3] + x_shape[-1:]
    assert_checked(check_layer(meanpool, {}, x, seed=5))


@pytest.mark.parametrize("x_shape,sample_ndim", [((2, 3, 4, 2), 3), ((2, 2, 3, 4, 2), 3),
                                                 ((2, 3, 5), 1), ((3, 2, 4), 2)])
def test_flatten_gradcheck(x_shape, sample_ndim):
    rng = np.random.default_rng(sum(x_shape))
    x = randn(rng, *x_shape)
    y, _ = flatten.forward({}, x, sample_ndim=sample_ndim)
    assert y.shape == x_shape[:len(x_shape) - sample_ndim] + (int(np.prod(x_shape[-sample_ndim:])),)
    assert_checked(check_layer(flatten, {}, x, {"sample_ndim": sample_ndim}, seed=6))


def test_flatten_bad_sample_ndim():
    with pytest.raises(ValueError, match="sample_ndim"):
        flatten.forward({}, xp.ones((2, 3)), sample_ndim=2)


# ---- task batches equal a loop over tasks -----------------------------------------

def _batched_cases(rng):
    B = 3
    x, p = conv_case(rng, B, 2, 5, 4, 2, 3)
    Rx, Rp = conv_case(rng, B, 2, 5, 4, 2, 3)
    yield conv2d, p, x, Rp, Rx, {"stride": 2}
    yield conv2d, p, x, Rp, Rx, {"stride": 1}
    yield conv2d_naive, p, x, Rp, Rx, {"stride": 2}
    bn = {"gamma": randn(rng, B, 3), "beta": randn(rng, B, 3)}
    Rbn = {"gamma": randn(rng, B, 3), "beta": randn(rng, B, 3)}
    yield batchnorm, bn, randn(rng, B, 2, 3, 4, 3), Rbn, randn(rng, B, 2, 3, 4, 3), {}
    yield batchnorm, bn, randn(rng, B, 5, 3), Rbn, randn(rng, B, 5, 3), {}
    yield maxpool, {}, randn(rng, B, 2, 5, 4, 3), {}, randn(rng, B, 2, 5, 4, 3), {}
    yield meanpool, {}, randn(rng, B, 2, 5, 4, 3), {}, randn(rng, B, 2, 5, 4, 3), {}
    yield flatten, {}, randn(rng, B, 2, 5, 4, 3), {}, randn(rng, B, 2, 5, 4, 3), {"sample_ndim": 3}


def _stack(results):
    """Stack per-task results of all_four along a new task axis."""
    def st(items):
        if isinstance(items[0], dict):
            return {k: xp.stack([d[k] for d in items]) for k in items[0]}
        return xp.stack(items)
    return tuple(st([r[i] for r in results]) for i in range(6))


def test_task_batch_equals_loop_over_tasks():
    rng = np.random.default_rng(7)
    for layer, p, x, Rp, Rx, config in _batched_cases(rng):
        y, _ = layer.forward(p, x, **config)
        dy, Rdy = randn(rng, *y.shape), randn(rng, *y.shape)
        batched = all_four(layer, p, x, Rp, Rx, dy, Rdy, config)
        looped = _stack([all_four(layer, {k: v[i] for k, v in p.items()}, x[i],
                                  {k: v[i] for k, v in Rp.items()}, Rx[i], dy[i], Rdy[i], config)
                         for i in range(x.shape[0])])
        assert_same(batched, looped, 1e-12)


# ---- the Omniglot CNN -------------------------------------------------------------

def _cnn_problem(downsample, per_task, seed):
    image_size = 8 if downsample == "stride" else 16      # 4 max-pools need ≥ 16 pixels
    model = omniglot_cnn(ways=3, channels=3, downsample=downsample, image_size=image_size)
    rng = np.random.default_rng(seed)
    B, N = 2, 6
    params = {k: v + 0.3 * randn(rng, *v.shape) for k, v in model.init_params(seed).items()}
    if per_task:
        params = {k: xp.stack([v, v + 0.1 * randn(rng, *v.shape)]) for k, v in params.items()}
    x = randn(rng, B, N, image_size, image_size, 1)
    y = xp.asarray(np.tile(np.arange(3), (B, N // 3)), dtype=xp.int64)
    return model, params, x, y


@pytest.mark.parametrize("downsample,per_task", [("stride", True), ("stride", False),
                                                 ("maxpool", True), ("maxpool", False)])
def test_omniglot_cnn_gradient_and_hvp(downsample, per_task):
    model, params, x, y = _cnn_problem(downsample, per_task, seed=11)
    assert check_model_gradient(model, params, x, y) <= TOL
    errors = check_model_hvp(model, params, x, y, seed=12)
    assert errors["hvp"] <= TOL, errors
    assert errors["symmetry"] <= 1e-10, errors


def test_omniglot_cnn_structure():
    for downsample, sizes in (("stride", "28 → 14 → 7 → 4 → 2"), ("maxpool", "28 → 14 → 7 → 3 → 1")):
        model = omniglot_cnn(downsample=downsample)
        assert sizes in model.description
        assert model.input_shape == (28, 28, 1)
        assert model.param_shapes["conv1.W"] == (3, 3, 1, 64)
        assert model.param_shapes["conv4.W"] == (3, 3, 64, 64)
        assert model.param_shapes["head.W"] == (64, 5)
        params = model.init_params(0)
        assert float(xp.abs(params["bn2.gamma"] - 1).max()) == 0.0
        assert float(xp.abs(params["conv3.b"]).max()) == 0.0 and float(xp.abs(params["head.b"]).max()) == 0.0
        bound = np.sqrt(6.0 / (9 * 64 + 9 * 64))
        assert 0.9 * bound < float(xp.abs(params["conv2.W"]).max()) <= bound
        logits = model.predict(params, xp.zeros((2, 3, 28, 28, 1)))
        assert logits.shape == (2, 3, 5)
    with pytest.raises(ValueError, match="'stride', 'maxpool'"):
        omniglot_cnn(downsample="avgpool")
    with pytest.raises(ValueError, match="too small"):
        omniglot_cnn(downsample="maxpool", image_size=12)


def maxpool_by_loops(x):
    """2x2 max pooling, window by window: the first largest entry in the order top-left, top-right,
    bottom-left, bottom-right wins. (y, mask) with mask as maxpool's cache holds it."""
    lead, (H, W, C) = x.shape[:-3], x.shape[-3:]
    y = np.zeros(lead + (H // 2, W // 2, C))
    mask = np.zeros(lead + (H // 2, 2, W // 2, 2, C), dtype=bool)
    for index in np.ndindex(*lead):
        for i in range(H // 2):
            for j in range(W // 2):
                for c in range(C):
                    window = [x[index + (2 * i + p, 2 * j + q, c)] for p in (0, 1) for q in (0, 1)]
                    w = next(n for n, value in enumerate(window) if value == max(window))
                    y[index + (i, j, c)] = window[w]
                    mask[index + (i, w // 2, j, w % 2, c)] = True
    return y, mask


@pytest.mark.parametrize("x_shape", POOL_SHAPES + [(2, 3, 7, 6, 2)])
def test_maxpool_forward_equals_the_window_by_window_loop_with_ties(x_shape):
    """Entries drawn from {0, 1, 2}, so most windows tie: the output and the winners (the first
    largest entry in reading order) are those of a plain loop over the windows, exactly."""
    x = np.random.default_rng(sum(x_shape)).integers(0, 3, size=x_shape).astype(float)
    y, (mask, shape) = maxpool.forward({}, xp.asarray(x))
    want_y, want_mask = maxpool_by_loops(x)
    assert np.array_equal(backend.to_numpy(y), want_y) and np.array_equal(backend.to_numpy(mask), want_mask)
    assert shape == x_shape
