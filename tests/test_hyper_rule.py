"""The normalized hyper-rate rule beside the paper's additive one (docs/hyper_rules.md).

    additive:    α ← α − γ_α h_α,           β ← β − γ_β h_β
    normalized:  α ← α · exp(γ_α cos_α),    β ← β · exp(γ_β cos_β)
    h_α = −(1/B) ⟨a, b⟩ = −(1/B) ‖a‖ ‖b‖ cos_α,  a = (λ_{i,k+1}), b = (∇L^tr_i(φ_{i,k})) over i, k
    h_β = −⟨g_t, u_{t−1}⟩ = −‖g_t‖ ‖u_{t−1}‖ cos_β

All in float64. The derivatives behind the cosines (h_α, h_β, and ∂J/∂log α = α h_α) are
checked against central differences of J to a relative error ≤ 1e-6; the cosines against an
independent computation on the flattened vectors; and the property the rule exists for:
multiplying the loss by a constant leaves the normalized rule's rate trajectories unchanged
(after the obvious rescaling of α₀, β₀), and changes the additive rule's.
"""
import copy

import numpy as np
import pytest

from numpy_amaml import architectures, backend, losses
from numpy_amaml.alpha_maml import AlphaMAML
from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.maml import TaskBatch, meta_gradient, meta_objective, tensor_cosines
from numpy_amaml.model import Model
from numpy_amaml.optim import HYPER_RULES, SGD, Adam, update_rate_normalized
from tests.test_maml import sinusoid_batch

TOL = 1e-6
H = 1e-6

pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


def small_mlp():
    return architectures.sinusoid_mlp(hidden=(8, 8))


def flat(dicts):
    """One NumPy vector of every entry of a list of params dicts (tasks and steps stacked)."""
    return np.concatenate([to_numpy(d[name]).ravel() for d in dicts for name in sorted(d)])


def relative(a, b):
    return abs(a - b) / abs(b)


class ScaledMSE:
    """A loss module (numpy_amaml.losses protocol): c × MSE, with its gradient and R-op."""

    def __init__(self, c):
        self.c = c

    def forward(self, pred, target):
        loss, cache = losses.mse.forward(pred, target)
        return self.c * loss, cache

    def backward(self, cache):
        return self.c * losses.mse.backward(cache)

    def r_backward(self, Rpred, cache):
        return self.c * losses.mse.r_backward(Rpred, cache)


def scaled_mlp(c):
    """small_mlp() with the loss c × MSE (same layers, shapes and initialisation)."""
    base = small_mlp()
    return Model(base.layers, ScaledMSE(c), base.param_shapes, base.input_shape, base._init)


# ---- the rule and its arguments ---------------------------------------------------------------

def test_hyper_rules_are_named_and_an_unknown_rule_is_refused():
    assert HYPER_RULES == ("additive", "normalized")
    model = small_mlp()
    for make in (lambda: SGD(0.01, hyper_rule="multiplicative"),
                 lambda: Adam(0.01, hyper_rule="multiplicative"),
                 lambda: AlphaMAML(model, model.init_params(), 0.01, SGD(0.01), hyper_rule="Normalized")):
        with pytest.raises(ValueError, match=r"'additive', 'normalized'"):
            make()


def test_update_rate_normalized_is_a_bounded_factor_that_keeps_the_rate_positive():
    """rate · exp(γ cos): the factor lies in [e^{−γ}, e^{γ}], so even an absurd γ leaves the
    rate positive (no clamp needed); the floor only stops a long decline; γ = 0 is exact."""
    assert update_rate_normalized(0.01, 0.5, 0.1, floor=1e-8) == (pytest.approx(0.01 * np.exp(0.05), rel=1e-15), False)
    assert update_rate_normalized(0.01, -1.0, 30.0, floor=0.0) == (pytest.approx(0.01 * np.exp(-30), rel=1e-15), False)
    assert update_rate_normalized(0.01, -1.0, 30.0, floor=1e-8) == (1e-8, True)
    for cos in (-1.0, -0.3, 0.0, 0.7, 1.0):
        assert update_rate_normalized(0.0123, cos, 0.0, floor=1e-8) == (0.0123, False)


# ---- cos_α: the α hypergradient without its magnitude ------------------------------------------

