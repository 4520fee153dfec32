"""Learned inner rates (numpy_amaml/learned_rates.py and the per-parameter and per-step α of
numpy_amaml/maml.py): Meta-SGD and LSLR.

The derivatives are proven against finite differences of the whole objective J in float64
(relative error ≤ 1e-6), for K = 1, 2, 3 on the MLP and a small batch-norm CNN:
∇_θ J with an elementwise α, ∂J/∂α per parameter (every entry) and per tensor and step.
Then: batched tasks equal a loop over tasks, the layouts agree with each other where they
describe the same α, a step is the meta-optimizer's step on (θ, α), resume is bit-exact,
and the command line trains, logs, draws, evaluates and sweeps the two methods.
"""
import json

import numpy as np
import pytest

from numpy_amaml import architectures, backend, gradcheck
from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.checkpoint import load_checkpoint, save_checkpoint
from numpy_amaml.cli import main
from numpy_amaml.config import resolve_config
from numpy_amaml.learned_rates import (LearnedRates, alpha_statistics, check_alpha, describe_alpha, initial_alpha,
                                       logged_alpha)
from numpy_amaml.maml import TaskBatch, adaptation_path, alpha_layout, inner_loop, meta_gradient, meta_objective
from numpy_amaml.optim import SGD, Adam
from numpy_amaml.run_folder import read_metrics
from numpy_amaml.sweep_results import read_csv
from tests.test_maml import image_batch, sinusoid_batch, small_mlp

TOL = 1e-6
H = 1e-6


def small_cnn():
    """A 3-way batch-norm CNN on 8×8 images (the conv biases feed batch norm)."""
    return architectures.omniglot_cnn(ways=3, channels=3, downsample="stride", image_size=8)


def problem(net, seed=0):
    """(model, θ, batch) of a small MLP or CNN problem."""
    if net == "mlp":
        model, batch = small_mlp(), sinusoid_batch(seed=seed)
    else:
        model, batch = small_cnn(), image_batch(seed=seed)
    return model, model.init_params(seed=seed + 1), batch


def per_parameter_alpha(theta, seed, low, high):
    """A Meta-SGD α: every entry its own rate, uniform in [low, high]."""
    rng = np.random.default_rng(seed)
    return {name: asarray(rng.uniform(low, high, value.shape)) for name, value in theta.items()}


def per_step_alpha(theta, K, low, high):
    """An LSLR α: K dicts, every tensor and step its own rate, spread over [low, high]."""
    names = list(theta)
    return [{name: low + (high - low) * (i + k * len(names)) / (K * len(names)) for i, name in enumerate(names)}
            for k in range(K)]


RATES = {"mlp": (0.005, 0.05), "cnn": (0.02, 0.2)}


# ---- the derivatives, against finite differences of J (float64) --------------------------------

