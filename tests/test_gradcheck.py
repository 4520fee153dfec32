"""The gradient checker itself: its numbers are right, it fails on wrong derivatives,
and ``python -m numpy_amaml gradcheck`` prints its table and exit code."""
import pkgutil
import types

import numpy as np
import pytest

from numpy_amaml import architectures, backend, gradcheck, layers, losses
from numpy_amaml.commands import gradcheck as gradcheck_report
from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.cli import main
from numpy_amaml.model import Layer, Model


pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


# ---- rel_error -----------------------------------------------------------------------

def test_rel_error_basics():
    a = asarray([[1.0, -2.0], [3.0, 0.5]])
    assert gradcheck.rel_error(a, a) == 0.0
    assert gradcheck.rel_error(a, a.copy()) == 0.0
    assert gradcheck.rel_error(np.zeros(3), np.zeros(3)) == 0.0           # no 0/0
    assert gradcheck.rel_error(a, 2 * a) == pytest.approx(1 / 3)           # ‖a‖ / (‖a‖ + 2‖a‖)
    assert gradcheck.rel_error(a, -a) == pytest.approx(1.0)
    assert gradcheck.rel_error(np.float32(1.0), 1.0 + 1e-9) == pytest.approx(0.5e-9, rel=1e-3)


def test_rel_error_dicts():
    a = {"W": asarray([[1.0, 2.0]]), "b": asarray([3.0])}
    b = {"W": asarray([[1.0, 2.0]]), "b": asarray([3.0 + 1e-6])}
    assert gradcheck.rel_error(a, a) == 0.0
    expected = 1e-6 / (2 * np.sqrt(14))      # one norm over all entries of all keys
    assert gradcheck.rel_error(a, b) == pytest.approx(expected, rel=1e-6)
    assert gradcheck.rel_error({}, {}) == 0.0


def test_rel_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 3\) vs \(3, 2\)"):
        gradcheck.rel_error(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="keys differ"):
        gradcheck.rel_error({"W": np.ones(2)}, {"b": np.ones(2)})
    # same number of entries, different shapes: still an error, naming the key
    with pytest.raises(ValueError, match=r"shapes differ at 'W': \(2, 3\) vs \(3, 2\)"):
        gradcheck.rel_error({"W": np.ones((2, 3))}, {"W": np.ones((3, 2))})


# ---- finite differences ----------------------------------------------------------------

def test_numerical_gradient_of_a_known_function():
    """f = Σ x³  ⇒  ∇f = 3x²; central differences are exact up to h²·f''' / 6 = h² per entry."""
    x = asarray(np.random.default_rng(0).uniform(-2, 2, size=(3, 4)))
    original = to_numpy(x).copy()
    grad = gradcheck.numerical_gradient(lambda: float((x ** 3).sum()), x)
    assert gradcheck.rel_error(grad, 3 * x ** 2) <= 1e-8
    np.testing.assert_array_equal(to_numpy(x), original)          # x restored


def test_numerical_gradient_dict_and_directional_derivative():
    p = {"a": asarray([1.0, 2.0]), "b": asarray([[0.5]])}

    def f():
        return float((p["a"] ** 2).sum() * p["b"][0, 0])
    num = gradcheck.numerical_gradient_dict(f, p)
    assert gradcheck.rel_error(num, {"a": 2 * p["a"] * 0.5, "b": asarray([[5.0]])}) <= 1e-9

    # d/dt sin(x + t d) at t = 0 is cos(x) ⊙ d, for arrays, dicts and tuples of outputs
    x, d = asarray([0.1, 1.0, 2.0]), asarray([1.0, -2.0, 0.5])
    assert gradcheck.rel_error(gradcheck.directional_derivative(np.sin, x, d), np.cos(x) * d) <= 1e-9
    dd = gradcheck.directional_derivative(lambda q: {"s": np.sin(q["x"])}, {"x": x}, {"x": d})
    assert gradcheck.rel_error(dd["s"], np.cos(x) * d) <= 1e-9
    t = gradcheck.directional_derivative(lambda q: (q ** 2, {"c": np.cos(q)}), x, d)
    assert gradcheck.rel_error(t[0], 2 * x * d) <= 1e-9
    assert gradcheck.rel_error(t[1]["c"], -np.sin(x) * d) <= 1e-9


