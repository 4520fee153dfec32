"""Plausible wrong solutions of notebook 03's exercise (tests/test_grader_mutants.py runs them).

Each body replaces the solution region of ``maml_meta_gradient_k1(model, theta, batch, alpha)``,
after ``x_support, y_support, x_query, y_query = batch``.
"""

INNER_STEP = """
phi0 = broadcast_to_tasks(theta, x_support.shape[0])
_, g_tr = model.loss_and_grad(phi0, x_support, y_support)
phi = {name: phi0[name] - alpha * g_tr[name] for name in theta}
_, lam1 = model.loss_and_grad(phi, x_query, y_query)
"""

FINITE_DIFFERENCES_OF_OWN_J = """
h = 1e-5
def J(params):
    phi0 = broadcast_to_tasks(params, x_support.shape[0])
    _, g_tr = model.loss_and_grad(phi0, x_support, y_support)
    phi = {name: phi0[name] - alpha * g_tr[name] for name in params}
    return float(model.loss(phi, x_query, y_query).mean())
work = {name: a.copy() for name, a in theta.items()}
grad = {name: np.zeros_like(a) for name, a in theta.items()}
for name in work:
    for i in np.ndindex(work[name].shape):
        old = work[name][i]
        work[name][i] = old + h
        plus = J(work)
        work[name][i] = old - h
        grad[name][i] = (plus - J(work)) / (2 * h)
        work[name][i] = old
return grad
"""

FINITE_DIFFERENCES_OF_THE_PACKAGE = """
work = {name: a.copy() for name, a in theta.items()}
return gradcheck.numerical_gradient_dict(lambda: maml.meta_objective(model, work, batch, alpha, 1), work)
"""

MUTANTS = {
    "maml_meta_gradient_k1": {
        "first order (the Hessian term missing)": INNER_STEP + """
return {name: lam1[name].mean(axis=0) for name in theta}
""",
        "sum over the tasks instead of the mean (a factor B)": INNER_STEP + """
H_lam1 = model.hvp(phi0, x_support, y_support, lam1)
return {name: (lam1[name] - alpha * H_lam1[name]).sum(axis=0) for name in theta}
""",
        "sign of the Hessian term flipped": INNER_STEP + """
H_lam1 = model.hvp(phi0, x_support, y_support, lam1)
return {name: (lam1[name] + alpha * H_lam1[name]).mean(axis=0) for name in theta}
""",
        "Hessian at phi instead of theta": INNER_STEP + """
H_lam1 = model.hvp(phi, x_support, y_support, lam1)
return {name: (lam1[name] - alpha * H_lam1[name]).mean(axis=0) for name in theta}
""",
        "Hessian of the query loss instead of the support loss": INNER_STEP + """
H_lam1 = model.hvp(phi0, x_query, y_query, lam1)
return {name: (lam1[name] - alpha * H_lam1[name]).mean(axis=0) for name in theta}
""",
        "Hessian applied to the support gradient": INNER_STEP + """
H_g = model.hvp(phi0, x_support, y_support, g_tr)
return {name: (lam1[name] - alpha * H_g[name]).mean(axis=0) for name in theta}
""",
        "support set from the notebook's globals (x_s, y_s)": """
phi0 = broadcast_to_tasks(theta, x_support.shape[0])
_, g_tr = model.loss_and_grad(phi0, x_s, y_s)
phi = {name: phi0[name] - alpha * g_tr[name] for name in theta}
_, lam1 = model.loss_and_grad(phi, x_query, y_query)
H_lam1 = model.hvp(phi0, x_s, y_s, lam1)
return {name: (lam1[name] - alpha * H_lam1[name]).mean(axis=0) for name in theta}
""",
        "finite differences of its own J": FINITE_DIFFERENCES_OF_OWN_J,
        "finite differences of the package's meta_objective": FINITE_DIFFERENCES_OF_THE_PACKAGE,
        "importlib.reload of the package module, then its meta_gradient": """
import importlib
return importlib.reload(maml).meta_gradient(model, theta, batch, alpha, 1).grad
""",
    },
}
