"""The Model: gradient and exact Hessian-vector product of a layer sequence (docs/method.md §7, §8, §12).

All in float64. Three layouts of a batch:
  unbatched     params (...),    x (N, 1)       one task
  per-task      params (B, ...), x (B, N, 1)    B tasks, each with its own φ_i (the inner loop)
  shared        params (...),    x (B, N, 1)    θ broadcast over B tasks; grads summed over tasks
"""
import numpy as np
import pytest

from numpy_amaml import backend, gradcheck, layers, losses, architectures
from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.model import Layer, Model

TOL = 1e-6
B, N = 3, 10


pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


def sinusoid_batch(rng, task=()):
    """x ~ U[−5, 5], y = A sin(x + φ) as in MAML's sinusoid tasks."""
    x = rng.uniform(-5, 5, size=task + (N, 1))
    amplitude = rng.uniform(0.1, 5.0, size=task + (1, 1))
    phase = rng.uniform(0, np.pi, size=task + (1, 1))
    return asarray(x), asarray(amplitude * np.sin(x + phase))


def per_task(params, b=B, seed=0):
    """B different parameter sets near ``params`` (like the φ_i of an inner loop)."""
    rng = np.random.default_rng(seed)
    return {k: asarray(to_numpy(v)[None] + 0.1 * rng.standard_normal((b,) + v.shape)) for k, v in params.items()}


def make_case(layout, hidden=(40, 40), seed=0):
    model = architectures.sinusoid_mlp(hidden=hidden)
    params = model.init_params(seed=seed)
    rng = np.random.default_rng(seed + 100)
    if layout == "unbatched":
        x, y = sinusoid_batch(rng)
    elif layout == "per-task":
        params = per_task(params, seed=seed + 1)
        x, y = sinusoid_batch(rng, (B,))
    elif layout == "shared":
        x, y = sinusoid_batch(rng, (B,))
    else:
        raise AssertionError(layout)
    return model, params, x, y


def random_direction(params, seed):
    rng = np.random.default_rng(seed)
    return {k: asarray(rng.standard_normal(v.shape)) for k, v in params.items()}


LAYOUTS = ["unbatched", "per-task", "shared"]


# ---- gradient and HVP against finite differences ----------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_sinusoid_mlp_gradient(layout):
    model, params, x, y = make_case(layout)
    assert gradcheck.check_model_gradient(model, params, x, y) <= TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sinusoid_mlp_hvp(layout):
    model, params, x, y = make_case(layout)
    errors = gradcheck.check_model_hvp(model, params, x, y, seed=3)
    assert errors["hvp"] <= TOL, errors
    assert errors["symmetry"] <= 1e-10, errors


def test_shapes_of_results():
    for layout, loss_shape in [("unbatched", ()), ("per-task", (B,)), ("shared", (B,))]:
        model, params, x, y = make_case(layout, hidden=(5,))
        loss, grads, hv = model.loss_grad_hvp(params, x, y, random_direction(params, 1))
        assert loss.shape == loss_shape
        assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in params.items()}
        assert {k: g.shape for k, g in hv.items()} == {k: p.shape for k, p in params.items()}
        assert model.predict(params, x).shape == x.shape


def test_loss_grad_hvp_agrees_with_separate_calls():
    model, params, x, y = make_case("per-task", hidden=(8, 8))
    v = random_direction(params, 2)
    loss, grads, hv = model.loss_grad_hvp(params, x, y, v)
    loss2, grads2 = model.loss_and_grad(params, x, y)
    np.testing.assert_array_equal(to_numpy(loss), to_numpy(loss2))
    np.testing.assert_array_equal(to_numpy(loss), to_numpy(model.loss(params, x, y)))
    for k in params:
        np.testing.assert_array_equal(to_numpy(grads[k]), to_numpy(grads2[k]))
        np.testing.assert_array_equal(to_numpy(hv[k]), to_numpy(model.hvp(params, x, y, v)[k]))


# ---- the explicit Hessian of a tiny MLP ------------------------------------------------

def flatten(d, keys):
    return np.concatenate([to_numpy(d[k]).ravel() for k in keys])


def unflatten(vec, like, keys):
    out, i = {}, 0
    for k in keys:
        size = int(np.prod(like[k].shape))
        out[k] = asarray(vec[i:i + size].reshape(like[k].shape))
        i += size
    return out


