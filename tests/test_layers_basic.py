"""Linear, ReLU, MSE and softmax cross-entropy: every derivative against finite
differences (docs/method.md §12), in float64, at the 1e-6 bar; plus the closed forms of §7."""
import numpy as np
import pytest

from numpy_amaml import gradcheck, layers, losses
from numpy_amaml.backend import asarray, to_numpy

TOL = 1e-6


pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


def randn(rng, *shape):
    return asarray(rng.standard_normal(shape))


def linear_params(rng, d_in, d_out, task=()):
    return {"W": randn(rng, *task, d_in, d_out), "b": randn(rng, *task, d_out)}


def assert_all_small(errors, tol=TOL):
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


# ---- Linear --------------------------------------------------------------------------

# (task axis, N, D_in, D_out): without and with a leading task axis, including size-1 axes
LINEAR_SHAPES = [((), 5, 3, 4), ((), 1, 1, 1), ((), 8, 6, 2), ((2,), 7, 2, 3), ((4,), 3, 5, 1), ((1,), 2, 1, 6)]


@pytest.mark.parametrize("task, n, d_in, d_out", LINEAR_SHAPES)
def test_linear_gradcheck(task, n, d_in, d_out):
    rng = np.random.default_rng(n * 100 + d_in * 10 + d_out)
    params = linear_params(rng, d_in, d_out, task)
    x = randn(rng, *task, n, d_in)
    errors = gradcheck.check_layer(layers.linear, params, x, seed=1)
    assert set(errors) == {"backward:x", "backward:W", "backward:b", "r_forward",
                           "r_backward:x", "r_backward:W", "r_backward:b"}
    assert_all_small(errors)


def test_linear_closed_forms_by_hand():
    """docs/method.md §7 on a 2-sample, 2-in, 2-out case worked out on paper:
    Ry = Rx W + x RW + Rb,  R{dx} = R{dy} Wᵀ + dy RWᵀ,  R{dW} = Rxᵀ dy + xᵀ R{dy},  R{db} = Σ R{dy}."""
    x = asarray([[1, 2], [0, -1]])
    params = {"W": asarray([[1, -1], [2, 0]]), "b": asarray([0.5, -0.5])}
    Rx = asarray([[0, 1], [1, 0]])
    Rparams = {"W": asarray([[1, 0], [0, 1]]), "b": asarray([1, 2])}
    dy = asarray([[1, 3], [-1, 0]])
    Rdy = asarray([[2, -1], [0, 1]])

    y, cache = layers.linear.forward(params, x)
    np.testing.assert_array_equal(to_numpy(y), [[5.5, -1.5], [-1.5, -0.5]])

    dx, dparams = layers.linear.backward(dy, cache)
    np.testing.assert_array_equal(to_numpy(dx), [[-2, 2], [-1, -2]])          # dy Wᵀ
    np.testing.assert_array_equal(to_numpy(dparams["W"]), [[1, 3], [3, 6]])   # xᵀ dy
    np.testing.assert_array_equal(to_numpy(dparams["b"]), [0, 3])             # Σ_n dy

    Ry, rcache = layers.linear.r_forward(params, x, Rparams, Rx, cache)
    # row 1: [2, 0] + [1, 2] + [1, 2];  row 2: [1, -1] + [0, -1] + [1, 2]
    np.testing.assert_array_equal(to_numpy(Ry), [[4, 4], [2, 0]])

    Rdx, Rdparams = layers.linear.r_backward(dy, Rdy, cache, rcache)
    # row 1: Rdy Wᵀ = [3, 4], dy RWᵀ = [1, 3];  row 2: [-1, 0] + [-1, 0]
    np.testing.assert_array_equal(to_numpy(Rdx), [[4, 7], [-2, 0]])
    # sample 1: [[0,0],[1,3]] + [[2,-1],[4,-2]];  sample 2: [[-1,0],[0,0]] + [[0,0],[0,-1]]
    np.testing.assert_array_equal(to_numpy(Rdparams["W"]), [[1, -1], [5, 0]])
    np.testing.assert_array_equal(to_numpy(Rdparams["b"]), [2, 0])