@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_per_parameter_alpha_gradients_match_finite_differences_of_J(K, net):
    """∇_θ J with φ_{k+1} = φ_k − α ⊙ ∇L^tr(φ_k), and ∂J/∂α = −(1/B) Σ_i Σ_k λ_{i,k+1} ⊙ ∇L^tr_i(φ_{i,k})
    entry by entry, each against central differences of J."""
    model, theta, batch = problem(net)
    alpha = per_parameter_alpha(theta, K, *RATES[net])
    result = meta_gradient(model, theta, batch, alpha, K)

    work = {k: v.copy() for k, v in theta.items()}
    numeric_theta = gradcheck.numerical_gradient_dict(lambda: meta_objective(model, work, batch, alpha, K), work, H)
    assert gradcheck.rel_error(result.grad, numeric_theta) < TOL, "∇_θ J"

    rates = {k: v.copy() for k, v in alpha.items()}
    numeric_alpha = gradcheck.numerical_gradient_dict(lambda: meta_objective(model, theta, batch, rates, K), rates, H)
    assert {k: v.shape for k, v in result.dJ_dalpha.items()} == {k: v.shape for k, v in theta.items()}
    error = gradcheck.rel_error(result.dJ_dalpha, numeric_alpha)
    assert error < TOL, f"∂J/∂α per parameter: rel. error {error:.2e}"


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_per_step_alpha_gradients_match_finite_differences_of_J(K, net):
    """LSLR: ∂J/∂α_k[t] = −(1/B) Σ_i ⟨λ_{i,k+1}, ∇L^tr_i(φ_{i,k})⟩ restricted to tensor t (step k
    alone), for every step and tensor, and ∇_θ J, against central differences of J."""
    model, theta, batch = problem(net, seed=2)
    alpha = per_step_alpha(theta, K, *RATES[net])
    result = meta_gradient(model, theta, batch, alpha, K)

    work = {k: v.copy() for k, v in theta.items()}
    numeric_theta = gradcheck.numerical_gradient_dict(lambda: meta_objective(model, work, batch, alpha, K), work, H)
    assert gradcheck.rel_error(result.grad, numeric_theta) < TOL, "∇_θ J"

    assert isinstance(result.dJ_dalpha, list) and len(result.dJ_dalpha) == K
    ours, numeric = [], []
    for k in range(K):
        for name in theta:
            def J(delta):
                nudged = [dict(rate) for rate in alpha]
                nudged[k][name] += delta
                return meta_objective(model, theta, batch, nudged, K)
            ours.append(result.dJ_dalpha[k][name])
            numeric.append((J(H) - J(-H)) / (2 * H))
    error = gradcheck.rel_error(np.array(ours), np.array(numeric))
    assert error < TOL, f"∂J/∂α per tensor and step: rel. error {error:.2e}"


# ---- the layouts agree where they describe the same α ------------------------------------------

@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("K", [1, 3])
def test_a_constant_per_parameter_alpha_is_the_scalar_alpha(K):
    """α ⊙ ∇L with every entry = a is a ∇L: the same J and ∇_θ J as the scalar a, and ∂J/∂α summed
    over every entry is the scalar's ∂J/∂α (the scalar rate moves every entry at once)."""
    model, theta, batch = problem("cnn", seed=4)
    a = 0.07
    scalar = meta_gradient(model, theta, batch, a, K)
    entries = meta_gradient(model, theta, batch, {k: asarray(np.full(v.shape, a)) for k, v in theta.items()}, K)
    assert entries.loss == pytest.approx(scalar.loss, rel=1e-13)
    assert gradcheck.rel_error(entries.grad, scalar.grad) < 1e-13
    total = sum(float(v.sum()) for v in entries.dJ_dalpha.values())
    assert total == pytest.approx(scalar.dJ_dalpha, rel=1e-10)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("K", [1, 3])
def test_per_step_rates_sum_to_the_per_tensor_hypergradient(K):
    """K equal per-step rates are the per-tensor α: the same ∇_θ J, and Σ_k ∂J/∂α_k[t] = ∂J/∂α[t]."""
    model, theta, batch = problem("mlp", seed=5)
    per_tensor = {name: 0.01 * (i + 1) for i, name in enumerate(theta)}
    tied = meta_gradient(model, theta, batch, per_tensor, K)
    steps = meta_gradient(model, theta, batch, [dict(per_tensor) for _ in range(K)], K)
    assert gradcheck.rel_error(steps.grad, tied.grad) == 0.0
    for name in theta:
        assert sum(step[name] for step in steps.dJ_dalpha) == pytest.approx(tied.dJ_dalpha[name], rel=1e-12)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("layout", ["per parameter", "per step"])
