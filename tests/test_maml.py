"""The method's derivatives, proven against finite differences of the whole objective J.

All in float64. J(θ, α) = (1/B) Σ_i L^val_i(φ_{i,K}) is evaluated by ``meta_objective``,
which only runs the inner loop forward; the reverse pass in ``meta_gradient`` must match
its central differences to a relative error ≤ 1e-6.
"""
import numpy as np
import pytest

from numpy_amaml import gradcheck, layers, losses, architectures
from numpy_amaml.alpha_maml import AlphaMAML, TrainingDiverged
from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.maml import TaskBatch, adapt, meta_gradient, meta_objective
from numpy_amaml.model import Layer, Model
from numpy_amaml.optim import SGD, Adam, update_rate

TOL = 1e-6
H = 1e-6   # small step: ReLU kinks must not fall inside [x − h, x + h]


pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


def sinusoid_batch(B=3, N=5, seed=0):
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.1, 5, (B, 1, 1))
    phase = rng.uniform(0, np.pi, (B, 1, 1))
    x_support, x_query = rng.uniform(-5, 5, (B, N, 1)), rng.uniform(-5, 5, (B, N, 1))
    return TaskBatch(asarray(x_support), asarray(amplitude * np.sin(x_support - phase)),
                     asarray(x_query), asarray(amplitude * np.sin(x_query - phase)))


