"""Plausible wrong solutions of notebook 09's exercise (tests/test_grader_mutants.py runs them).

``lslr_alpha_gradient(model, theta, batch, alpha, K)``: each body replaces the solution region
after ``x_support, y_support, x_query, y_query = batch`` and returns a list of K dicts
{name: ∂J/∂α_(k,n)}.
"""

# The reference's lines, with one placeholder each for the mutants below to change.
REVERSE = """
B = x_support.shape[0]
phis, inner_grads, _ = maml.inner_loop(model, theta, x_support, y_support, alpha, K)
_, lam = model.loss_and_grad(phis[K], x_query, y_query)
dJ_dalpha = [None] * K
for k in reversed(range(K)):
    {before_step}
    {adjoint_step}
    {after_step}
return {result}
"""
DERIVATIVE = "dJ_dalpha[k] = {{n: {term} for n in theta}}"
TERM = "-float(np.sum(lam[n] * inner_grads[k][n])) / B"
SCALE_THEN_HVP = """scaled = {{n: alpha[{rate_step}][n] * lam[n] for n in lam}}
    H_scaled = model.hvp({hvp_at}, x_support, y_support, scaled)
    lam = {{n: lam[n] - H_scaled[n] for n in lam}}"""


def reverse(term=TERM, derivative_after_step=False, rate_step="k", hvp_at="phis[k]", adjoint_step=None,
            result="dJ_dalpha"):
    derivative = DERIVATIVE.format(term=term)
    step = adjoint_step if adjoint_step is not None else SCALE_THEN_HVP.format(rate_step=rate_step, hvp_at=hvp_at)
    body = REVERSE.format(before_step="" if derivative_after_step else derivative, adjoint_step=step,
                          after_step=derivative if derivative_after_step else "", result=result)
    return "\n".join(line for line in body.splitlines() if line.strip())


HVP_THEN_SCALE = """H_lam = model.hvp(phis[k], x_support, y_support, lam)
    lam = {n: lam[n] - alpha[k][n] * H_lam[n] for n in lam}"""

CENTRAL_DIFFERENCES = """
h = 1e-6
def J(rates):
    {objective}
result = []
for k in range(K):
    step = {{}}
    for n in theta:
        plus = [dict(rates) for rates in alpha]
        minus = [dict(rates) for rates in alpha]
        plus[k][n] += h
        minus[k][n] -= h
        step[n] = (J(plus) - J(minus)) / (2 * h)
    result.append(step)
return result
"""
OWN_OBJECTIVE = """phi_K = maml.inner_loop(model, theta, x_support, y_support, rates, K)[0][K]
    return float(model.loss(phi_K, x_query, y_query).mean())"""

MUTANTS = {
    "lslr_alpha_gradient": {
        "sign flipped": reverse(term="float(np.sum(lam[n] * inner_grads[k][n])) / B"),
        "factor 1/B missing (sum over the tasks)": reverse(term="-float(np.sum(lam[n] * inner_grads[k][n]))"),
        "mean over every entry instead of the sum over the tensor": reverse(
            term="-float(np.mean(lam[n] * inner_grads[k][n]))"),
        "first order: no Hessian term in the reverse pass": reverse(adjoint_step="pass"),
        "wrong order: alpha ⊙ (H lambda) instead of H (alpha ⊙ lambda)": reverse(adjoint_step=HVP_THEN_SCALE),
        "off by one: lambda_k (after the step's HVP) paired with grad L^tr(phi_k)": reverse(derivative_after_step=True),
        "off by one: the HVP at phi_(k+1)": reverse(hvp_at="phis[k + 1]"),
        "the rates of the steps in reverse order in the reverse pass": reverse(rate_step="K - 1 - k"),
        "the steps' derivatives listed in the reverse pass's order": reverse(result="dJ_dalpha[::-1]"),
        "tied over the steps: every step gets the sum over k (Meta-SGD's shared rate)": reverse(
            result="[{n: sum(step[n] for step in dJ_dalpha) for n in theta} for _ in range(K)]"),
        "reading globals: the notebook's B (no B of its own)": reverse().replace("B = x_support.shape[0]\n", ""),
        "central differences of the package (maml.meta_objective)": CENTRAL_DIFFERENCES.format(
            objective="return maml.meta_objective(model, theta, batch, rates, K)"),
        "central differences of J through maml.inner_loop and model.loss": CENTRAL_DIFFERENCES.format(
            objective=OWN_OBJECTIVE),
        "modifies alpha in place (central differences that do not restore the rates)": """
h = 1e-4
def J(rates):
    phi_K = maml.inner_loop(model, theta, x_support, y_support, rates, K)[0][K]
    return float(model.loss(phi_K, x_query, y_query).mean())
result = []
for k in range(K):
    step = {}
    for n in theta:
        alpha[k][n] += h
        J_plus = J(alpha)
        alpha[k][n] -= 2 * h
        step[n] = (J_plus - J(alpha)) / (2 * h)
    result.append(step)
return result
""",
        "importlib.reload of the package's maml inside the function, then its meta_gradient": """
import importlib
fresh_maml = importlib.reload(maml)
return fresh_maml.meta_gradient(model, theta, batch, alpha, K).dJ_dalpha
""",
    },
}
