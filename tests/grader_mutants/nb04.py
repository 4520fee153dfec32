"""Plausible wrong solutions of notebook 04's exercises (tests/test_grader_mutants.py runs them).

``alpha_hypergradient_forward(model, theta, batch, alpha, K)``: each body replaces the solution
region after ``x_support, y_support, x_query, y_query = batch`` and returns (dJ/dα, t_K).
``adam_beta_hypergradient(g_t, m, v, t, b1, b2, eps)``: each body returns h_β.
"""

# The reference's lines, with one placeholder each for the mutants below to change.
FORWARD = """
phis, inner_grads, _ = maml.inner_loop(model, theta, x_support, y_support, alpha, K)
tangent = {{name: -g for name, g in inner_grads[0].items()}}
for k in range(1, K):
    H_t = model.hvp({hvp_at}, x_support, y_support, tangent)
    tangent = {{n: tangent[n] - {inner_grad} {hessian_term} for n in tangent}}
_, query_grad = model.loss_and_grad(phis[K], x_query, y_query)
return {result}, tangent
"""


def forward(hvp_at="phis[k]", inner_grad="inner_grads[k][n]", hessian_term="- alpha * H_t[n]",
            result="dot(query_grad, tangent) / x_support.shape[0]"):
    return FORWARD.format(hvp_at=hvp_at, inner_grad=inner_grad, hessian_term=hessian_term, result=result)


TANGENT_BY_CENTRAL_DIFFERENCES = """
h = 1e-6
plus = maml.inner_loop(model, theta, x_support, y_support, alpha + h, K)[0][K]
minus = maml.inner_loop(model, theta, x_support, y_support, alpha - h, K)[0][K]
tangent = {n: (plus[n] - minus[n]) / (2 * h) for n in plus}
"""

ALPHA_MUTANTS = {
    "sign flipped": forward(result="-dot(query_grad, tangent) / x_support.shape[0]"),
    "factor 1/B missing (sum over the tasks)": forward(result="dot(query_grad, tangent)"),
    "first order: no Hessian term in the tangent recursion": forward(hessian_term=""),
    "Hessian term with the wrong sign": forward(hessian_term="+ alpha * H_t[n]"),
    "off by one: the HVP at phi_(k+1)": forward(hvp_at="phis[k + 1]"),
    "off by one: the inner gradient of the previous step": forward(inner_grad="inner_grads[k - 1][n]"),
    "reading globals: the notebook's B": forward(result="dot(query_grad, tangent) / B"),
    "central differences of the package (maml.meta_objective)": TANGENT_BY_CENTRAL_DIFFERENCES + """
dJ = (maml.meta_objective(model, theta, batch, alpha + h, K) - maml.meta_objective(model, theta, batch, alpha - h, K)) / (2 * h)
return dJ, tangent
""",
    "central differences of J through maml.inner_loop and model.loss": TANGENT_BY_CENTRAL_DIFFERENCES + """
def J(a):
    phi_K = maml.inner_loop(model, theta, x_support, y_support, a, K)[0][K]
    return float(model.loss(phi_K, x_query, y_query).mean())
return (J(alpha + h) - J(alpha - h)) / (2 * h), tangent
""",
    "reverse mode (adjoints) for dJ/dalpha, tangent by central differences": TANGENT_BY_CENTRAL_DIFFERENCES + """
phis, inner_grads, _ = maml.inner_loop(model, theta, x_support, y_support, alpha, K)
_, adjoint = model.loss_and_grad(phis[K], x_query, y_query)
dJ = 0.0
for k in reversed(range(K)):
    dJ -= dot(adjoint, inner_grads[k]) / x_support.shape[0]
    H_adjoint = model.hvp(phis[k], x_support, y_support, adjoint)
    adjoint = {n: adjoint[n] - alpha * H_adjoint[n] for n in adjoint}
return dJ, tangent
""",
    "importlib.reload of the package module inside the function, then call it": """
import importlib
importlib.reload(maml)
h = 1e-7
plus = maml.inner_loop(model, theta, x_support, y_support, alpha + h, K)[0][K]
minus = maml.inner_loop(model, theta, x_support, y_support, alpha - h, K)[0][K]
return maml.meta_gradient(model, theta, batch, alpha, K).dJ_dalpha, {n: (plus[n] - minus[n]) / (2 * h) for n in plus}
""",
    "modifies theta in place": forward() .replace("return dot(", "theta.update({n: theta[n] - alpha * inner_grads[0][n].mean(axis=0) for n in theta})\nreturn dot("),
}

ADAM = """
u_prev = {{}}
for name in m:
    m_hat = {m_hat}
    v_hat = {v_hat}
    u_prev[name] = m_hat / ({denominator})
return {result}
"""


def adam(m_hat="m[name] / (1 - b1 ** t)", v_hat="v[name] / (1 - b2 ** t)", denominator="np.sqrt(v_hat) + eps",
         result="-dot(g_t, u_prev)"):
    return ADAM.format(m_hat=m_hat, v_hat=v_hat, denominator=denominator, result=result)


BETA_MUTANTS = {
    "sign flipped": adam(result="dot(g_t, u_prev)"),
    "no bias correction": adam(m_hat="m[name]", v_hat="v[name]"),
    "off by one: bias corrections of step t + 1": adam(m_hat="m[name] / (1 - b1 ** (t + 1))",
                                                       v_hat="v[name] / (1 - b2 ** (t + 1))"),
    "eps inside the square root": adam(denominator="np.sqrt(v_hat + eps)"),
    "the default constants instead of the arguments": adam(m_hat="m[name] / (1 - 0.9 ** t)",
                                                           v_hat="v[name] / (1 - 0.999 ** t)",
                                                           denominator="np.sqrt(v_hat) + 1e-8"),
    "moments updated with g_t first (the next step's direction)": adam(
        m_hat="(b1 * m[name] + (1 - b1) * g_t[name]) / (1 - b1 ** (t + 1))",
        v_hat="(b2 * v[name] + (1 - b2) * g_t[name] ** 2) / (1 - b2 ** (t + 1))"),
    "reading globals: the notebook's optimizer": "return -dot(g_t, opt.prev_direction)",
    "importlib.reload of the package module inside the function, then call it": """
import importlib
import types
import numpy_amaml.optim as optim_module
importlib.reload(optim_module)
u_prev = {name: (m[name] / (1 - b1 ** t)) / (np.sqrt(v[name] / (1 - b2 ** t)) + eps) for name in m}
return optim_module.SGD.beta_hypergradient(types.SimpleNamespace(prev_direction=u_prev), g_t)
""",
    "modifies m and v in place (bias correction)": """
for name in m:
    m[name] /= 1 - b1 ** t
    v[name] /= 1 - b2 ** t
return -dot(g_t, {name: m[name] / (np.sqrt(v[name]) + eps) for name in m})
""",
}

MUTANTS = {
    "alpha_hypergradient_forward": ALPHA_MUTANTS,
    "adam_beta_hypergradient": BETA_MUTANTS,
}
