"""Plausible wrong solutions of notebook 02's exercises (tests/test_grader_mutants.py runs them).

``linear_r_backward`` bodies follow ``x, W = cache`` and ``Rx, RW = rcache``;
``softmax_ce_r_backward`` bodies follow ``p, labels, N = cache``.
"""

T = "T = lambda a: np.swapaxes(a, -1, -2)\n"

FINITE_DIFFERENCES_OF_OWN_SOFTMAX = """
h = 1e-5
z = np.log(p)                                   # the logits, up to a constant per row
def softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
return (softmax(z + h * Rlogits) - softmax(z - h * Rlogits)) / (2 * h) / N
"""

FINITE_DIFFERENCES_OF_THE_PACKAGE_CE = """
z = np.log(p)
return gradcheck.directional_derivative(lambda a: softmax_ce.backward(softmax_ce.forward(a, labels)[1]), z, Rlogits)
"""

FINITE_DIFFERENCES_OF_THE_PACKAGE_LINEAR = """
point = {"W": W, "x": x, "t": np.zeros(())}
direction = {"W": RW, "x": np.zeros_like(x) if Rx is None else Rx, "t": np.ones(())}
return gradcheck.directional_derivative(lambda q: linear.backward(dy + q["t"] * Rdy, (q["x"], q["W"])), point, direction)
"""

MUTANTS = {
    "linear_r_backward": {
        "cross term dy RW^T missing": T + """
R_dW = T(x) @ Rdy if Rx is None else T(x) @ Rdy + T(Rx) @ dy
return Rdy @ T(W), {"W": R_dW, "b": Rdy.sum(axis=-2)}
""",
        "cross term Rx^T dy missing": T + """
return Rdy @ T(W) + dy @ T(RW), {"W": T(x) @ Rdy, "b": Rdy.sum(axis=-2)}
""",
        "both cross terms missing (Gauss-Newton)": T + """
return Rdy @ T(W), {"W": T(x) @ Rdy, "b": Rdy.sum(axis=-2)}
""",
        "sign of a cross term flipped": T + """
R_dW = T(x) @ Rdy if Rx is None else T(x) @ Rdy + T(Rx) @ dy
return Rdy @ T(W) - dy @ T(RW), {"W": R_dW, "b": Rdy.sum(axis=-2)}
""",
        "R{db} from dy instead of R{dy}": T + """
R_dW = T(x) @ Rdy if Rx is None else T(x) @ Rdy + T(Rx) @ dy
return Rdy @ T(W) + dy @ T(RW), {"W": R_dW, "b": dy.sum(axis=-2)}
""",
        "Rx = None not handled (the term always added)": T + """
return Rdy @ T(W) + dy @ T(RW), {"W": T(x) @ Rdy + T(Rx) @ dy, "b": Rdy.sum(axis=-2)}
""",
        "product order swapped in R{dW} (dy^T Rx)": T + """
R_dW = T(x) @ Rdy if Rx is None else T(x) @ Rdy + T(dy) @ Rx
return Rdy @ T(W) + dy @ T(RW), {"W": R_dW, "b": Rdy.sum(axis=-2)}
""",
        ".T transposes the task axis too": """
R_dW = x.T @ Rdy if Rx is None else x.T @ Rdy + Rx.T @ dy
return Rdy @ W.T + dy @ RW.T, {"W": R_dW, "b": Rdy.sum(axis=-2)}
""",
        "finite differences of the package's backward": FINITE_DIFFERENCES_OF_THE_PACKAGE_LINEAR,
        "importlib.reload of the package module, then its r_backward": """
import importlib
return importlib.reload(linear).r_backward(dy, Rdy, (x, W), (Rx, RW))
""",
    },
    "softmax_ce_r_backward": {
        "factor 1/N missing": """
pRz = p * Rlogits
return pRz - p * pRz.sum(axis=-1, keepdims=True)
""",
        "sign flipped": """
pRz = p * Rlogits
return (p * pRz.sum(axis=-1, keepdims=True) - pRz) / N
""",
        "<p, Rz> over the sample axis": """
pRz = p * Rlogits
return (pRz - p * pRz.sum(axis=-2, keepdims=True)) / N
""",
        "diagonal term only (p Rz / N)": """
return p * Rlogits / N
""",
        "sum of Rz instead of <p, Rz>": """
return (p * Rlogits - p * Rlogits.sum(axis=-1, keepdims=True)) / N
""",
        "divided by the number of classes": """
pRz = p * Rlogits
return (pRz - p * pRz.sum(axis=-1, keepdims=True)) / p.shape[-1]
""",
        "<p, Rz> without keepdims": """
pRz = p * Rlogits
return (pRz - p * pRz.sum(axis=-1)[..., None, :]) / N
""",
        "finite differences of its own softmax": FINITE_DIFFERENCES_OF_OWN_SOFTMAX,
        "finite differences of the package's backward": FINITE_DIFFERENCES_OF_THE_PACKAGE_CE,
        "importlib.reload of the package module, then its r_backward": """
import importlib
return importlib.reload(softmax_ce).r_backward(Rlogits, (p, labels, N))
""",
    },
}