def test_batched_tasks_equal_a_loop_over_tasks(layout):
    model, theta, batch = problem("cnn", seed=6)
    K = 2
    alpha = per_parameter_alpha(theta, 7, 0.02, 0.2) if layout == "per parameter" else per_step_alpha(theta, K, 0.02, 0.2)
    batched = meta_gradient(model, theta, batch, alpha, K)
    singles = [meta_gradient(model, theta, TaskBatch(*(a[i:i + 1] for a in batch)), alpha, K)
               for i in range(batch.x_support.shape[0])]
    assert gradcheck.rel_error(batched.grad, {k: np.mean([to_numpy(s.grad[k]) for s in singles], axis=0)
                                              for k in theta}) < 1e-13
    if layout == "per parameter":
        looped = {k: np.mean([to_numpy(s.dJ_dalpha[k]) for s in singles], axis=0) for k in theta}
        assert gradcheck.rel_error(batched.dJ_dalpha, looped) < 1e-13
    else:
        for k in range(K):
            for name in theta:
                looped = np.mean([s.dJ_dalpha[k][name] for s in singles])
                assert batched.dJ_dalpha[k][name] == pytest.approx(looped, rel=1e-10, abs=1e-15)


@pytest.mark.usefixtures("float64")
def test_the_path_is_kept_only_on_request_and_changes_no_number_per_parameter():
    model, theta, batch = problem("mlp", seed=8)
    alpha = per_parameter_alpha(theta, 9, 0.005, 0.05)
    lean, full = (meta_gradient(model, theta, batch, alpha, 3, keep_path=keep) for keep in (False, True))
    assert lean.phis is None and len(full.phis) == 4
    assert lean.loss == full.loss and lean.cos_alpha == full.cos_alpha
    for name in theta:
        assert np.array_equal(to_numpy(lean.dJ_dalpha[name]), to_numpy(full.dJ_dalpha[name]))
        by_path = -sum(full.adjoints[k + 1][name] * full.inner_grads[k][name] for k in range(3)).mean(axis=0)
        assert gradcheck.rel_error(lean.dJ_dalpha[name], by_path) < 1e-14


def test_alpha_layouts_are_named_and_wrong_ones_refused():
    shapes = {"a.W": (2, 3), "a.b": (3,)}
    assert alpha_layout(0.1, shapes) == ("scalar", False)
    assert alpha_layout({"a.W": 0.1, "a.b": 0.2}, shapes) == ("per tensor", False)
    assert alpha_layout({"a.W": np.ones((2, 3)), "a.b": np.ones(3)}, shapes) == ("per parameter", False)
    assert alpha_layout([{"a.W": 0.1, "a.b": 0.2}] * 2, shapes, 2) == ("per tensor", True)
    with pytest.raises(ValueError, match="one rate per inner step \\(3\\), got 2"):
        alpha_layout([0.1, 0.2], shapes, 3)
    with pytest.raises(ValueError, match="shaped like each tensor: α\\['a.W'\\] is \\(3, 2\\)"):
        alpha_layout({"a.W": np.ones((3, 2)), "a.b": np.ones(3)}, shapes)
    with pytest.raises(ValueError, match="α\\['a.b'\\] is a float"):
        alpha_layout({"a.W": np.ones((2, 3)), "a.b": 0.1}, shapes)
    with pytest.raises(ValueError, match="has rates for \\['a.W'\\]"):
        alpha_layout({"a.W": 0.1}, shapes)
    with pytest.raises(ValueError, match="share one layout"):
        alpha_layout([0.1, {"a.W": 0.1, "a.b": 0.2}], shapes)


