"""Batch normalisation with batch statistics (as MAML uses it, in training and at test).

Shapes (``...`` is the optional task axis (B,), on the params iff on x):
    x (..., N, H, W, C) or (..., N, C),  gamma, beta (..., C),  y like x
    config: eps = 1e-5 (keyword of forward)

The statistics are taken per task and per channel, over every other axis: (N, H, W),
or N for (..., N, C) inputs. Below E[·] is the mean over those m entries, Σ their sum,
and γ, β are broadcast over them. (Whether x has a task axis is read off gamma's rank,
so pass params with a task axis exactly when x has one; numpy_amaml.model does.)

    μ = E[x],   σ = sqrt(E[(x − μ)²] + eps),   x̂ = (x − μ)/σ,   y = γ x̂ + β

Backward (dy given; every entry of x moves μ and σ, hence the two mean terms):
    dx = (γ/σ) g,   g = dy − E[dy] − x̂ E[dy x̂]
    dγ = Σ dy x̂,    dβ = Σ dy

R-forward (direction Rx, Rγ, Rβ):
    Rμ = E[Rx],   R(σ²) = 2 E[(x − μ)(Rx − Rμ)] = 2σ E[x̂ Rx]   ⇒   Rσ = E[x̂ Rx]
    Rx̂ = (Rx − Rμ)/σ − x̂ Rσ/σ = (Rx − E[Rx] − x̂ E[x̂ Rx]) / σ
    Ry = Rγ x̂ + γ Rx̂ + Rβ = (Rγ − (γ/σ) Rσ) x̂ + (γ/σ) Rx + Rβ − (γ/σ) E[Rx]
(the code uses the last form, one pass per array: Rx̂ itself is never formed, and
r_backward puts Rx̂ = (Rx − E[Rx] − x̂ Rσ)/σ into its formulas the same way).

R-backward (product rule on the three backward formulas, with R{dy} given):
    Rg = R{dy} − E[R{dy}] − Rx̂ E[dy x̂] − x̂ (E[R{dy} x̂] + E[dy Rx̂])
    R{dx} = (γ/σ) Rg + (Rγ/σ − γ Rσ/σ²) g
    R{dγ} = Σ (R{dy} x̂ + dy Rx̂),   R{dβ} = Σ R{dy}
(With Rx = None — the input does not depend on the params — Rx̂ = 0 and Rσ = 0.)
"""
from numpy_amaml.backend import xp


def _expand(a, ndim):
    """(..., C) -> (..., 1, ..., 1, C) with ndim axes, to broadcast against x."""
    return a.reshape(a.shape[:-1] + (1,) * (ndim - a.ndim) + a.shape[-1:])


def _rows(a, axes):
    """(..., N, [H, W,] C) -> (..., m, C): the m entries of each statistic as rows (a view)."""
    return a.reshape(a.shape[:axes[0]] + (-1, a.shape[-1]))


def _mean(a, axes):
    """E[a] over the statistic's axes, kept as size-1 axes: (..., 1, [1, 1,] C).
    (einsum adds the rows up in one pass, about twice as fast as a.mean over them.)"""
    rows = _rows(a, axes)
    return _expand(xp.einsum("...mc->...c", rows) / rows.shape[-2], a.ndim)


def _mean_of_product(a, b, axes):
    """E[a b], shaped like _mean(a * b, axes) but without forming a·b: einsum adds up
    the products as it goes (one pass over a and b, no temporary)."""
    a_rows, b_rows = _rows(a, axes), _rows(b, axes)                  # (..., m, C)
    return _expand(xp.einsum("...mc,...mc->...c", a_rows, b_rows) / a_rows.shape[-2], a.ndim)


# Below, each full-size result is made once and then updated in place (dx += ...), one
# pass over memory per term; products of two full-size arrays that are added in go
# through one reused scratch buffer ``tmp`` (a fresh array per product costs more).

def forward(params, x, eps=1e-5):
    gamma, beta = params["gamma"], params["beta"]
    if x.ndim < gamma.ndim + 1 or x.shape[-1] != gamma.shape[-1] or beta.shape != gamma.shape:
        raise ValueError(f"batchnorm: x has shape {tuple(x.shape)}, gamma {tuple(gamma.shape)}, beta "
                         f"{tuple(beta.shape)}; expected x (..., N, [H, W,] C) and gamma, beta (..., C)")
    axes = tuple(range(gamma.ndim - 1, x.ndim - 1))        # (N, H, W) or (N,), after any task axis
    x_hat = x - _mean(x, axes)                             # x − μ
    sigma = xp.sqrt(_mean_of_product(x_hat, x_hat, axes) + eps)
    x_hat /= sigma                                         # x̂ = (x − μ)/σ
    gamma_x = _expand(gamma, x.ndim)
    y = x_hat * gamma_x
    y += _expand(beta, x.ndim)                             # y = γ x̂ + β
    return y, (x_hat, gamma_x, sigma, axes)