def test_linear_closed_forms_with_task_axis_match_einsum():
    rng = np.random.default_rng(7)
    B, N, D, E = 3, 4, 5, 2
    params, Rparams = linear_params(rng, D, E, (B,)), linear_params(rng, D, E, (B,))
    x, Rx, dy, Rdy = randn(rng, B, N, D), randn(rng, B, N, D), randn(rng, B, N, E), randn(rng, B, N, E)
    W, RW, Rb = (to_numpy(a) for a in (params["W"], Rparams["W"], Rparams["b"]))
    xn, Rxn, dyn, Rdyn = (to_numpy(a) for a in (x, Rx, dy, Rdy))

    _, cache = layers.linear.forward(params, x)
    Ry, rcache = layers.linear.r_forward(params, x, Rparams, Rx, cache)
    Rdx, Rdp = layers.linear.r_backward(dy, Rdy, cache, rcache)
    np.testing.assert_allclose(to_numpy(Ry), np.einsum("bnd,bde->bne", Rxn, W)
                               + np.einsum("bnd,bde->bne", xn, RW) + Rb[:, None, :], rtol=1e-12)
    np.testing.assert_allclose(to_numpy(Rdx), np.einsum("bne,bde->bnd", Rdyn, W)
                               + np.einsum("bne,bde->bnd", dyn, RW), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(Rdp["W"]), np.einsum("bnd,bne->bde", Rxn, dyn)
                               + np.einsum("bnd,bne->bde", xn, Rdyn), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(Rdp["b"]), Rdyn.sum(axis=1), rtol=1e-12)


def test_linear_r_forward_without_input_tangent():
    """Rx=None (the data does not depend on θ): Ry = x RW + Rb and R{dW} = xᵀ R{dy}."""
    rng = np.random.default_rng(3)
    params, Rparams = linear_params(rng, 3, 2), linear_params(rng, 3, 2)
    x, dy, Rdy = randn(rng, 4, 3), randn(rng, 4, 2), randn(rng, 4, 2)
    _, cache = layers.linear.forward(params, x)
    Ry, rcache = layers.linear.r_forward(params, x, Rparams, None, cache)
    np.testing.assert_allclose(to_numpy(Ry), to_numpy(x @ Rparams["W"] + Rparams["b"]), rtol=1e-12)
    _, Rdp = layers.linear.r_backward(dy, Rdy, cache, rcache)
    np.testing.assert_allclose(to_numpy(Rdp["W"]), to_numpy(x.T @ Rdy), rtol=1e-12)


# ---- ReLU ----------------------------------------------------------------------------

def away_from_zero(rng, *shape, margin=0.1):
    """Random values with |x| ≥ margin, so x ± h never crosses the kink at 0."""
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return asarray(sign * rng.uniform(margin, 2.0, size=shape))


@pytest.mark.parametrize("shape", [(6, 4), (1, 1), (3, 5, 2), (2, 4, 3, 3, 2)])
def test_relu_gradcheck(shape):
    rng = np.random.default_rng(len(shape))
    errors = gradcheck.check_layer(layers.relu, {}, away_from_zero(rng, *shape), seed=2)
    assert set(errors) == {"backward:x", "r_forward", "r_backward:x"}
    assert_all_small(errors)


def test_relu_values_and_tangents():
    x = asarray([[-1.0, 0.0, 2.0]])
    y, mask = layers.relu.forward({}, x)
    np.testing.assert_array_equal(to_numpy(y), [[0, 0, 2]])
    assert y.dtype == x.dtype
    Ry, _ = layers.relu.r_forward({}, x, {}, asarray([[5.0, 6.0, 7.0]]), mask)
    np.testing.assert_array_equal(to_numpy(Ry), [[0, 0, 7]])
    assert layers.relu.r_forward({}, x, {}, None, mask)[0] is None


# ---- MSE -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(10, 1), (4, 3), (1, 1), (3, 10, 1), (2, 5, 4)])
def test_mse_gradcheck(shape):
    rng = np.random.default_rng(sum(shape))
    pred, target = randn(rng, *shape), randn(rng, *shape)
    assert_all_small(gradcheck.check_loss(losses.mse, pred, target, seed=3))


def test_mse_value_per_task():
    pred = asarray([[[1.0], [2.0]], [[0.0], [0.0]]])      # B=2 tasks, N=2, D=1
    target = asarray([[[0.0], [0.0]], [[3.0], [1.0]]])
    loss, _ = losses.mse.forward(pred, target)
    np.testing.assert_allclose(to_numpy(loss), [(1 + 4) / 2, (9 + 1) / 2])
    loss, _ = losses.mse.forward(pred[0], target[0])
    assert loss.shape == ()


def test_mse_shape_mismatch():
    with pytest.raises(ValueError, match=r"prediction shape \(3, 1\) != target shape \(3,\)"):
        losses.mse.forward(asarray(np.zeros((3, 1))), asarray(np.zeros(3)))


# ---- softmax cross-entropy -----------------------------------------------------------

def random_labels(rng, shape, classes):
    return asarray(rng.integers(0, classes, size=shape), dtype=np.int64)


