"""The numbers and examples in the tutorials' model answers, checked.

A written question's model answer sits in the instructor's version only (between the solution
markers of a manually graded Markdown cell). A check of it does not belong in the notebook: a
cell under the question would show the student the answer (the optimal step, the example, the
2× and 4K/(K+1), the factor (1 − αλ)^K, the Gauss–Newton identity, the 50 GB, the sweep behind
6.1) before a teacher grades it. So the claims of those answers are checked here, each against
the text of its answer where the answer quotes a number.
"""
import copy
import csv
import dataclasses
import re
import types
from pathlib import Path

import numpy as np
import pytest

from numpy_amaml import architectures, gradcheck
from numpy_amaml.commands import assignments, bench
from numpy_amaml.layers import linear
from numpy_amaml.sinusoid import SinusoidTasks

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"


def model_answer(notebook, grade_id):
    """The model answer (the text between the solution markers) of written answer ``grade_id``."""
    nb = assignments.read_notebook(next(TUTORIALS.glob(f"{notebook}_*.ipynb")))
    for i, name in assignments.answer_cells(nb):
        if name == grade_id:
            regions = assignments.solution_regions(assignments.cell_source(nb["cells"][i]))
            return "\n".join(line for _, body in regions for line in body)
    raise AssertionError(f"no written answer {grade_id} in notebook {notebook}")