def test_explicit_hessian_of_tiny_mlp():
    """H of a 1-3-3-1 MLP built column by column from hvp(e_j): symmetric, equal to
    finite differences of the gradient column by column, and H v = hvp(v) for any v."""
    model = architectures.sinusoid_mlp(hidden=(3, 3))
    params = model.init_params(seed=4)
    x, y = sinusoid_batch(np.random.default_rng(5))
    keys = sorted(params)
    theta = flatten(params, keys)
    n = theta.size
    assert n == model.num_params() == (1 * 3 + 3) + (3 * 3 + 3) + (3 * 1 + 1)

    def grad_at(vec):
        return flatten(model.loss_and_grad(unflatten(vec, params, keys), x, y)[1], keys)

    H = np.empty((n, n))
    H_fd = np.empty((n, n))
    h = 1e-5
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        H[:, j] = flatten(model.hvp(params, x, y, unflatten(e, params, keys)), keys)
        H_fd[:, j] = (grad_at(theta + h * e) - grad_at(theta - h * e)) / (2 * h)

    assert np.abs(H).max() > 1e-3                 # a real, non-zero Hessian
    assert gradcheck.rel_error(H, H.T) <= 1e-12
    assert gradcheck.rel_error(H, H_fd) <= TOL
    v = np.random.default_rng(6).standard_normal(n)
    Hv = flatten(model.hvp(params, x, y, unflatten(v, params, keys)), keys)
    assert gradcheck.rel_error(Hv, H @ v) <= 1e-12


# ---- a task batch equals a loop over tasks -----------------------------------------------

def test_per_task_batch_equals_loop_over_tasks():
    model, params, x, y = make_case("per-task")
    v = random_direction(params, 9)          # a different direction for every task
    loss, grads, hv = model.loss_grad_hvp(params, x, y, v)
    for i in range(B):
        p_i = {k: a[i] for k, a in params.items()}
        v_i = {k: a[i] for k, a in v.items()}
        loss_i, grads_i, hv_i = model.loss_grad_hvp(p_i, x[i], y[i], v_i)
        assert abs(float(loss[i]) - float(loss_i)) <= 1e-12 * abs(float(loss_i))
        assert gradcheck.rel_error({k: g[i] for k, g in grads.items()}, grads_i) <= 1e-12
        assert gradcheck.rel_error({k: g[i] for k, g in hv.items()}, hv_i) <= 1e-12


