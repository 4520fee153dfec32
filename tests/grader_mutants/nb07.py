"""Plausible wrong solutions for the exercise of tutorials/07_curvature.ipynb (power iteration).

Each body replaces the solution region of ``power_iteration(hvp, v, iterations)`` (see
tests/test_grader_mutants.py); every one must fail the graded cell, the reference passes.
"""

_POWER_ITERATION = '''
{start}
for _ in range(iterations):
    Hv = hvp(v)
    mu = {mu}
    length = norm(Hv)
    {previous}v = {{k: a / length for k, a in Hv.items()}}
return {result}
'''
_REFERENCE = dict(start="length = norm(v)\nv = {k: a / length for k, a in v.items()}", mu="dot(v, Hv)",
                  previous="", result="mu, v")


def _power_iteration(**change):
    return _POWER_ITERATION.format(**{**_REFERENCE, **change})


MUTANTS = {
    "power_iteration": {
        "||Hv|| for the Rayleigh quotient": _power_iteration(mu="norm(Hv)"),
        "||Hv|| with the sign of the Rayleigh quotient": _power_iteration(mu="np.sign(dot(v, Hv)) * norm(Hv)"),
        "start vector normalised in place": _power_iteration(
            start="length = norm(v)\nfor k in v:\n    v[k] /= length"),
        "start vector not normalised": _power_iteration(start="v = dict(v)"),
        "Rayleigh quotient at the returned v (one HVP more)": _power_iteration(result="dot(v, hvp(v)), v"),
        "returns the vector before the last step": _power_iteration(previous="before = v\n    ",
                                                                   result="mu, before"),
        "eigenvalues of the explicit Hessian built from hvp calls": '''
keys = list(v)
sizes = [a.size for a in v.values()]
def unit(j):
    e = np.zeros(sum(sizes))
    e[j] = 1.0
    return {k: part.reshape(v[k].shape) for k, part in zip(keys, np.split(e, np.cumsum(sizes)[:-1]))}
columns = [hvp(unit(j)) for j in range(sum(sizes))]
H = np.stack([np.concatenate([np.ravel(c[k]) for k in keys]) for c in columns], axis=1)
lam, Q = np.linalg.eigh(H)
j = np.argmax(np.abs(lam))
return float(lam[j]), {k: part.reshape(v[k].shape) for k, part in zip(keys, np.split(Q[:, j], np.cumsum(sizes)[:-1]))}
''',
        "importlib.reload of the package module inside the function, then call it": '''
import importlib
importlib.reload(curvature)
mu = curvature.largest_eigenvalue(model, theta, batch.x_support[:1], batch.y_support[:1])[0]
return float(mu), {k: a / norm(v) for k, a in v.items()}
''',
        "the package's largest_eigenvalue on the notebook's globals": '''
mu = largest_eigenvalue(model, theta, batch.x_support[:1], batch.y_support[:1])[0]
return float(mu), {k: a / norm(v) for k, a in v.items()}
''',
    },
}
