"""NumPy versions of the unconstrained transforms (for summaries, sampling and tests).

q(theta) is Gaussian in u; theta = forward(u). The backends use their own (PyMC's
log / logodds transforms, NumPyro's biject_to), which are the same maps.
"""

from __future__ import annotations

import numpy as np

from .distributions import interval_bounds, transform_kind

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(64)  # nodes/weights for E over N(0, 1)
_GH_W = _GH_W / _GH_W.sum()


def _sigmoid(u):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(u, dtype=float)))


def forward(support: str, u):
    """The latent's value at the unconstrained u (an ordered vector: on the last axis,
    x_0 = u_0, x_k = x_{k-1} + exp(u_k)).

    >>> forward("ordered", np.array([1.0, 0.0, 0.0])).tolist()
    [1.0, 2.0, 3.0]
    >>> float(forward("interval(0.0, 10.0)", 0.0))
    5.0
    """
    kind = transform_kind(support)
    u = np.asarray(u, dtype=float)
    if kind == "identity":
        return u
    if kind == "exp":
        return np.exp(u)
    if kind == "interval":
        lower, upper = interval_bounds(support)
        return lower + (upper - lower) * _sigmoid(u)
    if kind == "ordered":
        return np.cumsum(np.concatenate([u[..., :1], np.exp(u[..., 1:])], axis=-1), axis=-1)
    if kind == "softmax":  # a Dirichlet's p = softmax([x, 0]) of u = (x, a)
        return simplex_of(u)
    return _sigmoid(u)


def inverse(support: str, x):
    kind = transform_kind(support)
    x = np.asarray(x, dtype=float)
    if kind == "identity":
        return x
    if kind == "exp":
        return np.log(x)
    if kind == "interval":
        lower, upper = interval_bounds(support)
        return np.log(x - lower) - np.log(upper - x)
    if kind == "ordered":
        return np.concatenate([x[..., :1], np.log(np.diff(x, axis=-1))], axis=-1)
    if kind == "softmax":  # x = log(p_k / p_K), and the auxiliary a at 0
        logs = np.log(x)
        return np.concatenate([logs[..., :-1] - logs[..., -1:], np.zeros_like(logs[..., :1])], -1)
    return np.log(x) - np.log1p(-x)


def softplus_inverse(x, xp=np):
    """The raw parameter whose softplus is ``x`` > 0: how every backend stores a q scale
    (scale = softplus(raw)); ``xp``: the array namespace (NumPy, jax.numpy,
    pytensor.tensor).

    >>> round(float(np.logaddexp(0.0, softplus_inverse(0.25))), 12)
    0.25
    """
    return x + xp.log(-xp.expm1(-x))


def simplex_of(u, xp=np):
    """A Dirichlet Global's p = softmax([x, 0]) of its K unconstrained numbers u = (x, a)
    (a, the last, is an auxiliary nothing reads); ``xp``: the array namespace, so every
    backend uses this one map.

    >>> simplex_of(np.array([0.0, 0.0, 5.0])).round(3).tolist()
    [0.333, 0.333, 0.333]
    """
    logits = xp.concatenate([u[..., :-1], xp.zeros_like(u[..., :1])], axis=-1)
    top = xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(logits - top)
    return e / xp.sum(e, axis=-1, keepdims=True)


def simplex_log_prior(u, alpha, xp=np, gammaln=None):
    """log p(u) of a Dirichlet(alpha) Global in its unconstrained numbers u = (x, a):
    log Dirichlet(p; alpha) + sum_k log p_k (the log-Jacobian of x -> p_1..p_{K-1}) +
    log N(a; 0, 1), one value per draw (the last axis). ``gammaln``: the namespace's."""
    logits = xp.concatenate([u[..., :-1], xp.zeros_like(u[..., :1])], axis=-1)
    top = xp.max(logits, axis=-1, keepdims=True)
    log_p = logits - top - xp.log(xp.sum(xp.exp(logits - top), axis=-1, keepdims=True))
    gammaln = gammaln or _gammaln
    aux = u[..., -1]
    return (gammaln(xp.sum(alpha, axis=-1)) - xp.sum(gammaln(alpha), axis=-1)
            + xp.sum(alpha * log_p, axis=-1) - 0.5 * aux * aux - 0.5 * np.log(2.0 * np.pi))


def _gammaln(x):
    from scipy.special import gammaln
    return gammaln(x)


def log_abs_det_jacobian(support: str, u):
    """log |d forward / du| at u, entry by entry (its sum is the log-determinant; an
    ordered vector's is sum_{k >= 1} u_k)."""
    kind = transform_kind(support)
    u = np.asarray(u, dtype=float)
    if kind == "identity":
        return np.zeros_like(u)
    if kind == "exp":
        return u
    if kind == "ordered":
        return np.concatenate([np.zeros_like(u[..., :1]), u[..., 1:]], axis=-1)
    if kind == "softmax":  # K numbers onto K - 1: its density is on u (a Global's only)
        raise ValueError("a simplex (kq.Dirichlet) latent has its density on u = (x, a), "
                         "not through a Jacobian of p")
    logistic = -np.logaddexp(0.0, -u) - np.logaddexp(0.0, u)
    if kind == "interval":
        lower, upper = interval_bounds(support)
        return np.log(upper - lower) + logistic
    return logistic


def moments(support: str, loc, scale) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of forward(u), u ~ N(loc, scale), in the variable's space."""
    loc, scale = np.asarray(loc, dtype=float), np.asarray(scale, dtype=float)
    kind = transform_kind(support)
    if kind == "identity":
        return loc, scale
    if kind == "exp":  # log-normal, in closed form
        mean = np.exp(loc + 0.5 * scale**2)
        return mean, mean * np.sqrt(np.expm1(scale**2))
    if kind == "ordered":  # u_0 plus a cumulative sum of independent log-normals
        gaps_mean, gaps_sd = moments("positive", loc[..., 1:], scale[..., 1:])
        mean = np.cumsum(np.concatenate([loc[..., :1], gaps_mean], axis=-1), axis=-1)
        var = np.cumsum(np.concatenate([scale[..., :1], gaps_sd], axis=-1) ** 2, axis=-1)
        return mean, np.sqrt(var)
    if kind == "softmax":  # no closed form: 20,000 draws of a fixed stream (deterministic)
        eps = np.random.default_rng(0).standard_normal((20_000,) + loc.shape)
        x = forward(support, loc + scale * eps)
        return x.mean(0), x.std(0)
    # no closed form: 64-point Gauss-Hermite quadrature, deterministic and accurate
    x = forward(support, loc[..., None] + scale[..., None] * _GH_X)
    mean = (x * _GH_W).sum(-1)
    var = ((x - mean[..., None]) ** 2 * _GH_W).sum(-1)
    return mean, np.sqrt(var)