@pytest.mark.parametrize("K", [1, 3])
def test_cos_alpha_reconstructs_the_alpha_hypergradient(K):
    """cos_α from ``meta_gradient`` (summed chunk by chunk, no path kept) equals ⟨a, b⟩/(‖a‖‖b‖) of the flattened stacks, and
    −(1/B) ‖a‖ ‖b‖ cos_α gives back ∂J/∂α, which matches finite differences of J."""
    model, batch, alpha, B = small_mlp(), sinusoid_batch(seed=3), 0.02, 3
    theta = model.init_params(seed=4)
    mg = meta_gradient(model, theta, batch, alpha, K, keep_path=True)
    a, b = flat(mg.adjoints[1:]), flat(mg.inner_grads)
    cos_alpha = meta_gradient(model, theta, batch, alpha, K).cos_alpha
    assert -1 <= cos_alpha <= 1
    assert cos_alpha == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12)
    h_alpha = -np.linalg.norm(a) * np.linalg.norm(b) * cos_alpha / B
    assert h_alpha == pytest.approx(mg.dJ_dalpha, rel=1e-12)
    numeric = (meta_objective(model, theta, batch, alpha + H, K) - meta_objective(model, theta, batch, alpha - H, K)) / (2 * H)
    assert relative(h_alpha, numeric) < TOL