@pytest.mark.usefixtures("float64")
def test_steps_beyond_a_per_step_alpha_take_its_last_rate():
    """LSLR evaluated with more inner steps than it was trained with (Omniglot: 1 → 3; sinusoid:
    1 → 10): step k ≥ K takes α_{K−1}, in the inner loop and in the step-by-step evaluation."""
    model, theta, batch = problem("mlp", seed=10)
    alpha = per_step_alpha(theta, 2, 0.005, 0.05)
    extended = alpha + [alpha[-1]] * 3
    ours = inner_loop(model, theta, batch.x_support, batch.y_support, alpha, 5)[0]
    spelled_out = inner_loop(model, theta, batch.x_support, batch.y_support, extended, 5)[0]
    stepwise = list(adaptation_path(model, theta, batch.x_support, batch.y_support, alpha, 5))
    for phi, expected, step in zip(ours, spelled_out, stepwise):
        assert gradcheck.rel_error(phi, expected) == 0.0 and gradcheck.rel_error(step, expected) == 0.0
    with pytest.raises(ValueError, match="one rate per inner step \\(5\\)"):
        meta_gradient(model, theta, batch, alpha, 5)       # training takes exactly one rate per step


# ---- the learner: one meta-optimizer step on (θ, α) ---------------------------------------------

@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("method", ["meta-sgd", "lslr"])
def test_a_step_is_the_meta_optimizers_step_on_theta_and_alpha(method):
    """Adam at fixed β on the joint vector (θ, α) with gradient (∇_θ J, ∂J/∂α), by hand: two steps."""
    model, theta, batch = problem("mlp", seed=11)
    K = 2
    alpha = per_parameter_alpha(theta, 12, 0.005, 0.05) if method == "meta-sgd" else per_step_alpha(theta, K, 0.005, 0.05)
    learner = LearnedRates(model, dict(theta), alpha, Adam(0.01), inner_steps=K)
    by_hand = Adam(0.01)
    flat = lambda a: ({f"alpha.{n}": a[n] for n in theta} if isinstance(a, dict) else
                      {f"alpha.{n}": np.array([rate[n] for rate in a]) for n in theta})
    for _ in range(2):
        mg = meta_gradient(model, learner.theta, batch, learner.alpha, K)
        expected = by_hand.step({**learner.theta, **flat(learner.alpha)}, {**mg.grad, **flat(mg.dJ_dalpha)}, 0.0)
        log = learner.step(batch)
        assert gradcheck.rel_error({**learner.theta, **flat(learner.alpha)}, expected) == 0.0
    assert learner.optimizer.beta == 0.01 and log["beta"] == 0.01            # β is not learned
    assert log["alpha"] == pytest.approx(np.mean([np.mean(to_numpy(v)) for v in flat(learner.alpha).values()]))
    assert set(log["h_alpha"]) == set(theta) and log["alpha_clamps"] == 0


@pytest.mark.parametrize("method", ["meta-sgd", "lslr"])
def test_learner_resume_is_bit_exact_and_float32_stays_float32(method, tmp_path):
    """In the training dtype (float32): α stays float32 (no upcast of φ), and a learner restored
    from a saved state_dict continues exactly."""
    model, theta, batch = problem("cnn", seed=13)
    theta = {k: v.astype(np.float32) for k, v in theta.items()}
    batch = TaskBatch(batch.x_support.astype(np.float32), batch.y_support,
                      batch.x_query.astype(np.float32), batch.y_query)
    config = resolve_config({"method": method, "alpha": 0.1, "inner_steps": 2})
    alpha = initial_alpha(config, model.param_shapes, dtype=np.float32)
    first = LearnedRates(model, dict(theta), alpha, Adam(0.001), inner_steps=2)
    for _ in range(2):
        first.step(batch)
    save_checkpoint(tmp_path / "state.npz", first.state_dict())
    state = load_checkpoint(tmp_path / "state.npz")
    second = LearnedRates(model, dict(theta), initial_alpha(config, model.param_shapes, np.float32), Adam(0.001),
                          inner_steps=2)
    second.load_state_dict(state)
    first.step(batch), second.step(batch)
    assert all(first.theta[k].dtype == np.float32 and np.array_equal(first.theta[k], second.theta[k]) for k in theta)
    if method == "meta-sgd":
        assert all(first.alpha[k].dtype == np.float32 and np.array_equal(first.alpha[k], second.alpha[k])
                   for k in theta)
    else:
        assert first.alpha == second.alpha and all(np.float32(r) == r for step in first.alpha for r in step.values())