def image_batch(B=2, ways=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = asarray(np.tile(np.arange(ways), (B, 1)), dtype=np.int64)
    return TaskBatch(asarray(rng.standard_normal((B, ways, size, size, 1))), labels,
                     asarray(rng.standard_normal((B, ways, size, size, 1))), labels.copy())


def small_mlp():
    return architectures.sinusoid_mlp(hidden=(8, 8))


def numerical_meta_gradient(model, theta, batch, alpha, K):
    work = {k: v.copy() for k, v in theta.items()}
    return gradcheck.numerical_gradient_dict(lambda: meta_objective(model, work, batch, alpha, K), work, H)


def numerical_dJ_dalpha(model, theta, batch, alpha, K, name=None):
    def J(delta):
        if name is None:
            return meta_objective(model, theta, batch, alpha + delta, K)
        return meta_objective(model, theta, batch, {**alpha, name: alpha[name] + delta}, K)
    return (J(H) - J(-H)) / (2 * H)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_meta_gradient_mlp_matches_finite_differences_of_J(K):
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    result = meta_gradient(model, theta, batch, alpha=0.01, inner_steps=K)
    error = gradcheck.rel_error(result.grad, numerical_meta_gradient(model, theta, batch, 0.01, K))
    assert error < TOL, f"K={K}: ∇θJ rel. error {error:.2e}"


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_meta_gradient_cnn_matches_finite_differences_of_J(K, downsample):
    size = 8 if downsample == "stride" else 16       # four 2×2 pools need 16 pixels
    model = architectures.omniglot_cnn(ways=3, channels=3, downsample=downsample, image_size=size)
    batch, theta = image_batch(size=size), model.init_params(seed=2)
    alpha = 0.1
    result = meta_gradient(model, theta, batch, alpha, K)
    error = gradcheck.rel_error(result.grad, numerical_meta_gradient(model, theta, batch, alpha, K))
    assert error < TOL, f"CNN {downsample} K={K}: ∇θJ rel. error {error:.2e}"
    numeric = numerical_dJ_dalpha(model, theta, batch, alpha, K)
    assert abs(result.dJ_dalpha - numeric) / abs(numeric) < TOL


@pytest.mark.parametrize("K", [1, 2, 3])
def test_dJ_dalpha_matches_finite_differences_in_alpha(K):
    model, batch = small_mlp(), sinusoid_batch(seed=3)
    theta = model.init_params(seed=4)
    result = meta_gradient(model, theta, batch, alpha=0.02, inner_steps=K)
    numeric = numerical_dJ_dalpha(model, theta, batch, 0.02, K)
    assert abs(result.dJ_dalpha - numeric) / abs(numeric) < TOL


def test_dJ_dalpha_for_K1_is_one_dot_product_of_vectors_maml_already_has():
    """∂J/∂α = −(1/B) Σ_i ⟨∇L^val_i(φ_{i,1}), ∇L^tr_i(θ)⟩ for K = 1."""
    model, batch = small_mlp(), sinusoid_batch(B=4)
    theta = model.init_params(seed=5)
    r = meta_gradient(model, theta, batch, alpha=0.01, inner_steps=1, keep_path=True)
    query_grad_at_phi1, support_grad_at_theta = r.adjoints[1], r.inner_grads[0]
    by_hand = -sum(float((query_grad_at_phi1[k] * support_grad_at_theta[k]).sum()) for k in theta) / 4
    assert r.dJ_dalpha == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("K", [1, 3])
def test_per_tensor_alpha_meta_gradient_and_hypergradients(K):
    model, batch = small_mlp(), sinusoid_batch(seed=6)
    theta = model.init_params(seed=7)
    alpha = {name: 0.005 * (i + 1) for i, name in enumerate(sorted(theta))}
    r = meta_gradient(model, theta, batch, alpha, K)
    assert gradcheck.rel_error(r.grad, numerical_meta_gradient(model, theta, batch, alpha, K)) < TOL
    for name in alpha:
        numeric = numerical_dJ_dalpha(model, theta, batch, alpha, K, name)
        assert abs(r.dJ_dalpha[name] - numeric) <= TOL * max(abs(numeric), 1e-3), name


@pytest.mark.parametrize("task", ["sinusoid", "omniglot"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_first_order_equals_query_gradient_at_adapted_parameters(K, task):
    if task == "sinusoid":
        model, batch, alpha = small_mlp(), sinusoid_batch(), 0.01
    else:
        model, batch, alpha = architectures.omniglot_cnn(ways=3, channels=3, image_size=8), image_batch(), 0.1
    theta = model.init_params(seed=1)
    fo = meta_gradient(model, theta, batch, alpha, K, first_order=True)
    phi_K = adapt(model, theta, batch.x_support, batch.y_support, alpha, K)
    _, query_grad = model.loss_and_grad(phi_K, batch.x_query, batch.y_query)
    expected = {k: g.mean(axis=0) for k, g in query_grad.items()}
    assert gradcheck.rel_error(fo.grad, expected) < 1e-14


def test_second_order_differs_from_first_order_where_hessian_is_nonzero():
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    second = meta_gradient(model, theta, batch, 0.05, 1).grad
    first = meta_gradient(model, theta, batch, 0.05, 1, first_order=True).grad
    assert gradcheck.rel_error(second, first) > 1e-3


def test_closed_form_linear_model_mse():
    """Linear model ŷ = X w + b with MSE: H = (2/N) [X 1]ᵀ[X 1] is constant, so for K = 1
    ∇θJ = (I − αH^tr) ∇L^val(θ − α∇L^tr(θ)), all computed here by hand."""
    rng = np.random.default_rng(8)
    D, N, alpha = 3, 6, 0.1
    model = Model([Layer("fc", layers.linear)], losses.mse, {"fc.W": (D, 1), "fc.b": (1,)},
                  input_shape=(D,), init=lambda r: {"fc.W": r.standard_normal((D, 1)),
                                                      "fc.b": r.standard_normal(1)})
    theta = model.init_params(seed=9)
    Xs, Xq = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    ys, yq = rng.standard_normal((N, 1)), rng.standard_normal((N, 1))
    batch = TaskBatch(asarray(Xs[None]), asarray(ys[None]), asarray(Xq[None]), asarray(yq[None]))

    As, Aq = np.hstack([Xs, np.ones((N, 1))]), np.hstack([Xq, np.ones((N, 1))])   # [X 1]
    w = np.concatenate([to_numpy(theta["fc.W"])[:, 0], to_numpy(theta["fc.b"])])
    grad_tr = 2 / N * As.T @ (As @ w - ys[:, 0])
    H_tr = 2 / N * As.T @ As
    phi = w - alpha * grad_tr
    grad_val = 2 / N * Aq.T @ (Aq @ phi - yq[:, 0])
    by_hand = (np.eye(D + 1) - alpha * H_tr) @ grad_val

    r = meta_gradient(model, theta, batch, alpha, 1)
    ours = np.concatenate([to_numpy(r.grad["fc.W"])[:, 0], to_numpy(r.grad["fc.b"])])
    assert gradcheck.rel_error(ours, by_hand) < 1e-13
    assert r.dJ_dalpha == pytest.approx(-grad_val @ grad_tr, rel=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorized_meta_batch_equals_loop_over_tasks(first_order):
    model, batch = small_mlp(), sinusoid_batch(B=5)
    theta = model.init_params(seed=1)
    batched = meta_gradient(model, theta, batch, 0.03, 2, first_order)
    singles = [meta_gradient(model, theta, TaskBatch(*(a[i:i + 1] for a in batch)), 0.03, 2, first_order)
               for i in range(5)]
    looped = {k: np.mean([to_numpy(s.grad[k]) for s in singles], axis=0) for k in theta}
    assert gradcheck.rel_error(batched.grad, looped) < 1e-13
    assert batched.loss == pytest.approx(np.mean([s.loss for s in singles]), rel=1e-13)
    assert batched.dJ_dalpha == pytest.approx(np.mean([s.dJ_dalpha for s in singles]), rel=1e-12)


def _beta_rule_case(optimizer, warmup_steps):
    """Run the optimizer for a few steps; then check h_β = ∂J_t/∂β by finite differences
    of β ↦ J(θ_{t−1} − β u_{t−1}) at the β that made the last step."""
    model, batch = small_mlp(), sinusoid_batch(seed=11)
    theta = model.init_params(seed=12)
    alpha, K = 0.01, 2
    for _ in range(warmup_steps):
        theta_prev = theta
        g = meta_gradient(model, theta, batch, alpha, K).grad
        theta = optimizer.step(theta, g, h_beta=0.0)
    u_prev, beta = optimizer.prev_direction, optimizer.beta
    g_t = meta_gradient(model, theta, batch, alpha, K).grad
    h_beta = optimizer.beta_hypergradient(g_t)

    def J_t(b):
        return meta_objective(model, {k: theta_prev[k] - b * u_prev[k] for k in theta}, batch, alpha, K)
    numeric = (J_t(beta + H) - J_t(beta - H)) / (2 * H)
    return h_beta, numeric


def test_beta_rule_sgd_matches_derivative_of_next_J_in_beta():
    h_beta, numeric = _beta_rule_case(SGD(beta=0.01), warmup_steps=2)
    assert abs(h_beta - numeric) / abs(numeric) < TOL


def test_beta_rule_adam_matches_derivative_of_next_J_in_beta():
    h_beta, numeric = _beta_rule_case(Adam(beta=0.01), warmup_steps=3)
    assert abs(h_beta - numeric) / abs(numeric) < TOL


def test_alpha_maml_step_follows_design_order():
    """One AlphaMAML.step equals the hand-written sequence of docs/method.md §6."""
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    learner = AlphaMAML(model, dict(theta), 0.01, SGD(0.01, hyper_lr=1e-3), inner_steps=1,
                        alpha_hyper_lr=1e-3)
    learner.step(batch)        # a first step so that u_{t−1} exists
    theta1, alpha1, beta1, u_prev = learner.theta, learner.alpha, learner.optimizer.beta, learner.optimizer.prev_direction
    log = learner.step(batch)

    mg = meta_gradient(model, theta1, batch, alpha1, 1)
    h_alpha = mg.dJ_dalpha
    h_beta = -sum(float((mg.grad[k] * u_prev[k]).sum()) for k in theta)
    alpha2, beta2 = alpha1 - 1e-3 * h_alpha, beta1 - 1e-3 * h_beta
    theta2 = {k: theta1[k] - beta2 * mg.grad[k] for k in theta}
    assert log["h_alpha"] == pytest.approx(h_alpha, rel=1e-12)
    assert log["h_beta"] == pytest.approx(h_beta, rel=1e-12)
    assert learner.alpha == pytest.approx(alpha2, rel=1e-12)
    assert learner.optimizer.beta == pytest.approx(beta2, rel=1e-12)
    assert gradcheck.rel_error(learner.theta, theta2) < 1e-14


def test_maml_is_alpha_maml_with_zero_hypergradient_rates():
    model, batch = small_mlp(), sinusoid_batch()
    learner = AlphaMAML(model, model.init_params(seed=1), 0.01, Adam(0.001), inner_steps=1)
    for _ in range(3):
        learner.step(batch)
    assert learner.alpha == 0.01 and learner.optimizer.beta == 0.001


def test_rates_are_clamped_to_the_floor_and_counted():
    """A too-large α makes the inner step overshoot, so h_α > 0; with a huge γ_α the
    descent step would make α negative: it is clamped to the floor and counted."""
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    assert meta_gradient(model, theta, batch, 2.0, 1).dJ_dalpha > 0
    learner = AlphaMAML(model, theta, 2.0, SGD(1e-3), inner_steps=1, alpha_hyper_lr=1e3, alpha_floor=1e-4)
    log = learner.step(batch)
    assert learner.alpha == 1e-4 and log["alpha_clamps"] == 1


def test_update_rate_clamps_and_reports():
    assert update_rate(0.01, 2.0, 0.001, floor=1e-6) == (pytest.approx(0.008), False)
    assert update_rate(0.01, 20.0, 0.001, floor=1e-6) == (1e-6, True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the point
def test_non_finite_loss_stops_training_naming_the_iteration():
    model, batch = small_mlp(), sinusoid_batch()
    learner = AlphaMAML(model, model.init_params(seed=1), 1e6, SGD(1e3), inner_steps=3)
    with pytest.raises(TrainingDiverged, match=r"iteration \d+"):
        for _ in range(20):
            learner.step(batch)


@pytest.mark.parametrize("per_tensor", [False, True], ids=["scalar", "per-tensor"])
def test_the_path_is_kept_only_on_request_and_changes_no_number(per_tensor):
    """Without ``keep_path`` meta_gradient keeps of each task only λ_0 and the sums behind ∂J/∂α
    and cos_α (memory independent of K); with it, also every φ_k, ∇L^tr(φ_k), λ_k. The
    numbers are the same bit for bit."""
    model, batch, K = small_mlp(), sinusoid_batch(seed=2), 3
    theta = model.init_params(seed=3)
    alpha = {name: 0.01 * (i + 1) for i, name in enumerate(sorted(theta))} if per_tensor else 0.02
    lean = meta_gradient(model, theta, batch, alpha, K)
    full = meta_gradient(model, theta, batch, alpha, K, keep_path=True)
    assert lean.phis is None and lean.inner_grads is None and lean.adjoints is None
    assert (len(full.phis), len(full.inner_grads), len(full.adjoints)) == (K + 1, K, K + 1)
    assert (lean.loss, lean.support_loss, lean.dJ_dalpha, lean.cos_alpha) == \
           (full.loss, full.support_loss, full.dJ_dalpha, full.cos_alpha)
    assert gradcheck.rel_error(lean.grad, full.grad) == 0.0
    assert gradcheck.rel_error(full.grad, {k: lam.mean(axis=0) for k, lam in full.adjoints[0].items()}) == 0.0