def test_per_tensor_alpha_cosines_reconstruct_each_tensors_hypergradient():
    """With one α per tensor, a and b are restricted to each tensor, and so is the cosine."""
    model, batch, K, B = small_mlp(), sinusoid_batch(seed=6), 2, 3
    theta = model.init_params(seed=7)
    alpha = {name: 0.005 * (i + 1) for i, name in enumerate(sorted(theta))}
    mg = meta_gradient(model, theta, batch, alpha, K, keep_path=True)
    cosines = mg.cos_alpha
    for name in alpha:
        a = flat([{name: lam[name]} for lam in mg.adjoints[1:]])
        b = flat([{name: g[name]} for g in mg.inner_grads])
        assert cosines[name] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12), name
        assert -np.linalg.norm(a) * np.linalg.norm(b) * cosines[name] / B == pytest.approx(mg.dJ_dalpha[name], rel=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("K", [1, 3])
def test_a_tensor_whose_vectors_are_zero_up_to_rounding_has_cosine_zero(K, dtype):
    """MAML's CNN: every conv bias feeds batch norm, which subtracts the mean, so its gradients
    are exactly 0 in exact arithmetic; computed, they are rounding noise (~4ε of the whole
    vector's norm), and the cosine of two noise vectors is any number. It is reported as 0
    (‖a_t‖ ≤ √ε ‖a‖ or ‖b_t‖ ≤ √ε ‖b‖; maml.tensor_cosines), so the normalized rule leaves those
    α's alone; every other tensor keeps its cosine."""
    backend.set_dtype(dtype)
    model = architectures.omniglot_cnn(ways=3, channels=8, downsample="stride", image_size=16)
    rng = np.random.default_rng(0)
    x, labels = asarray(rng.random((3, 3, 16, 16, 1))), np.tile(np.arange(3), (3, 1))
    batch = TaskBatch(x, labels, asarray(rng.random((3, 3, 16, 16, 1))), labels)
    theta = model.init_params(seed=1)
    alpha = {name: 0.1 for name in theta}
    mg = meta_gradient(model, theta, batch, alpha, K, keep_path=True)
    biases = [name for name in theta if name.startswith("conv") and name.endswith(".b")]
    eps = np.finfo(dtype).eps
    whole_a = np.linalg.norm(flat(mg.adjoints[1:]).astype(float))
    for name in theta:
        a = flat([{name: lam[name]} for lam in mg.adjoints[1:]]).astype(float)
        if name in biases:
            assert 0 < np.linalg.norm(a) < 100 * eps * whole_a, name      # noise, not zero
            assert mg.cos_alpha[name] == 0.0, name
        else:
            assert np.linalg.norm(a) > 1e-3 * whole_a and mg.cos_alpha[name] != 0.0, name
    learner = AlphaMAML(model, theta, dict(alpha), SGD(0.001), inner_steps=K, alpha_hyper_lr=0.05,
                        hyper_rule="normalized")
    learner.step(batch)
    assert all(learner.alpha[name] == 0.1 for name in biases)


def test_tensor_cosines_threshold_is_sqrt_eps_of_the_whole():
    """The threshold, at its edge: ‖a_t‖² ≤ ε ‖a‖² gives 0, a little more gives the cosine."""
    eps = 1e-8
    whole = {"big": 1.0}
    assert tensor_cosines({"big": 0.5, "t": 1e-9}, {**whole, "t": 1e-8}, {**whole, "t": 1.0}, eps)["t"] == 0.0
    cos = tensor_cosines({"big": 0.5, "t": 1e-9}, {**whole, "t": 1.1e-8}, {**whole, "t": 1.0}, eps)["t"]
    assert cos == pytest.approx(1e-9 / np.sqrt(1.1e-8))
    assert tensor_cosines({"big": 0.5, "t": 1e-9}, {**whole, "t": 1.0}, {**whole, "t": 1e-9}, eps)["t"] == 0.0
    assert tensor_cosines({"t": 0.0}, {"t": 0.0}, {"t": 0.0}, eps) == {"t": 0.0}


@pytest.mark.parametrize("K", [1, 2])
def test_minus_cos_alpha_is_the_log_alpha_derivative_up_to_a_positive_factor(K):
    """The normalized rule descends on log α: ∂J/∂log α = α ∂J/∂α = −(α/B) ‖a‖ ‖b‖ cos_α,
    checked against central differences of J in log α (α e^{±h})."""
    model, batch, alpha, B = small_mlp(), sinusoid_batch(seed=8), 0.03, 3
    theta = model.init_params(seed=9)
    mg = meta_gradient(model, theta, batch, alpha, K, keep_path=True)
    a, b = flat(mg.adjoints[1:]), flat(mg.inner_grads)
    by_cosine = -alpha / B * np.linalg.norm(a) * np.linalg.norm(b) * mg.cos_alpha
    numeric = (meta_objective(model, theta, batch, alpha * np.exp(H), K)
               - meta_objective(model, theta, batch, alpha * np.exp(-H), K)) / (2 * H)
    assert relative(by_cosine, numeric) < TOL


# ---- cos_β: the β hypergradient without its magnitude -------------------------------------------

@pytest.mark.parametrize("make_optimizer, warmup", [(lambda: SGD(0.01), 2), (lambda: Adam(0.01), 3)],
                         ids=["sgd", "adam"])
def test_beta_cosine_reconstructs_h_beta_which_matches_finite_differences(make_optimizer, warmup):
    """cos_β = cos(g_t, u_{t−1}); −‖g_t‖ ‖u_{t−1}‖ cos_β = h_β = ∂J_t/∂β (central differences of
    β ↦ J(θ_{t−1} − β u_{t−1}) at the β of the last step), and β h_β = ∂J_t/∂log β, the
    derivative the normalized rule descends (up to its positive factor β ‖g_t‖ ‖u_{t−1}‖)."""
    optimizer = make_optimizer()
    model, batch, alpha, K = small_mlp(), sinusoid_batch(seed=11), 0.01, 2
    theta = model.init_params(seed=12)
    assert optimizer.beta_cosine(meta_gradient(model, theta, batch, alpha, K).grad) == 0.0   # no u_{t−1}
    for _ in range(warmup):
        theta_prev = theta
        theta = optimizer.step(theta, meta_gradient(model, theta, batch, alpha, K).grad, h_beta=0.0)
    u_prev, beta = optimizer.prev_direction, optimizer.beta
    g_t = meta_gradient(model, theta, batch, alpha, K).grad
    g, u = flat([g_t]), flat([u_prev])
    cos_beta = optimizer.beta_cosine(g_t)
    assert cos_beta == pytest.approx(g @ u / (np.linalg.norm(g) * np.linalg.norm(u)), rel=1e-12)
    h_beta = -np.linalg.norm(g) * np.linalg.norm(u) * cos_beta
    assert h_beta == pytest.approx(optimizer.beta_hypergradient(g_t), rel=1e-12)

    def J_t(b):
        return meta_objective(model, {k: theta_prev[k] - b * u_prev[k] for k in theta}, batch, alpha, K)
    assert relative(h_beta, (J_t(beta + H) - J_t(beta - H)) / (2 * H)) < TOL
    assert relative(beta * h_beta, (J_t(beta * np.exp(H)) - J_t(beta * np.exp(-H))) / (2 * H)) < TOL


# ---- the normalized rule inside AlphaMAML.step --------------------------------------------------

def test_normalized_step_follows_the_hand_written_sequence():
    """α ← α·exp(γ_α cos_α), β ← β·exp(γ_β cos_β), θ ← θ − β g_t, both cosines in the log."""
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    learner = AlphaMAML(model, dict(theta), 0.01, SGD(0.01, hyper_lr=0.05, hyper_rule="normalized"),
                        inner_steps=2, alpha_hyper_lr=0.1, hyper_rule="normalized")
    first = learner.step(batch)
    assert first["cos_beta"] == 0.0 and first["beta"] == 0.01          # no u_{t−1} yet
    theta1, alpha1, beta1 = learner.theta, learner.alpha, learner.optimizer.beta
    u_prev = learner.optimizer.prev_direction
    log = learner.step(batch)

    mg = meta_gradient(model, theta1, batch, alpha1, 2, keep_path=True)
    a, b = flat(mg.adjoints[1:]), flat(mg.inner_grads)
    g, u = flat([mg.grad]), flat([u_prev])
    cos_alpha = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    cos_beta = g @ u / (np.linalg.norm(g) * np.linalg.norm(u))
    assert log["cos_alpha"] == pytest.approx(cos_alpha, rel=1e-12)
    assert log["cos_beta"] == pytest.approx(cos_beta, rel=1e-12)
    assert log["h_alpha"] == pytest.approx(mg.dJ_dalpha, rel=1e-12)
    assert learner.alpha == pytest.approx(alpha1 * np.exp(0.1 * cos_alpha), rel=1e-12)
    assert learner.optimizer.beta == pytest.approx(beta1 * np.exp(0.05 * cos_beta), rel=1e-12)
    beta2 = learner.optimizer.beta
    for name in theta:
        np.testing.assert_allclose(to_numpy(learner.theta[name]), to_numpy(theta1[name] - beta2 * mg.grad[name]),
                                   rtol=1e-13, atol=1e-15)


def test_normalized_rule_keeps_rates_positive_where_the_additive_rule_clamps():
    """α = 2 overshoots (h_α > 0, large): the additive step with γ_α = 10³ would make α negative
    and is clamped; the multiplicative step with a large γ_α = 2 only divides α by at most e²
    per iteration: α stays positive with no clamp. The same holds for β."""
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    additive = AlphaMAML(model, dict(theta), 2.0, SGD(1e-3), alpha_hyper_lr=1e3, alpha_floor=1e-4)
    assert additive.step(batch)["alpha_clamps"] == 1

    learner = AlphaMAML(model, dict(theta), 2.0, SGD(0.05, hyper_lr=2.0, hyper_rule="normalized"),
                        alpha_hyper_lr=2.0, alpha_floor=1e-4, hyper_rule="normalized")
    alphas, betas = [2.0], [0.05]
    for _ in range(6):
        log = learner.step(batch)
        alphas.append(log["alpha"])
        betas.append(log["beta"])
    assert log["alpha_clamps"] == 0 and log["beta_clamps"] == 0
    for rates in (alphas, betas):
        ratios = np.array(rates[1:]) / np.array(rates[:-1])
        assert np.all(ratios >= np.exp(-2.0) * (1 - 1e-12)) and np.all(ratios <= np.exp(2.0) * (1 + 1e-12))
    assert alphas[1] < 2.0 and min(alphas) > 0


@pytest.mark.parametrize("make_optimizer", [lambda rule: SGD(0.01, hyper_rule=rule),
                                            lambda rule: Adam(0.001, hyper_rule=rule)], ids=["sgd", "adam"])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_maml_is_unchanged_bit_for_bit_under_both_rules(make_optimizer, per_tensor):
    """γ_α = γ_β = 0: the normalized rule multiplies by exp(0) = 1, exactly."""
    model, batch = small_mlp(), sinusoid_batch()
    theta = model.init_params(seed=1)
    alpha = {name: 0.01 for name in theta} if per_tensor else 0.01
    runs = {}
    for rule in HYPER_RULES:
        learner = AlphaMAML(model, dict(theta), alpha, make_optimizer(rule), inner_steps=2, hyper_rule=rule)
        for _ in range(3):
            learner.step(batch)
        runs[rule] = learner
    additive, normalized = runs["additive"], runs["normalized"]
    assert additive.alpha == normalized.alpha == alpha
    assert additive.optimizer.beta == normalized.optimizer.beta == make_optimizer("additive").beta
    for name in theta:
        assert np.array_equal(to_numpy(additive.theta[name]), to_numpy(normalized.theta[name])), name


def test_resume_from_state_dict_is_bit_exact_under_the_normalized_rule():
    model, batch = small_mlp(), sinusoid_batch()

    def fresh():
        return AlphaMAML(model, model.init_params(seed=1), 0.01, Adam(0.001, hyper_lr=0.02, hyper_rule="normalized"),
                         inner_steps=1, alpha_hyper_lr=0.05, hyper_rule="normalized")
    straight = fresh()
    for _ in range(4):
        straight.step(batch)
    first = fresh()
    for _ in range(2):
        first.step(batch)
    resumed = fresh()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for _ in range(2):
        resumed.step(batch)
    assert (resumed.alpha, resumed.optimizer.beta, resumed.iteration) == \
           (straight.alpha, straight.optimizer.beta, straight.iteration)
    for name in straight.theta:
        assert np.array_equal(to_numpy(resumed.theta[name]), to_numpy(straight.theta[name])), name


# ---- the property that matters: scale-free --------------------------------------------------------

def scaled_run(c, rule, alpha0, beta0, gamma_alpha, gamma_beta, steps=6, K=2):
    """Alpha MAML with plain SGD on the loss c × MSE, from α₀/c and β₀/c: the rate trajectories
    multiplied back by c, the θ trajectory, and the query losses divided by c."""
    model, theta = scaled_mlp(c), small_mlp().init_params(seed=1)
    learner = AlphaMAML(model, theta, alpha0 / c, SGD(beta0 / c, hyper_lr=gamma_beta, hyper_rule=rule),
                        inner_steps=K, alpha_hyper_lr=gamma_alpha, hyper_rule=rule)
    alphas, betas, thetas, losses_ = [], [], [], []
    for t in range(steps):
        log = learner.step(sinusoid_batch(seed=20 + t))
        alphas.append(c * log["alpha"])
        betas.append(c * log["beta"])
        losses_.append(log["query_loss"] / c)
        thetas.append(flat([learner.theta]))
    return np.array(alphas), np.array(betas), np.array(thetas), np.array(losses_)


@pytest.mark.parametrize("c", [0.1, 10.0])
def test_normalized_rule_is_invariant_to_the_scale_of_the_loss(c):
    """Multiply the loss by c and start from α₀/c, β₀/c (plain SGD). Then every step is the same:
    the inner step (α₀/c)(c ∇L^tr) = α₀ ∇L^tr gives the same φ, the adjoints and g_t are
    multiplied by c, the meta step (β₀/c)(c g_t) = β₀ g_t is the same, and every cosine is
    unchanged. So under the normalized rule c·α_t, c·β_t, θ_t and J_t/c do not depend on c."""
    reference = scaled_run(1.0, "normalized", 0.01, 0.01, gamma_alpha=0.1, gamma_beta=0.1)
    scaled = scaled_run(c, "normalized", 0.01, 0.01, gamma_alpha=0.1, gamma_beta=0.1)
    assert reference[0][-1] > 1.2 * 0.01 and reference[1][-1] > 1.2 * 0.01      # both rates moved
    for name, ours, ref in zip(("c·alpha", "c·beta", "theta", "query loss / c"), scaled, reference):
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("c", [0.1, 3.0])
def test_additive_rule_depends_on_the_scale_of_the_loss(c):
    """The same experiment with the additive rule: at the first step φ is the same but h_α is
    multiplied by c², so c·α_1 − α₀ = c³ (α_1 − α₀) of the unscaled run (its γ_α would have to
    be divided by c³), and the trajectories part."""
    reference = scaled_run(1.0, "additive", 0.01, 0.01, gamma_alpha=1e-5, gamma_beta=1e-5)
    scaled = scaled_run(c, "additive", 0.01, 0.01, gamma_alpha=1e-5, gamma_beta=1e-5)
    assert scaled[0][0] - 0.01 == pytest.approx(c ** 3 * (reference[0][0] - 0.01), rel=1e-9)
    assert np.max(np.abs(scaled[0] - reference[0]) / reference[0]) > 1e-2, "additive α should depend on c"
    assert np.max(np.abs(scaled[1] - reference[1]) / reference[1]) > 1e-3, "additive β should depend on c"


def adam_step_tensor_by_tensor(theta, grad, m, v, t, beta, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's step written as a loop over the tensors (θ, grad, m, v dicts; t the step number):
    (new θ, m, v, u), the reference for the optimizer's one-vector step."""
    m = {k: b1 * m[k] + (1 - b1) * g for k, g in grad.items()}
    v = {k: b2 * v[k] + (1 - b2) * g * g for k, g in grad.items()}
    u = {k: (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps) for k in grad}
    return {k: theta[k] - beta * u[k] for k in theta}, m, v, u


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make_optimizer", [lambda: SGD(beta=0.01, hyper_lr=0.05, hyper_rule="normalized"),
                                            lambda: Adam(beta=0.01, hyper_lr=0.05, hyper_rule="normalized")],
                         ids=["sgd", "adam"])