def backward(dy, cache):
    x_hat, gamma_x, sigma, axes = cache
    m = x_hat.size // sigma.size                             # entries per statistic
    m_dy, m_dy_xhat = _mean(dy, axes), _mean_of_product(dy, x_hat, axes)   # E[dy], E[dy x̂]
    dx = x_hat * -m_dy_xhat                                  # dx = (γ/σ) (dy − E[dy] − x̂ E[dy x̂])
    dx += dy
    dx -= m_dy
    dx *= gamma_x / sigma
    return dx, {"gamma": xp.squeeze(m * m_dy_xhat, axis=axes), "beta": xp.squeeze(m * m_dy, axis=axes)}


def r_forward(params, x, Rparams, Rx, cache):
    x_hat, gamma_x, sigma, axes = cache
    Rgamma_x, Rbeta_x = _expand(Rparams["gamma"], x_hat.ndim), _expand(Rparams["beta"], x_hat.ndim)
    if Rx is None:                                                    # Rx̂ = 0: Ry = Rγ x̂ + Rβ
        Ry = x_hat * Rgamma_x
        Ry += Rbeta_x
        return Ry, (None, None, None, Rgamma_x)
    scale = gamma_x / sigma                                           # γ/σ
    m_Rx, Rsigma = _mean(Rx, axes), _mean_of_product(x_hat, Rx, axes)  # E[Rx], Rσ = E[x̂ Rx]
    Ry = x_hat * (Rgamma_x - scale * Rsigma)                          # Ry = (Rγ − (γ/σ) Rσ) x̂
    Ry += Rx * scale                                                  #      + (γ/σ) Rx
    Ry += Rbeta_x - scale * m_Rx                                      #      + Rβ − (γ/σ) E[Rx]
    return Ry, (Rx, m_Rx, Rsigma, Rgamma_x)


def r_backward(dy, Rdy, cache, rcache):
    x_hat, gamma_x, sigma, axes = cache
    Rx, m_Rx, Rsigma, Rgamma_x = rcache
    m = x_hat.size // sigma.size                              # entries per statistic
    scale = gamma_x / sigma                                   # γ/σ
    Rscale = Rgamma_x / sigma                                 # R(γ/σ) = Rγ/σ − γ Rσ/σ²
    if Rx is not None:
        Rscale = Rscale - scale * Rsigma / sigma
    # the means in g and Rg (small arrays, one pass each)
    m_dy, m_dy_xhat = _mean(dy, axes), _mean_of_product(dy, x_hat, axes)
    m_Rdy, m_Rdy_xhat = _mean(Rdy, axes), _mean_of_product(Rdy, x_hat, axes)
    m_Rdxhat = m_Rdy_xhat                                     # E[R{dy} x̂ + dy Rx̂] = R{dγ}/m
    if Rx is not None:                                        # E[dy Rx̂] = (E[dy Rx] − E[dy] E[Rx] − E[dy x̂] Rσ)/σ
        m_Rdxhat = m_Rdy_xhat + (_mean_of_product(dy, Rx, axes) - m_dy * m_Rx - m_dy_xhat * Rsigma) / sigma
    # R{dx} = (γ/σ) Rg + R(γ/σ) g, expanded; the x̂- and constant terms are collected
    # into small coefficient arrays:
    #   = (γ/σ)(R{dy} − Rx̂ E[dy x̂]) + R(γ/σ) dy
    #     − x̂ [(γ/σ)(E[R{dy} x̂] + E[dy Rx̂]) + R(γ/σ) E[dy x̂]] − [(γ/σ) E[R{dy}] + R(γ/σ) E[dy]]
    # and the Rx̂ term, −(γ/σ) E[dy x̂] Rx̂ = −k (Rx − E[Rx] − x̂ Rσ) with k = (γ/σ) E[dy x̂]/σ,
    # becomes −k Rx, with −k Rσ added to the x̂ coefficient and −k E[Rx] to the constant.
    x_coef = scale * m_Rdxhat + Rscale * m_dy_xhat
    constant = scale * m_Rdy + Rscale * m_dy
    Rdx = Rdy * scale
    tmp = xp.empty_like(Rdx)
    Rdx += xp.multiply(dy, Rscale, out=tmp)
    if Rx is not None:
        k = scale * m_dy_xhat / sigma
        Rdx -= xp.multiply(Rx, k, out=tmp)
        x_coef, constant = x_coef - k * Rsigma, constant - k * m_Rx
    Rdx -= xp.multiply(x_hat, x_coef, out=tmp)
    Rdx -= constant
    return Rdx, {"gamma": xp.squeeze(m * m_Rdxhat, axis=axes), "beta": xp.squeeze(m * m_Rdy, axis=axes)}
