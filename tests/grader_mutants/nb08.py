"""Plausible wrong solutions for the exercises of tutorials/08_cnn_second_order.ipynb.

Each body replaces the exercise's solution region (see tests/test_grader_mutants.py); every one
must fail its graded cell, while the reference solution passes.
"""

# ---- Exercise 8.1: the convolution's input gradient ---------------------------------------------
_INPUT_GRAD = '''
H, Wd, C_in = x_shape[-3:]
H_out, W_out = dy.shape[-3], dy.shape[-2]
dx_pad = np.zeros(tuple(x_shape[:-3]) + (H + 2, Wd + 2, C_in))
for p in range(3):
    for q in range(3):
        dx_pad[..., {rows}, {cols}, :] {op} np.einsum("{subscripts}", dy, W[..., {kernel}, :, :])
return dx_pad[..., {crop}, :]
'''
_REFERENCE = dict(rows="p:p + stride * (H_out - 1) + 1:stride", cols="q:q + stride * (W_out - 1) + 1:stride", op="+=",
                  subscripts="...nijo,...co->...nijc", kernel="p, q", crop="1:H + 1, 1:Wd + 1")


def _input_grad(**change):
    return _INPUT_GRAD.format(**{**_REFERENCE, **change})


CONV2D_INPUT_GRAD = {
    "kernel flipped in space (the stride-1 gather's kernel, scattered)": _input_grad(kernel="2 - p, 2 - q"),
    "kernel offsets p and q swapped (a transposed kernel)": _input_grad(kernel="q, p"),
    "channel matrix not transposed (W[p, q] read as C_out x C_in)": _input_grad(subscripts="...nijo,...oc->...nijc"),
    "off-by-one padding (dx cropped from pixel 0)": _input_grad(crop="0:H, 0:Wd"),
    "stride ignored (windows one pixel apart)": _input_grad(rows="p:p + H_out", cols="q:q + W_out"),
    "overlapping windows overwrite each other instead of adding up": _input_grad(op="="),
    "probing the package's forward with unit vectors": '''
dx = np.zeros(x_shape)
b = np.zeros(W.shape[:-4] + W.shape[-1:])
for index in np.ndindex(*x_shape):
    e = np.zeros(x_shape)
    e[index] = 1.0
    dx[index] = (conv2d.forward({"W": W, "b": b}, e, stride=stride)[0] * dy).sum()
return dx
''',
    "importlib.reload of the package's conv2d inside the function, then its backward": '''
import importlib
from numpy_amaml.layers import conv2d as fresh_conv2d
fresh_conv2d = importlib.reload(fresh_conv2d)
_, cache = fresh_conv2d.forward({"W": W, "b": np.zeros(W.shape[:-4] + W.shape[-1:])}, np.zeros(x_shape), stride=stride)
return fresh_conv2d.backward(dy, cache)[0]
''',
}

# ---- Exercise 8.4: the convolution's R-backward --------------------------------------------------
_R_BACKWARD = '''
Rdx = {Rdx}
RdW = np.swapaxes(conv2d.im2col(x, stride), -1, -2) @ rows(Rdy)
if Rx is not None:
    RdW = RdW {cross_sign} {RdW_cross}
return Rdx, {{"W": {RdW}, "b": {Rdb}}}
'''
_R_REFERENCE = dict(Rdx="conv2d_input_grad(Rdy, W, x.shape, stride) + conv2d_input_grad(dy, RW, x.shape, stride)",
                    cross_sign="+", RdW_cross="np.swapaxes(conv2d.im2col(Rx, stride), -1, -2) @ rows(dy)",
                    RdW="RdW.reshape(W.shape)", Rdb="rows(Rdy).sum(axis=-2)")


def _r_backward(**change):
    return _R_BACKWARD.format(**{**_R_REFERENCE, **change})


CONV2D_R_BACKWARD = {
    "cross term dy RW^T missing from R{dx}": _r_backward(Rdx="conv2d_input_grad(Rdy, W, x.shape, stride)"),
    "cross term im2col(Rx)^T dy missing from R{dW}": _r_backward(RdW_cross="0"),
    "cross term of R{dx} pairs R{dy} with RW": _r_backward(
        Rdx="conv2d_input_grad(Rdy, W, x.shape, stride) + conv2d_input_grad(Rdy, RW, x.shape, stride)"),
    "cross terms with the wrong sign": _r_backward(
        Rdx="conv2d_input_grad(Rdy, W, x.shape, stride) - conv2d_input_grad(dy, RW, x.shape, stride)", cross_sign="-"),
    "R{db} from dy instead of R{dy}": _r_backward(Rdb="rows(dy).sum(axis=-2)"),
    "R{db} summed over the task axis too": _r_backward(Rdb="Rdy.reshape(-1, Rdy.shape[-1]).sum(axis=0)"),
    "kernel offsets p and q swapped in R{dW} (a transposed kernel)": _r_backward(
        RdW="np.swapaxes(RdW.reshape(W.shape), -4, -3)"),
    "the package's r_backward": '''
p, Rp = {"W": W, "b": np.zeros(W.shape[:-4] + W.shape[-1:])}, {"W": RW, "b": np.zeros(W.shape[:-4] + W.shape[-1:])}
_, cache = conv2d.forward(p, x, stride=stride)
_, rcache = conv2d.r_forward(p, x, Rp, Rx, cache)
return conv2d.r_backward(dy, Rdy, cache, rcache)
''',
    "importlib.reload of the package's conv2d inside the function, then its r_backward": '''
import importlib
from numpy_amaml.layers import conv2d as fresh_conv2d
fresh_conv2d = importlib.reload(fresh_conv2d)
p, Rp = {"W": W, "b": np.zeros(W.shape[:-4] + W.shape[-1:])}, {"W": RW, "b": np.zeros(W.shape[:-4] + W.shape[-1:])}
_, cache = fresh_conv2d.forward(p, x, stride=stride)
_, rcache = fresh_conv2d.r_forward(p, x, Rp, Rx, cache)
return fresh_conv2d.r_backward(dy, Rdy, cache, rcache)
''',
}

