"""Plausible wrong solutions of notebook 01's exercise (tests/test_grader_mutants.py runs them).

Each body replaces the solution region of ``linear_backward(dy, cache)``, after ``x, W = cache``.
"""

FINITE_DIFFERENCES_OF_OWN_FORWARD = """
h = 1e-5
b = np.zeros(dy.shape[:-2] + dy.shape[-1:])
def s():
    return float(((x @ W + b[..., None, :]) * dy).sum())
grads = []
for a in (x, W, b):
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        plus = s()
        a[i] = old - h
        g[i] = (plus - s()) / (2 * h)
        a[i] = old
    grads.append(g)
return grads[0], {"W": grads[1], "b": grads[2]}
"""

FINITE_DIFFERENCES_OF_THE_PACKAGE = """
b = np.zeros(dy.shape[:-2] + dy.shape[-1:])
s = lambda: float((linear.forward({"W": W, "b": b}, x)[0] * dy).sum())
work = {"x": x, "W": W, "b": b}
grads = {k: gradcheck.numerical_gradient(s, a) for k, a in work.items()}
return grads["x"], {"W": grads["W"], "b": grads["b"]}
"""

MUTANTS = {
    "linear_backward": {
        "sign flipped": """
return -(dy @ np.swapaxes(W, -1, -2)), {"W": -(np.swapaxes(x, -1, -2) @ dy), "b": -dy.sum(axis=-2)}
""",
        "dx without the transpose of W": """
return dy @ W, {"W": np.swapaxes(x, -1, -2) @ dy, "b": dy.sum(axis=-2)}
""",
        "dW transposed (dy^T x)": """
return dy @ np.swapaxes(W, -1, -2), {"W": np.swapaxes(dy, -1, -2) @ x, "b": dy.sum(axis=-2)}
""",
        "db averaged over the samples (a factor 1/N)": """
return dy @ np.swapaxes(W, -1, -2), {"W": np.swapaxes(x, -1, -2) @ dy, "b": dy.mean(axis=-2)}
""",
        "db summed over the task axis too": """
db = dy.sum(axis=tuple(range(dy.ndim - 1)))
return dy @ np.swapaxes(W, -1, -2), {"W": np.swapaxes(x, -1, -2) @ dy, "b": db}
""",
        ".T transposes the task axis too": """
return dy @ W.T, {"W": x.T @ dy, "b": dy.sum(axis=-2)}
""",
        "reads the notebook's W (params) instead of the cache's": """
return dy @ np.swapaxes(params["W"], -1, -2), {"W": np.swapaxes(x, -1, -2) @ dy, "b": dy.sum(axis=-2)}
""",
        "finite differences of its own forward pass": FINITE_DIFFERENCES_OF_OWN_FORWARD,
        "finite differences of the package's forward": FINITE_DIFFERENCES_OF_THE_PACKAGE,
        "importlib.reload of the package module, then its backward": """
import importlib
return importlib.reload(linear).backward(dy, (x, W))
""",
    },
}