def test_numerical_gradient_needs_contiguous_array():
    x = asarray(np.ones((4, 4)))[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        gradcheck.numerical_gradient(lambda: float(x.sum()), x)


# ---- the checks fail on wrong derivatives -------------------------------------------------

def buggy_linear(dW_factor=1.0, drop_dy_RW=False, drop_Rb=False, drop_Rx_dy=False):
    """The Linear layer with one deliberate mistake, as a module-like namespace."""
    lin = layers.linear

    def backward(dy, cache):
        dx, dp = lin.backward(dy, cache)
        return dx, {"W": dW_factor * dp["W"], "b": dp["b"]}

    def r_forward(params, x, Rparams, Rx, cache):
        Ry, rcache = lin.r_forward(params, x, Rparams, Rx, cache)
        return (Ry - Rparams["b"][..., None, :] if drop_Rb else Ry), rcache

    def r_backward(dy, Rdy, cache, rcache):
        x, W = cache
        Rx, RW = rcache
        Rdx = Rdy @ np.swapaxes(W, -1, -2)
        if not drop_dy_RW:
            Rdx = Rdx + dy @ np.swapaxes(RW, -1, -2)
        RdW = np.swapaxes(x, -1, -2) @ Rdy
        if Rx is not None and not drop_Rx_dy:
            RdW = RdW + np.swapaxes(Rx, -1, -2) @ dy
        return Rdx, {"W": RdW, "b": Rdy.sum(axis=-2)}

    return types.SimpleNamespace(forward=lin.forward, backward=backward,
                                 r_forward=r_forward, r_backward=r_backward)


def linear_case(seed=0):
    rng = np.random.default_rng(seed)
    params = {"W": asarray(rng.standard_normal((2, 4, 3))), "b": asarray(rng.standard_normal((2, 3)))}
    return params, asarray(rng.standard_normal((2, 5, 4)))


def test_correct_linear_passes():
    params, x = linear_case()
    errors = gradcheck.check_layer(buggy_linear(), params, x)
    assert max(errors.values()) <= 1e-6


def test_check_layer_catches_dW_off_by_one_percent():
    params, x = linear_case()
    errors = gradcheck.check_layer(buggy_linear(dW_factor=1.01), params, x)
    assert errors["backward:W"] > 1e-3                   # ≈ 0.01 / 2: a clear failure
    assert errors["backward:x"] <= 1e-6 and errors["backward:b"] <= 1e-6
    # r_backward is compared with finite differences of the (wrong) backward: caught too
    assert errors["r_backward:W"] > 1e-3


def test_check_layer_catches_wrong_r_ops():
    params, x = linear_case()
    errors = gradcheck.check_layer(buggy_linear(drop_Rb=True), params, x)
    assert errors["r_forward"] > 1e-2
    errors = gradcheck.check_layer(buggy_linear(drop_dy_RW=True), params, x)
    assert errors["r_backward:x"] > 1e-2 and errors["r_backward:W"] <= 1e-6
    errors = gradcheck.check_layer(buggy_linear(drop_Rx_dy=True), params, x)
    assert errors["r_backward:W"] > 1e-2 and errors["r_backward:x"] <= 1e-6


def test_check_loss_catches_a_missing_factor():
    half_mse = types.SimpleNamespace(forward=losses.mse.forward,
                                     backward=lambda cache: 0.5 * losses.mse.backward(cache),
                                     r_backward=losses.mse.r_backward)
    rng = np.random.default_rng(1)
    pred, target = asarray(rng.standard_normal((2, 5, 1))), asarray(rng.standard_normal((2, 5, 1)))
    errors = gradcheck.check_loss(half_mse, pred, target)
    assert errors["backward"] > 0.1
    assert errors["r_backward"] > 0.1      # the right R-op no longer matches the wrong gradient


def test_check_model_hvp_catches_a_term_only_a_deep_model_uses():
    """Dropping Rxᵀdy from R{dW} is invisible in the first layer (its Rx is None) but
    breaks the HVP of a two-layer model; the gradient itself stays right."""
    def mlp(linear_module):
        seq = [Layer("fc1", linear_module), Layer("relu1", layers.relu), Layer("fc2", linear_module)]
        shapes = {"fc1.W": (1, 6), "fc1.b": (6,), "fc2.W": (6, 1), "fc2.b": (1,)}
        return Model(seq, losses.mse, shapes, (1,), init=lambda rng: {k: rng.standard_normal(s)
                                                                     for k, s in shapes.items()})
    rng = np.random.default_rng(2)
    x = asarray(rng.uniform(-3, 3, size=(2, 8, 1)))
    y = asarray(np.sin(to_numpy(x)))
    good, bad = mlp(layers.linear), mlp(buggy_linear(drop_Rx_dy=True))
    params = good.init_params(seed=3)
    assert gradcheck.check_model_hvp(good, params, x, y)["hvp"] <= 1e-6
    assert gradcheck.check_model_gradient(bad, params, x, y) <= 1e-6
    assert gradcheck.check_model_hvp(bad, params, x, y)["hvp"] > 1e-3


def test_check_model_hvp_steps_a_distance_h_whatever_the_size_of_v():
    model = architectures.sinusoid_mlp(hidden=(6,))
    params = model.init_params(seed=1)
    x = asarray(np.random.default_rng(2).uniform(-5, 5, size=(8, 1)))
    y = asarray(np.sin(to_numpy(x)))
    rng = np.random.default_rng(3)
    v = {k: asarray(rng.standard_normal(a.shape)) for k, a in params.items()}
    small = gradcheck.check_model_hvp(model, params, x, y, v=v)["hvp"]
    big = gradcheck.check_model_hvp(model, params, x, y, v={k: 1e4 * a for k, a in v.items()})["hvp"]
    assert small <= 1e-6 and big == pytest.approx(small, rel=1e-3)
    zero = {k: 0 * a for k, a in v.items()}
    assert gradcheck.check_model_hvp(model, params, x, y, v=zero)["hvp"] == 0.0


# ---- the report command ---------------------------------------------------------------------

def test_report_covers_every_layer_module():
    rng = np.random.default_rng(0)
    checked = {module.__name__.rsplit(".", 1)[1] for _, module, _, _, _ in gradcheck_report.layer_cases(rng)}
    available = {m.name for m in pkgutil.iter_modules(layers.__path__)}
    assert checked == available, f"layers without a gradcheck_report entry: {sorted(available - checked)}"
    names = [name for name, _ in gradcheck_report.model_cases(rng)]
    assert any("Sinusoid" in n for n in names)
    assert any("CNN stride" in n for n in names) and any("CNN maxpool" in n for n in names)


def test_report_command_passes_and_prints_the_table(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("component"))
    assert header.split() == ["component", "check", "rel.", "error", "result"]
    for component in ("Linear", "ReLU", "MSE", "Softmax cross-entropy", "Sinusoid MLP"):
        assert component in out
    assert "FAIL" not in out
    assert "checks, all passed (max rel. error" in out.splitlines()[-1]
    assert backend.float_dtype() is np.float64          # the report restores the dtype it found


def test_report_fails_with_nonzero_exit_code(capsys, monkeypatch):
    params, x = linear_case()
    monkeypatch.setattr(gradcheck_report, "layer_cases", lambda rng: [
        ("Linear", layers.linear, params, x, {}),
        ("Linear with dW off by 1%", buggy_linear(dW_factor=1.01), params, x, {})])
    monkeypatch.setattr(gradcheck_report, "model_cases", lambda rng: [])
    assert main(["gradcheck", "--seed", "3"]) == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [line.split()[-3] for line in lines if line.endswith("FAIL")]
    assert all(line.startswith("Linear with dW off by 1%") for line in lines if line.endswith("FAIL"))
    assert failed == ["backward:W", "r_backward:W"]
    assert "checks, 2 FAILED at tol 1e-06" in lines[-1]


def test_report_tol_option(capsys, monkeypatch):
    monkeypatch.setattr(gradcheck_report, "model_cases", lambda rng: [])
    assert main(["gradcheck", "--tol", "1e-30"]) == 1          # nothing is that exact
    assert "FAILED at tol 1e-30" in capsys.readouterr().out


def test_kink_margin_of_relu_and_maxpool():
    """The report redraws a model's check point until it is this far from every kink."""
    mlp = architectures.sinusoid_mlp(hidden=(2,))
    params = {"fc1.W": asarray([[1.0, 1.0]]), "fc1.b": asarray([0.3, -0.5]),
              "fc2.W": asarray([[1.0], [1.0]]), "fc2.b": asarray([0.0])}
    x = asarray([[1.0], [0.2]])                    # ReLU inputs 1.3, 0.5, 0.5, −0.3
    assert gradcheck_report.kink_margin(mlp, params, x) == pytest.approx(0.3)
    assert gradcheck_report.kink_margin(mlp, params, x[None]) == pytest.approx(0.3)   # shared θ, task axis

    pool = Model([Layer("pool", layers.maxpool), Layer("flat", layers.flatten), Layer("fc", layers.linear)],
                 losses.mse, {"fc.W": (2, 1), "fc.b": (1,)}, input_shape=(2, 4, 1), init=None)
    p = {"fc.W": asarray(np.ones((2, 1))), "fc.b": asarray(np.zeros(1))}
    windows = np.array([[3.0, 1.0, 0.0, 0.0], [2.5, 0.0, 0.0, 0.0]])   # left window gap 0.5, right: zeros
    assert gradcheck_report.kink_margin(pool, p, asarray(windows[None, :, :, None])) == pytest.approx(0.5)
    windows[:, 2:] = [[-1.0, -2.0], [-1.2, -3.0]]   # right window: −1 vs −1.2, a gap of 0.2
    assert gradcheck_report.kink_margin(pool, p, asarray(windows[None, :, :, None])) == pytest.approx(0.2)