# ---- Exercise 8.6: batch norm's R-forward --------------------------------------------------------
_BN_R_FORWARD = '''
E = lambda a: a.{mean}(axis=axes, keepdims=True)
Ry = {Rgamma_term}expand(Rparams["beta"])
if Rx is not None:
    R_sigma = E(x_hat * Rx){sigma_factor}
    R_x_hat = {R_x_hat}
    Ry = Ry + gamma_x * R_x_hat
return Ry
'''
_BN_REFERENCE = dict(mean="mean", Rgamma_term='expand(Rparams["gamma"]) * x_hat + ', sigma_factor="",
                     R_x_hat="(Rx - E(Rx) - x_hat * R_sigma) / sigma")


def _bn_r_forward(**change):
    return _BN_R_FORWARD.format(**{**_BN_REFERENCE, **change})


BATCHNORM_R_FORWARD = {
    "frozen batch statistics (R mu = R sigma = 0)": _bn_r_forward(R_x_hat="Rx / sigma"),
    "R sigma term missing": _bn_r_forward(R_x_hat="(Rx - E(Rx)) / sigma"),
    "R mu term missing": _bn_r_forward(R_x_hat="(Rx - x_hat * R_sigma) / sigma"),
    "sign of the R sigma term flipped": _bn_r_forward(R_x_hat="(Rx - E(Rx) + x_hat * R_sigma) / sigma"),
    "an extra 1/sigma in R sigma": _bn_r_forward(sigma_factor=" / sigma"),
    "sums instead of means (a factor m)": _bn_r_forward(mean="sum"),
    "R gamma term missing": _bn_r_forward(Rgamma_term=""),
    "central difference of a hand-written forward": '''
def own_forward(z, gamma, beta):
    mu = z.mean(axis=axes, keepdims=True)
    s = np.sqrt(((z - mu) ** 2).mean(axis=axes, keepdims=True) + 1e-5)
    return expand(gamma) * (z - mu) / s + expand(beta)
h, dz = 1e-5, np.zeros_like(x) if Rx is None else Rx
plus = own_forward(x + h * dz, params["gamma"] + h * Rparams["gamma"], params["beta"] + h * Rparams["beta"])
minus = own_forward(x - h * dz, params["gamma"] - h * Rparams["gamma"], params["beta"] - h * Rparams["beta"])
return (plus - minus) / (2 * h)
''',
    "importlib.reload of the package's batchnorm inside the function, then its r_forward": '''
import importlib
from numpy_amaml.layers import batchnorm as fresh_batchnorm
fresh_batchnorm = importlib.reload(fresh_batchnorm)
return fresh_batchnorm.r_forward(params, x, Rparams, Rx, cache)[0]
''',
}

# ---- Exercise 8.8: batch norm's R-backward -------------------------------------------------------
_BN_R_BACKWARD = '''
if Rx is None:
    R_sigma, R_x_hat = np.zeros_like(sigma), np.zeros_like(x_hat)
else:
    R_sigma = E(x_hat * Rx)
    R_x_hat = {R_x_hat}
g = dy - E(dy) - x_hat * E(dy * x_hat)
R_g = {R_g}
R_scale = {R_scale}
Rdx = gamma_x / sigma * R_g + R_scale * g
return Rdx, {{"gamma": {Rdgamma}, "beta": {Rdbeta}}}
'''
_BNB_REFERENCE = dict(R_x_hat="(Rx - E(Rx) - x_hat * R_sigma) / sigma",
                      R_g="Rdy - E(Rdy) - R_x_hat * E(dy * x_hat) - x_hat * (E(Rdy * x_hat) + E(dy * R_x_hat))",
                      R_scale='expand(Rparams["gamma"]) / sigma - gamma_x * R_sigma / sigma ** 2',
                      Rdgamma="total(Rdy * x_hat + dy * R_x_hat)", Rdbeta="total(Rdy)")


def _bn_r_backward(**change):
    return _BN_R_BACKWARD.format(**{**_BNB_REFERENCE, **change})