@pytest.mark.parametrize("task, n, classes", [((), 6, 3), ((), 1, 2), ((), 5, 20), ((3,), 4, 5), ((2,), 10, 2)])
def test_softmax_ce_gradcheck(task, n, classes):
    rng = np.random.default_rng(n * classes)
    logits = randn(rng, *task, n, classes)
    labels = random_labels(rng, task + (n,), classes)
    assert_all_small(gradcheck.check_loss(losses.softmax_ce, logits, labels, seed=4))


def naive_cross_entropy(logits, labels):
    """−mean log softmax, written the unstable textbook way (fine for small logits)."""
    p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    picked = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
    return -np.log(picked).mean(axis=-1)


@pytest.mark.parametrize("task", [(), (2,)])
def test_softmax_ce_large_logits_are_stable(task):
    """Logits near ±1000 overflow exp() in the naive formula; the log-sum-exp form gives
    a finite loss, equal to that of the logits without the offset (softmax is shift
    invariant along the class axis), and gradients that still pass the check."""
    rng = np.random.default_rng(11)
    n, classes = 6, 4
    small = rng.standard_normal(task + (n, classes))
    offset = np.where(rng.random(task + (n, 1)) < 0.5, -1000.0, 1000.0)
    labels_np = rng.integers(0, classes, size=task + (n,))
    logits, labels = asarray(small + offset), asarray(labels_np, dtype=np.int64)

    loss, _ = losses.softmax_ce.forward(logits, labels)
    assert np.all(np.isfinite(to_numpy(loss)))
    np.testing.assert_allclose(to_numpy(loss), naive_cross_entropy(small, labels_np), rtol=1e-10)
    assert_all_small(gradcheck.check_loss(losses.softmax_ce, logits, labels, seed=5))


def test_softmax_ce_saturated_logits():
    """One class at +1000, the others at −1000: p is exactly one-hot, the loss is 0 for
    the right label and 2000 for a wrong one; nothing overflows to inf or nan."""
    logits = asarray([[1000.0, -1000.0, -1000.0], [1000.0, -1000.0, -1000.0]])
    labels = asarray([0, 1], dtype=np.int64)
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is fine
        loss, cache = losses.softmax_ce.forward(logits, labels)
        dz = losses.softmax_ce.backward(cache)
    np.testing.assert_allclose(float(loss), (0.0 + 2000.0) / 2)
    np.testing.assert_allclose(to_numpy(dz), [[0, 0, 0], [0.5, -0.5, 0]])


def test_softmax_ce_r_op_is_the_softmax_jacobian():
    """R{dz}_n = (diag(p_n) − p_n p_nᵀ) Rz_n / N, with the Jacobian built explicitly."""
    rng = np.random.default_rng(13)
    B, N, C = 2, 5, 4
    logits, Rz = randn(rng, B, N, C), randn(rng, B, N, C)
    labels = random_labels(rng, (B, N), C)
    _, cache = losses.softmax_ce.forward(logits, labels)
    Rdz = to_numpy(losses.softmax_ce.r_backward(Rz, cache))

    z, Rzn = to_numpy(logits), to_numpy(Rz)
    expected = np.empty_like(z)
    for b in range(B):
        for n in range(N):
            p = np.exp(z[b, n] - z[b, n].max())
            p /= p.sum()
            jacobian = np.diag(p) - np.outer(p, p)
            expected[b, n] = jacobian @ Rzn[b, n] / N
    np.testing.assert_allclose(Rdz, expected, rtol=1e-12, atol=1e-15)


def test_softmax_ce_gradient_closed_form():
    """dz = (p − onehot(label)) / N."""
    logits = asarray([[0.0, 0.0], [np.log(3.0), 0.0]])     # p = [.5, .5] and [.75, .25]
    loss, cache = losses.softmax_ce.forward(logits, asarray([0, 1], dtype=np.int64))
    np.testing.assert_allclose(float(loss), -(np.log(0.5) + np.log(0.25)) / 2)
    np.testing.assert_allclose(to_numpy(losses.softmax_ce.backward(cache)),
                               [[-0.25, 0.25], [0.375, -0.375]])


def test_softmax_ce_bad_labels():
    logits = asarray(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="labels must be integers"):
        losses.softmax_ce.forward(logits, asarray([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[0, 4\]"):
        losses.softmax_ce.forward(logits, asarray([0, 4, 1], dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[-1, 2\]"):
        losses.softmax_ce.forward(logits, asarray([-1, 2, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="labels shape"):
        losses.softmax_ce.forward(logits, asarray([0, 1], dtype=np.int64))