def test_shared_params_equal_sum_over_tasks():
    model, params, x, y = make_case("shared")
    v = random_direction(params, 11)
    loss, grads, hv = model.loss_grad_hvp(params, x, y, v)
    looped = [model.loss_grad_hvp(params, x[i], y[i], v) for i in range(B)]
    np.testing.assert_allclose(to_numpy(loss), [float(l) for l, _, _ in looped], rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(to_numpy(grads[k]), sum(to_numpy(g[k]) for _, g, _ in looped),
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(to_numpy(hv[k]), sum(to_numpy(h[k]) for _, _, h in looped),
                                   rtol=1e-12, atol=1e-14)


def test_shared_params_are_not_modified():
    model, params, x, y = make_case("shared")
    before = {k: to_numpy(v).copy() for k, v in params.items()}
    model.loss_grad_hvp(params, x, y, random_direction(params, 12))
    for k in params:
        np.testing.assert_array_equal(to_numpy(params[k]), before[k])


@pytest.mark.parametrize("downsample, image_size", [("stride", 8), ("maxpool", 16)])
@pytest.mark.parametrize("shared", [False, True])
def test_omniglot_cnn_batch_equals_loop_over_tasks(downsample, image_size, shared):
    """Batch norm takes its statistics per task: a batch of tasks must not mix them,
    whether each task has its own φ_i or all share θ. (Finite-difference checks of the
    CNN layers and models live in test_layers_cnn.py and the gradcheck report.)"""
    model = architectures.omniglot_cnn(ways=3, channels=4, downsample=downsample, image_size=image_size)
    rng = np.random.default_rng(21)
    theta = model.init_params(seed=5)
    params = theta if shared else per_task(theta, seed=6)
    x = asarray(rng.standard_normal((B, 6) + model.input_shape))
    labels = asarray(rng.integers(0, 3, size=(B, 6)), dtype=np.int64)
    v = random_direction(params, 7)
    loss, grads, hv = model.loss_grad_hvp(params, x, labels, v)
    looped = [model.loss_grad_hvp(params if shared else {k: a[i] for k, a in params.items()}, x[i], labels[i],
                                  v if shared else {k: a[i] for k, a in v.items()}) for i in range(B)]
    np.testing.assert_allclose(to_numpy(loss), [float(l) for l, _, _ in looped], rtol=1e-12)
    for out, index in ((grads, 1), (hv, 2)):
        if shared:
            expected = {k: sum(to_numpy(r[index][k]) for r in looped) for k in params}
        else:
            expected = {k: np.stack([to_numpy(r[index][k]) for r in looped]) for k in params}
        assert gradcheck.rel_error(out, expected) <= 1e-12


# ---- a classifier: softmax cross-entropy through the model --------------------------------

def tiny_classifier(in_dim=4, hidden=5, classes=3):
    shapes = {"fc1.W": (in_dim, hidden), "fc1.b": (hidden,), "fc2.W": (hidden, classes), "fc2.b": (classes,)}
    seq = [Layer("fc1", layers.linear), Layer("relu1", layers.relu), Layer("fc2", layers.linear)]

    def init(rng):
        return {k: rng.standard_normal(s) for k, s in shapes.items()}
    return Model(seq, losses.softmax_ce, shapes, input_shape=(in_dim,), init=init)


def classifier_case(seed=0):
    model = tiny_classifier()
    rng = np.random.default_rng(seed)
    params = per_task(model.init_params(seed=seed), seed=seed + 1)
    x = asarray(rng.standard_normal((B, 6, 4)))
    labels = asarray(rng.integers(0, 3, size=(B, 6)), dtype=np.int64)
    return model, params, x, labels


def test_classifier_gradient_and_hvp():
    model, params, x, labels = classifier_case()
    assert gradcheck.check_model_gradient(model, params, x, labels) <= TOL
    errors = gradcheck.check_model_hvp(model, params, x, labels, seed=2)
    assert errors["hvp"] <= TOL and errors["symmetry"] <= 1e-10, errors


# ---- init_params ----------------------------------------------------------------------

def test_init_params_is_seeded():
    model = architectures.sinusoid_mlp()
    a, b, c = model.init_params(seed=1), model.init_params(seed=1), model.init_params(seed=2)
    assert set(a) == set(model.param_shapes) == {"fc1.W", "fc1.b", "fc2.W", "fc2.b", "fc3.W", "fc3.b"}
    for k in a:
        assert a[k].shape == model.param_shapes[k]
        np.testing.assert_array_equal(to_numpy(a[k]), to_numpy(b[k]))
        assert not np.array_equal(to_numpy(a[k]), to_numpy(c[k]))


def test_init_params_dtype_and_bounds():
    model = architectures.sinusoid_mlp()
    assert all(p.dtype == np.float64 for p in model.init_params().values())     # active dtype
    assert all(p.dtype == np.float32 for p in model.init_params(dtype=np.float32).values())
    params = model.init_params(seed=3)
    for k, p in params.items():   # U(−1/√fan_in, 1/√fan_in), PyTorch's nn.Linear default
        fan_in = model.param_shapes[k.split(".")[0] + ".W"][0]
        assert np.abs(to_numpy(p)).max() <= 1 / np.sqrt(fan_in)
    assert model.num_params() == 1 * 40 + 40 + 40 * 40 + 40 + 40 * 1 + 1


def test_float32_default_for_training():
    backend.set_dtype("float32")      # the fixture restores float64 afterwards
    model = architectures.sinusoid_mlp(hidden=(8,))
    params = model.init_params()
    x, y = (a.astype(np.float32) for a in sinusoid_batch(np.random.default_rng(0), (B,)))
    loss, grads = model.loss_and_grad(params, x, y)
    assert loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


# ---- bad input gets a clear error naming the problem ----------------------------------

@pytest.fixture
def case():
    model, params, x, y = make_case("unbatched", hidden=(5,))
    return model, params, x, y


def test_error_wrong_rank_x(case):
    model, params, x, y = case
    with pytest.raises(ValueError, match=r"x must have rank 2 or 3, got shape \(10,\)"):
        model.loss_and_grad(params, x[:, 0], y)
    with pytest.raises(ValueError, match=r"x must have rank 2 or 3, got shape \(2, 3, 10, 1\)"):
        model.loss_and_grad(params, asarray(np.zeros((2, 3, N, 1))), y)


def test_error_wrong_sample_shape(case):
    model, params, x, y = case
    with pytest.raises(ValueError, match=r"x has shape \(10, 2\); each sample must have shape \(1,\)"):
        model.loss_and_grad(params, asarray(np.zeros((N, 2))), y)


def test_error_params_missing_key(case):
    model, params, x, y = case
    del params["fc1.b"]
    with pytest.raises(ValueError, match=r"params keys do not match the model: missing \['fc1.b'\]"):
        model.loss_and_grad(params, x, y)


def test_error_params_extra_key(case):
    model, params, x, y = case
    params["fc9.W"] = asarray(np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"unexpected \['fc9.W'\]"):
        model.loss(params, x, y)


def test_error_params_wrong_shape(case):
    model, params, x, y = case
    params["fc2.W"] = asarray(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"params\['fc2.W'\] has shape \(5, 2\); expected \(5, 1\)"):
        model.predict(params, x)


def test_error_params_not_a_dict(case):
    model, params, x, y = case
    with pytest.raises(TypeError, match="params must be a dict of arrays, got list"):
        model.loss(list(params.values()), x, y)


def test_error_mismatched_task_axes(case):
    model, params, _, _ = case
    params3 = per_task(params, b=3)
    x4, y4 = sinusoid_batch(np.random.default_rng(0), (4,))
    with pytest.raises(ValueError, match=r"params have a task axis of 3 but x has shape \(4, 10, 1\)"):
        model.loss_and_grad(params3, x4, y4)
    x1, y1 = sinusoid_batch(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"params have a task axis of 3 but x has shape \(10, 1\)"):
        model.loss_and_grad(params3, x1, y1)


def test_error_params_mix_task_axes(case):
    model, params, x, y = case
    params["fc1.W"] = per_task({"W": params["fc1.W"]}, b=3)["W"]
    with pytest.raises(ValueError, match="mix task-axis sizes / shared arrays"):
        model.loss(params, x, y)


def test_error_integer_x(case):
    model, params, x, y = case
    with pytest.raises(TypeError, match="x must be a float array, got dtype int"):
        model.loss_and_grad(params, asarray(np.ones((N, 1)), dtype=np.int64), y)


def test_error_integer_params(case):
    model, params, x, y = case
    params["fc1.b"] = asarray(np.ones(5), dtype=np.int32)
    with pytest.raises(TypeError, match=r"params\['fc1.b'\] must be a float array"):
        model.loss_and_grad(params, x, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_non_finite_x(case, bad):
    model, params, x, y = case
    x = x.copy()
    x[3, 0] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model.loss_and_grad(params, x, y)


def test_error_nan_in_params(case):
    model, params, x, y = case
    params["fc2.W"] = params["fc2.W"].copy()
    params["fc2.W"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"params\['fc2.W'\] contains NaN or Inf"):
        model.hvp(params, x, y, random_direction(params, 0))


def test_error_nan_in_targets(case):
    model, params, x, y = case
    y = y.copy()
    y[0, 0] = np.nan
    with pytest.raises(ValueError, match="MSE target contains NaN or Inf"):
        model.loss_and_grad(params, x, y)


def test_error_target_shape(case):
    model, params, x, y = case
    with pytest.raises(ValueError, match=r"prediction shape \(10, 1\) != target shape \(10,\)"):
        model.loss(params, x, y[:, 0])


def test_error_v_wrong_keys(case):
    model, params, x, y = case
    v = random_direction(params, 0)
    del v["fc2.b"]
    with pytest.raises(ValueError, match=r"v keys do not match the model: missing \['fc2.b'\]"):
        model.hvp(params, x, y, v)


def test_error_v_wrong_task_axis(case):
    model, params, x, y = case
    v = per_task(random_direction(params, 0), b=2)
    with pytest.raises(ValueError, match="v has task axis 2 but params have task axis None"):
        model.hvp(params, x, y, v)


def test_error_non_integer_labels():
    model, params, x, labels = classifier_case()
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        model.loss_and_grad(params, x, labels.astype(np.float64))


def test_error_label_out_of_range():
    model, params, x, labels = classifier_case()
    labels = labels.copy()
    labels[1, 2] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[0, 3\]"):
        model.loss_and_grad(params, x, labels)