BATCHNORM_R_BACKWARD = {
    "frozen batch statistics (mu, sigma constants)": '''
R_x_hat = 0 if Rx is None else Rx / sigma
Rdx = (gamma_x * Rdy + expand(Rparams["gamma"]) * dy) / sigma
return Rdx, {"gamma": total(Rdy * x_hat + dy * R_x_hat), "beta": total(Rdy)}
''',
    "R{dgamma} without its dy R x_hat term": _bn_r_backward(Rdgamma="total(Rdy * x_hat)"),
    "R(gamma/sigma) without -gamma R sigma / sigma^2": _bn_r_backward(R_scale='expand(Rparams["gamma"]) / sigma'),
    "R g without the R x_hat E[dy x_hat] term": _bn_r_backward(
        R_g="Rdy - E(Rdy) - x_hat * (E(Rdy * x_hat) + E(dy * R_x_hat))"),
    "R g without E[dy R x_hat]": _bn_r_backward(R_g="Rdy - E(Rdy) - R_x_hat * E(dy * x_hat) - x_hat * E(Rdy * x_hat)"),
    "sign of the R sigma term of R x_hat flipped": _bn_r_backward(R_x_hat="(Rx - E(Rx) + x_hat * R_sigma) / sigma"),
    "means instead of sums for R{dgamma}, R{dbeta} (a factor m)": _bn_r_backward(
        Rdgamma="np.squeeze(E(Rdy * x_hat + dy * R_x_hat), axis=axes)", Rdbeta="np.squeeze(E(Rdy), axis=axes)"),
    "R{dbeta} missing (zeros)": _bn_r_backward(Rdbeta="np.zeros_like(total(Rdy))"),
    "importlib.reload of the package's batchnorm inside the function, then its r_forward and r_backward": '''
import importlib
from numpy_amaml.layers import batchnorm as fresh_batchnorm
fresh_batchnorm = importlib.reload(fresh_batchnorm)
gamma = np.squeeze((gamma_x * np.ones_like(x_hat)).mean(axis=axes, keepdims=True), axis=axes)
params = {"gamma": gamma, "beta": np.zeros_like(gamma)}
_, rcache = fresh_batchnorm.r_forward(params, x_hat * sigma, Rparams, Rx, cache)
return fresh_batchnorm.r_backward(dy, Rdy, cache, rcache)
''',
}

# ---- Exercise 8.11: the K-step meta-gradient with one rate per tensor -----------------------------
_META = '''
phis, _, _ = maml.inner_loop(model, theta, x_support, y_support, alpha, K)
_, lam = model.loss_and_grad(phis[K], {last_x}, {last_y})
for k in reversed(range(K)):
{step}
return {{name: lam[name].{reduce}(axis=0) for name in theta}}
'''
_STEP = '''    scaled = {name: alpha[name] * lam[name] for name in lam}
    H_scaled = model.hvp(phis[k], x_support, y_support, scaled)
    lam = {name: lam[name] - H_scaled[name] for name in lam}'''
_META_REFERENCE = dict(last_x="x_query", last_y="y_query", step=_STEP, reduce="mean")


def _meta(**change):
    return _META.format(**{**_META_REFERENCE, **change})


META_GRADIENT_PER_TENSOR = {
    "first order (no Hessian term)": _meta(step="    pass"),
    "rate after the HVP: lambda - A H lambda (the Jacobian not transposed)": _meta(step='''    H_lam = model.hvp(phis[k], x_support, y_support, lam)
    lam = {name: lam[name] - alpha[name] * H_lam[name] for name in lam}'''),
    "Hessian at phi_{k+1} (one step off)": _meta(step=_STEP.replace("phis[k]", "phis[k + 1]")),
    "sum over the tasks instead of the mean (a factor B)": _meta(reduce="sum"),
    "lambda_K from the support set": _meta(last_x="x_support", last_y="y_support"),
    "central differences of maml.meta_objective": '''
work = {k: a.copy() for k, a in theta.items()}
return gradcheck.numerical_gradient_dict(lambda: maml.meta_objective(model, work, batch, alpha, K), work)
''',
    "central differences of a hand-written J": '''
def J_of(params):
    phis, _, _ = maml.inner_loop(model, params, x_support, y_support, alpha, K)
    return float(model.loss(phis[K], x_query, y_query).mean())
work = {k: a.copy() for k, a in theta.items()}
return gradcheck.numerical_gradient_dict(lambda: J_of(work), work)
''',
    "the package, through the notebook's globals": '''
return maml.meta_gradient(cnn, theta_cnn, cnn_batch, cnn_rates, K).grad
''',
    "importlib.reload of the package's maml inside the function, then its meta_gradient": '''
import importlib
fresh_maml = importlib.reload(maml)
return fresh_maml.meta_gradient(model, theta, batch, alpha, K).grad
''',
}

MUTANTS = {
    "conv2d_input_grad": CONV2D_INPUT_GRAD,
    "conv2d_r_backward": CONV2D_R_BACKWARD,
    "batchnorm_r_forward": BATCHNORM_R_FORWARD,
    "batchnorm_r_backward": BATCHNORM_R_BACKWARD,
    "meta_gradient_per_tensor": META_GRADIENT_PER_TENSOR,
}