def test_the_one_vector_step_is_the_tensor_by_tensor_step_bit_for_bit(make_optimizer, dtype):
    """The optimizers step on θ as one vector (params.flatten); over 5 steps with β moving, θ, u_t
    and Adam's moments (as the state_dict's per-tensor dicts) equal a loop over the tensors
    exactly, in float32 and float64; the returned θ and u_t are views of one vector each."""
    rng = np.random.default_rng(0)
    shapes = {"W": (3, 4), "b": (4,), "gamma": (2, 3, 5)}
    theta = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    optimizer, reference = make_optimizer(), dict(theta)
    m = {k: np.zeros(s, dtype) for k, s in shapes.items()}
    v = dict(m)
    for t in range(1, 6):
        grad = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        theta = optimizer.step(theta, grad, optimizer.beta_hypergradient(grad))
        if isinstance(optimizer, Adam):
            reference, m, v, u = adam_step_tensor_by_tensor(reference, grad, m, v, t, optimizer.beta)
            state = optimizer.state_dict()
            assert all(np.array_equal(state["m"][k], m[k]) and np.array_equal(state["v"][k], v[k]) for k in shapes)
        else:
            u = grad
            reference = {k: reference[k] - optimizer.beta * grad[k] for k in shapes}
        for k in shapes:
            assert theta[k].dtype == dtype and np.array_equal(theta[k], reference[k]), (t, k)
            assert np.array_equal(optimizer.prev_direction[k], u[k]), (t, k)
    bases = {id(a.base) for a in theta.values()} | {id(a.base) for a in optimizer.prev_direction.values()}
    assert len(bases) == 2 and all(a.base is not None for a in theta.values())