def test_learned_alpha_summaries():
    per_parameter = {"a.W": np.array([[0.1, 0.3]]), "a.b": np.array([-0.2])}
    assert logged_alpha(per_parameter) == pytest.approx((0.2 + -0.2) / 2)
    assert alpha_statistics(per_parameter) == {"alpha_mean": {"a.W": pytest.approx(0.2), "a.b": -0.2},
                                               "alpha_min": {"a.W": 0.1, "a.b": -0.2},
                                               "alpha_max": {"a.W": 0.3, "a.b": -0.2}}
    per_step = [{"a.W": 0.1, "a.b": 0.4}, {"a.W": 0.3, "a.b": 0.2}]
    assert logged_alpha(per_step) == pytest.approx(0.25)
    assert alpha_statistics(per_step)["alpha_steps"] == {"a.W": [0.1, 0.3], "a.b": [0.4, 0.2]}
    assert alpha_statistics(0.1) == {} and alpha_statistics({"a.W": 0.1}) == {}
    assert logged_alpha({"a.W": 0.1}) == {"a.W": 0.1}
    assert describe_alpha(per_step).startswith("per tensor and step, mean [min, max]: a.W 0.2 [0.1, 0.3]")


def test_a_checkpoints_alpha_must_have_the_methods_layout():
    shapes = {"a.W": (1, 2)}
    lslr = resolve_config({"method": "lslr", "inner_steps": 2})
    check_alpha([{"a.W": 0.1}, {"a.W": 0.2}], lslr, shapes)
    with pytest.raises(ValueError, match="its α is per tensor, lslr needs it per tensor and per step"):
        check_alpha({"a.W": 0.1}, lslr, shapes)
    meta_sgd = resolve_config({"method": "meta-sgd", "dtype": "float32"})
    with pytest.raises(ValueError, match="its α is not float32"):
        check_alpha({"a.W": np.ones((1, 2))}, meta_sgd, shapes)


# ---- the command line: train, log, draw, resume, evaluate, sweep -------------------------------

FAST = ["--no-progress", "--checkpoint-every", "1000"]


def train(tmp_path, name, *options):
    out = tmp_path / name
    return main(["train", "--out", str(out), *FAST, *map(str, options)]), out


