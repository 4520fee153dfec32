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
    Ry = Rγ x̂ + γ Rx̂ + Rβ

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


def _mean(a, axes):
    return a.mean(axis=axes, keepdims=True)


def forward(params, x, eps=1e-5):
    gamma, beta = params["gamma"], params["beta"]
    if x.ndim < gamma.ndim + 1 or x.shape[-1] != gamma.shape[-1] or beta.shape != gamma.shape:
        raise ValueError(f"batchnorm: x has shape {tuple(x.shape)}, gamma {tuple(gamma.shape)}, beta "
                         f"{tuple(beta.shape)}; expected x (..., N, [H, W,] C) and gamma, beta (..., C)")
    axes = tuple(range(gamma.ndim - 1, x.ndim - 1))        # (N, H, W) or (N,), after any task axis
    x_hat = x - _mean(x, axes)
    sigma = xp.sqrt(_mean(x_hat * x_hat, axes) + eps)
    x_hat /= sigma
    gamma_x = _expand(gamma, x.ndim)
    y = x_hat * gamma_x
    y += _expand(beta, x.ndim)
    return y, (x_hat, gamma_x, sigma, axes)


def backward(dy, cache):
    x_hat, gamma_x, sigma, axes = cache
    m = x_hat.size // sigma.size                   # entries per statistic
    dbeta = dy.sum(axis=axes, keepdims=True)        # Σ dy      = m E[dy]
    dgamma = (dy * x_hat).sum(axis=axes, keepdims=True)   # Σ dy x̂ = m E[dy x̂]
    scale = gamma_x / sigma
    # dx = (γ/σ) (dy − E[dy] − x̂ E[dy x̂]), grouped so that only small arrays get combined
    dx = dy * scale
    dx -= x_hat * (scale * dgamma / m)
    dx -= scale * dbeta / m
    return dx, {"gamma": xp.squeeze(dgamma, axis=axes), "beta": xp.squeeze(dbeta, axis=axes)}


def r_forward(params, x, Rparams, Rx, cache):
    x_hat, gamma_x, sigma, axes = cache
    Rgamma_x = _expand(Rparams["gamma"], x_hat.ndim)
    Ry = x_hat * Rgamma_x
    Ry += _expand(Rparams["beta"], x_hat.ndim)
    Rx_hat = Rsigma = None
    if Rx is not None:
        Rsigma = _mean(x_hat * Rx, axes)                      # Rσ = E[x̂ Rx]
        Rx_hat = Rx - _mean(Rx, axes)
        Rx_hat -= x_hat * Rsigma
        Rx_hat /= sigma                                       # Rx̂ = (Rx − E[Rx] − x̂ Rσ)/σ
        Ry += gamma_x * Rx_hat
    return Ry, (Rx_hat, Rsigma, Rgamma_x)


def r_backward(dy, Rdy, cache, rcache):
    x_hat, gamma_x, sigma, axes = cache
    Rx_hat, Rsigma, Rgamma_x = rcache
    scale = gamma_x / sigma                                   # γ/σ
    Rscale = Rgamma_x / sigma                                 # R(γ/σ) = Rγ/σ − γ Rσ/σ²
    if Rsigma is not None:
        Rscale = Rscale - scale * Rsigma / sigma
    # the means in g and Rg (small arrays)
    m_dy, m_dy_xhat = _mean(dy, axes), _mean(dy * x_hat, axes)
    Rdgamma_terms = Rdy * x_hat                               # summands of R{dγ}
    m_Rdy, m_Rdy_xhat = _mean(Rdy, axes), _mean(Rdgamma_terms, axes)
    # R{dx} = (γ/σ) Rg + R(γ/σ) g, expanded; the x̂- and constant terms are collected
    # into small coefficient arrays:
    #   = (γ/σ)(R{dy} − Rx̂ E[dy x̂]) + R(γ/σ) dy
    #     − x̂ [(γ/σ)(E[R{dy} x̂] + E[dy Rx̂]) + R(γ/σ) E[dy x̂]] − [(γ/σ) E[R{dy}] + R(γ/σ) E[dy]]
    x_hat_coef = scale * m_Rdy_xhat + Rscale * m_dy_xhat
    Rdx = Rdy * scale
    Rdx += dy * Rscale
    if Rx_hat is not None:
        dy_Rx_hat = dy * Rx_hat
        Rdgamma_terms += dy_Rx_hat
        x_hat_coef += scale * _mean(dy_Rx_hat, axes)
        Rdx -= Rx_hat * (scale * m_dy_xhat)
    Rdx -= x_hat * x_hat_coef
    Rdx -= scale * m_Rdy + Rscale * m_dy
    return Rdx, {"gamma": Rdgamma_terms.sum(axis=axes), "beta": Rdy.sum(axis=axes)}