def test_adam_continues_from_a_checkpoint_of_per_tensor_moments():
    """A state_dict holds the moments as per-tensor dicts (the checkpoint's layout, as before the
    one-vector step): loading one and stepping on gives exactly what the uninterrupted optimizer gives."""
    rng = np.random.default_rng(1)
    theta = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(a.shape) for k, a in theta.items()} for _ in range(4)]
    whole, first = Adam(beta=0.01), Adam(beta=0.01)
    theta_whole = theta_first = theta
    for g in grads[:2]:
        theta_whole, theta_first = whole.step(theta_whole, g, 0.0), first.step(theta_first, g, 0.0)
    state = copy.deepcopy(first.state_dict())
    assert set(state["m"]) == set(theta) and state["m"]["W"].shape == (3, 4)
    resumed = Adam(beta=0.01)
    resumed.load_state_dict(state)
    theta_resumed = {k: a.copy() for k, a in theta_first.items()}
    for g in grads[2:]:
        theta_whole, theta_resumed = whole.step(theta_whole, g, 0.0), resumed.step(theta_resumed, g, 0.0)
    assert all(np.array_equal(theta_whole[k], theta_resumed[k]) for k in theta)


def test_the_gradient_is_matched_to_theta_by_name_not_by_position():
    """A gradient dict in another key order than θ gives the same step (the one-vector step
    flattens it in θ's order), and prev_direction follows θ's order."""
    rng = np.random.default_rng(2)
    theta = {"W": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)}
    grad = {"W": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)}
    reordered = {"b": grad["b"], "W": grad["W"]}
    for make in (lambda: SGD(beta=0.1), lambda: Adam(beta=0.1)):
        in_order, shuffled = make(), make()
        want, got = in_order.step(theta, grad, 0.0), shuffled.step(theta, reordered, 0.0)
        assert list(got) == list(theta) and list(shuffled.prev_direction) == list(theta)
        assert all(np.array_equal(got[k], want[k]) for k in theta)