@pytest.mark.parametrize("method, K", [("meta-sgd", 1), ("lslr", 2)])
def test_train_logs_alpha_per_tensor_draws_it_and_evaluates_with_it(tmp_path, method, K, capsys):
    code, out = train(tmp_path, method, "--method", method, "--inner-steps", K, "--iterations", 12,
                      "--log-every", 4)
    assert code == 0, capsys.readouterr().err
    assert f"α = per {'parameter' if method == 'meta-sgd' else 'tensor and step'}, mean [min, max]: fc1.W" \
        in capsys.readouterr().out
    records = read_metrics(out)
    assert [r["iteration"] for r in records] == [1, 4, 8, 12]
    names = set(sinusoid_names())
    for r in records:
        assert set(r["alpha_mean"]) == set(r["alpha_min"]) == set(r["alpha_max"]) == set(r["h_alpha"]) == names
        assert all(r["alpha_min"][n] <= r["alpha_mean"][n] <= r["alpha_max"][n] for n in names)
        assert r["beta"] == 0.001 and isinstance(r["alpha"], float)
    assert records[-1]["alpha_max"]["fc1.W"] > records[-1]["alpha_min"]["fc1.W"]     # the rates spread apart
    if method == "lslr":
        assert all(len(steps) == K for steps in records[-1]["alpha_steps"].values())
    assert (out / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    state = load_checkpoint(out / "checkpoint.npz")
    assert main(["evaluate", str(out), "--tasks", "20", "--steps", "1,3"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["alpha"] == pytest.approx(records[-1]["alpha"])
    from numpy_amaml.evaluation import evaluate_sinusoid
    model = architectures.sinusoid_mlp()
    expected, _ = evaluate_sinusoid(model, state["theta"], state["alpha"], steps=(1, 3), tasks=20,
                                    seed=evaluation_seed(0))
    assert [row["mean"] for row in evaluation["results"]] == [expected[k][0] for k in (0, 1, 3)]


def sinusoid_names():
    return architectures.sinusoid_mlp().param_shapes


def evaluation_seed(seed):
    from numpy_amaml.tasks import seed_streams
    return seed_streams(seed)["eval_tasks"]


@pytest.mark.parametrize("method", ["meta-sgd", "lslr"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, method):
    common = ["--method", method, "--inner-steps", 2, "--seed", 3, "--log-every", 5, "--no-figures"]
    assert train(tmp_path, "whole", "--iterations", 20, *common)[0] == 0
    code, half = train(tmp_path, "half", "--iterations", 10, *common)
    assert code == 0
    assert main(["train", "--resume", str(half), "--iterations", "20", *FAST]) == 0
    whole, resumed = (load_checkpoint(folder / "checkpoint.npz") for folder in (tmp_path / "whole", half))
    for name, value in whole["theta"].items():
        assert np.array_equal(resumed["theta"][name], value), name
    for key in whole["optimizer"]["m"]:                     # θ's and α's moments
        assert np.array_equal(resumed["optimizer"]["m"][key], whole["optimizer"]["m"][key]), key
    if method == "meta-sgd":
        assert all(np.array_equal(resumed["alpha"][k], whole["alpha"][k]) for k in whole["alpha"])
    else:
        assert resumed["alpha"] == whole["alpha"]
    strip = lambda records: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]
    assert strip(read_metrics(half)) == strip(read_metrics(tmp_path / "whole"))


@pytest.mark.parametrize("options, message", [
    (["--method", "meta-sgd", "--per-layer-alpha"], "--per-layer-alpha is for maml and alpha-maml"),
    (["--method", "lslr", "--alpha-hyper-lr", "0.1"], "--alpha-hyper-lr needs --method alpha-maml (LSLR:"),
    (["--method", "meta-sgd", "--beta-hyper-lr", "0.1"], "--beta-hyper-lr needs --method alpha-maml (Meta-SGD:"),
])
def test_options_that_do_not_apply_are_refused(tmp_path, capsys, options, message):
    assert train(tmp_path, "run", "--iterations", 2, *options)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method", ["meta-sgd", "lslr"])
def test_omniglot_trains_and_validates_with_more_test_steps_than_trained(tmp_path, tiny_omniglot, capsys, method):
    code, out = train(tmp_path, "run", "--task", "omniglot", "--method", method, "--data-dir", tiny_omniglot,
                      "--ways", 3, "--channels", 4, "--meta-batch", 2, "--iterations", 2, "--val-every", 2,
                      "--val-tasks", 3, "--test-inner-steps", 3, "--no-figures")
    assert code == 0, capsys.readouterr().err
    assert 0 <= read_metrics(out)[-1]["val_accuracy"] <= 1


def test_sweep_accepts_the_learned_rate_methods(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--out", str(out), "--alphas", "0.01,0.03", "--betas", "0.001",
                 "--methods", "maml,meta-sgd,lslr", "--iterations", "10", "--eval-tasks", "10", "--workers", "1",
                 "--no-progress", "--no-cell-figures"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = read_csv(out / "results.csv")
    assert {r["method"] for r in rows} == {"maml", "meta-sgd", "lslr"} and len(rows) == 6
    assert all(float(r["final_alpha"]) != 0 for r in rows)           # a learned α: its mean, a number
    assert "Meta-SGD: converged" in printed.out and "LSLR: converged" in printed.out
    assert (out / "heatmap.png").is_file() and (out / "trajectories.png").is_file()