def quoted(pattern, text):
    """The float that ``pattern`` (a regex with one group per number, written as in LaTeX,
    e.g. ``4\\times10^{-6}``) finds in ``text``."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in the model answer"
    mantissa, exponent = match.groups()
    return float(mantissa) * 10.0 ** int(exponent)


# ---- Question 1.1: the best finite-difference step --------------------------------------

@pytest.mark.parametrize("dtype, name", [(np.float64, "float64"), (np.float32, "float32")])
def test_q1_1_the_best_step_and_error_of_the_error_model(dtype, name):
    """The error model C h² + ε|f|/h with C = |f| = 1 (ε the unit roundoff, half the machine
    epsilon), minimised on a fine grid: h* = (ε/2)^(1/3), error 3 (ε/2)^(2/3), and the numbers the
    answer quotes agree to their one significant digit."""
    answer = model_answer("01", "q1_1_best_step")
    h_grid = np.logspace(-9, -1, 8001)
    eps = np.finfo(dtype).eps / 2
    model_error = h_grid ** 2 + eps / h_grid
    i = int(np.argmin(model_error))
    assert np.isclose(h_grid[i], (eps / 2) ** (1 / 3), rtol=1e-2)
    assert np.isclose(model_error[i], 3 * (eps / 2) ** (2 / 3), rtol=1e-4)
    number = r"(\d(?:\.\d)?)\\times10\^\{(-\d+)\}"
    h_quoted = quoted(name + r": \$h\^\\star \\approx " + number, answer)
    error_quoted = quoted(name + r": \$h\^\\star \\approx [^,]*, error \$\\approx " + number, answer)
    assert h_quoted == pytest.approx(h_grid[i], rel=0.25), (h_quoted, h_grid[i])
    assert error_quoted == pytest.approx(model_error[i], rel=0.25), (error_quoted, model_error[i])
    if dtype is np.float32:          # "no choice of h lets float32 reach the 1e-6 bar"
        assert model_error.min() > 1e-6


# ---- Question 1.3: a wrong backward that dy = 1 cannot see ------------------------------

def test_q1_3_reversed_columns_of_W_pass_with_dy_ones_and_fail_with_a_random_dy():
    """The answer's example: dx computed with the columns of W in the wrong order equals the right
    dx for dy = 1 (to rounding) and differs for a random dy."""
    assert "columns of $W$ in the wrong order" in model_answer("01", "q1_3_random_dy")
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    for dy, caught in ((np.ones((5, 4)), False), (rng.standard_normal((5, 4)), True)):
        right_dx = linear.backward(dy, (x, W))[0]
        wrong_dx = linear.backward(dy, (x, W[:, ::-1]))[0]
        err = gradcheck.rel_error(wrong_dx, right_dx)
        assert (err > 1e-2) if caught else (err < 1e-15), err


# ---- Question 2.5: the matrix built without the cross terms -----------------------------

def explicit_hessian(net, theta, x, y):
    """The P x P matrix whose column j is net.hvp(e_j) (parameters flattened in sorted key order)."""
    keys = sorted(theta)
    sizes = [theta[k].size for k in keys]
    def unit(j):
        parts = np.split(np.eye(net.num_params())[j], np.cumsum(sizes)[:-1])
        return {k: part.reshape(theta[k].shape) for k, part in zip(keys, parts)}
    flat = lambda d: np.concatenate([np.ravel(d[k]) for k in keys])
    return np.stack([flat(net.hvp(theta, x, y, unit(j))) for j in range(net.num_params())], axis=1), unit


def test_q2_5_without_the_cross_terms_the_r_sweeps_give_the_gauss_newton_matrix(float64):
    """Notebook 2's 1-5-5-1 network on its task of 20 points: G, built from HVPs with Linear's
    r_backward at dy = 0 (no cross terms), equals J^T (2/N I) J with J the Jacobian of the 20
    outputs (finite differences of predict) to 1e-8, is positive semidefinite, and is far from H."""
    answer = model_answer("02", "q2_5_symmetry")
    assert "**Gauss–Newton matrix**" in answer and r"$H_\ell = \tfrac2N I$" in answer
    model = architectures.sinusoid_mlp(hidden=(5, 5))
    theta = model.init_params(seed=1)
    batch = SinusoidTasks(shots=20, seed=0).sample(1)[0]
    xs, ys = batch.x_support[0], batch.y_support[0]
    without_cross_terms = types.SimpleNamespace(
        forward=linear.forward, backward=linear.backward, r_forward=linear.r_forward,
        r_backward=lambda dy, Rdy, cache, rcache: linear.r_backward(np.zeros_like(dy), Rdy, cache, rcache))
    model_g = copy.copy(model)
    model_g.layers = tuple(dataclasses.replace(layer, module=without_cross_terms) if layer.module is linear
                           else layer for layer in model.layers)
    H, unit = explicit_hessian(model, theta, xs, ys)
    G, _ = explicit_hessian(model_g, theta, xs, ys)
    P = model.num_params()
    J = np.stack([gradcheck.directional_derivative(lambda p: model.predict(p, xs).ravel(), theta, unit(j))
                  for j in range(P)], axis=1)                                  # (20 outputs, P)
    gauss_newton = J.T @ (2 / len(xs) * np.eye(len(xs))) @ J
    assert gradcheck.rel_error(G, gauss_newton) < 1e-8
    assert np.linalg.eigvalsh(G).min() > -1e-12 * np.abs(G).max()          # positive semidefinite
    assert gradcheck.rel_error(G, H) > 0.3 and np.linalg.eigvalsh(H).min() < 0


# ---- Question 2.6: the explicit Hessian of the Omniglot CNN -----------------------------

def test_q2_6_the_omniglot_cnn_hessian_takes_about_50_GB_and_minutes_to_hours_of_hvps():
    """P ≈ 1.1e5 and P² ≈ 1.3e10 as the answer quotes; 4P² bytes between 40 and 60 GB ("about 50 GB");
    P HVPs at the time per HVP that notebook 2's cell asserts (1 ms to 0.3 s, one task, float32)
    take between a minute and ten hours. (No timing here: the notebook measures.)"""
    answer = model_answer("02", "q2_6_cost")
    P = architectures.omniglot_cnn().num_params()
    assert quoted(r"\$P \\approx (\d\.\d)\\times10\^(\d)\$", answer) == pytest.approx(P, rel=0.05)
    assert quoted(r"\$P\^2 \\approx (\d\.\d)\\times10\^\{(\d+)\}\$", answer) == pytest.approx(P ** 2, rel=0.05)
    assert "about 50 GB in float32" in answer and 40e9 < 4 * P ** 2 < 60e9
    assert r"1 ms < $t_\text{HVP}$ < 0.3 s" in answer and "between a minute and ten hours" in answer
    notebook = assignments.read_notebook(next(TUTORIALS.glob("02_*.ipynb")))
    assert any("1e-3 < t_hvp_cnn < 0.3" in assignments.cell_source(cell) for cell in notebook["cells"])
    assert 60 < P * 1e-3 and P * 0.3 < 10 * 3600


# ---- Question 3.3: what second order costs ----------------------------------------------

def meta_gradient_work(K, first_order, f_support, f_query):
    """Matrix products of one meta-gradient per task, in the units of notebook 2 (f = a layer's
    forward product): a sweep (forward + backward) costs 2f for the first layer and 3f for the
    others, the R-sweeps 2f and 6f; K inner steps and one query gradient, and for second order K
    HVPs, the first of which reuses the last inner sweep."""
    sweep = lambda f: 2 * f[0] + 3 * sum(f[1:])
    r_sweeps = 2 * f_support[0] + 6 * sum(f_support[1:])
    work = K * sweep(f_support) + sweep(f_query)
    if not first_order:
        work += K * r_sweeps + (K - 1) * sweep(f_support)
    return work


def readme_bench_seconds(names):
    """{row name: seconds} from the first table of README.md that has the rows (the CPU bench)."""
    seconds = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 2 and cells[1] in names and cells[1] not in seconds:
            value, unit = cells[2].replace("*", "").split()[:2]
            assert unit == "s", line
            seconds[cells[1]] = float(value)
    return seconds


def test_q3_3_second_order_costs_about_twice_first_order_and_4K_over_K_plus_1():
    """The ratios the answer quotes: counted for the sinusoid MLP (10 support and 10 query points)
    and the max-pool CNN (numpy_amaml.commands.bench's count), 4K/(K+1) for K = 5, and the README's
    measured bench times of the CNN."""
    answer = model_answer("03", "q3_3_first_vs_second_order")
    model = architectures.sinusoid_mlp()
    theta = model.init_params(seed=0)
    f_10 = [2 * 10 * theta[f"{layer.name}.W"].size for layer in model.layers
            if layer.module.__name__.endswith("linear")]
    ratios = {K: meta_gradient_work(K, False, f_10, f_10) / meta_gradient_work(K, True, f_10, f_10) for K in (1, 5)}
    for K, ratio in ratios.items():
        assert abs(ratio - 4 * K / (K + 1)) < 0.05, (K, ratio)
    assert meta_gradient_work(1, False, f_10, f_10) * 25 == bench.matmul_flops(bench.CASES[0], model)

    cnn_case, cnn_first_order = bench.CASES[1], bench.CASES[4]       # max-pool CNN, 5-way 1-shot, B = 32
    cnn = bench.make_problem(cnn_case)[0]
    cnn_ratio = bench.matmul_flops(cnn_case, cnn) / bench.matmul_flops(cnn_first_order, cnn)
    quoted_sinusoid, quoted_cnn = (float(v) for v in
                                   re.search(r"counts (\d\.\d\d)× for the sinusoid network and (\d\.\d\d)× for the "
                                             r"max-pool CNN", answer).groups())
    assert quoted_sinusoid == round(ratios[1], 2) and quoted_cnn == round(cnn_ratio, 2)
    assert f"{4 * 5 / 6:.1f}× for $K = 5$" in answer

    names = ("CNN max-pool, 5-way 1-shot, 1 query/class, meta-batch 32", "CNN max-pool, first order")
    seconds = readme_bench_seconds(names)
    second, first = seconds[names[0]], seconds[names[1]]
    assert f"measured {second:.2f} s against {first:.2f} s per iteration of that CNN, {second / first:.1f}×" in answer
    assert 1.5 < second / first < 2.2


# ---- Question 3.4: α λ_max and the threshold 2 ------------------------------------------

@pytest.mark.parametrize("alpha", [0.19, 0.21])
def test_q3_4_on_a_quadratic_inner_steps_and_adjoints_scale_by_one_minus_alpha_lambda(alpha):
    """The answer states the threshold 0 < αλ < 2 and the factor (1 − αλ_max)^K; its argument,
    replayed on numbers: on L(φ) = φᵀHφ/2 with λ_max = 10 the component of φ_K along the top
    eigenvector is (1 − αλ_max)^K times that of φ_0, and so is the adjoint's, shrinking below the
    threshold and growing above it. (The replay holds by construction; what can fail here is the
    answer's text.)"""
    answer = model_answer("03", "q3_4_alpha_lambda_max")
    assert r"$0 < \alpha\lambda < 2$" in answer and r"$(1 - \alpha\lambda_\max)^K$" in answer
    H, K = np.diag([1.0, 10.0]), 10
    phi, adjoint = np.ones(2), np.ones(2)
    for _ in range(K):
        phi = phi - alpha * H @ phi                       # inner step, ∇L = Hφ
        adjoint = adjoint - alpha * H.T @ adjoint          # adjoint step: the transposed Jacobian
    factor = (1 - alpha * 10.0) ** K
    assert np.isclose(phi[1], factor) and np.isclose(adjoint[1], factor)
    assert (abs(factor) < 1) == (alpha * 10.0 < 2)


# ---- Question 6.1: why the repair from a small β₀ is slow --------------------------------

def test_q6_1_from_the_bad_start_only_a_gamma_beta_above_the_grids_ends_below_the_threshold():
    """The answer cites docs/sensitivity_sinusoid_hyper.csv: from α₀ = 0.001, β₀ = 1e-4 the grid's
    γ_β = 1e-7 ends at a mean MSE of 0.74 (two seeds), above the grid's threshold 0.596
    (docs/sensitivity_sinusoid_grid.csv's header), and every γ_β ≥ 3e-7 ends below it."""
    answer = model_answer("06", "q6_1_which_starts")
    lines = (ROOT / "docs" / "sensitivity_sinusoid_hyper.csv").read_text(encoding="utf-8").splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    mse = {}
    for row in rows:
        if row["sweep"] == "gamma_beta" and (float(row["alpha0"]), float(row["beta0"])) == (0.001, 1e-4):
            mse.setdefault(float(row["gamma_beta"]), []).append(float(row["metric"]))
    mean = {gamma: sum(values) / len(values) for gamma, values in mse.items()}
    header = (ROOT / "docs" / "sensitivity_sinusoid_grid.csv").read_text(encoding="utf-8")
    threshold = float(re.search(r"threshold here: ([\d.]+)", header).group(1))
    assert f"ends at a mean MSE of {mean[1e-7]:.2f}" in answer and f"threshold {threshold:.3f}" in answer
    assert mean[1e-7] > threshold and all(m < threshold for gamma, m in mean.items() if gamma >= 3e-7)
    assert len(mse[1e-7]) == 2 and any(gamma >= 3e-7 for gamma in mean)
