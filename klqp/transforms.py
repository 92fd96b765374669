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
    return np.log(x) - np.log1p(-x)


def softplus_inverse(x, xp=np):
    """The raw parameter whose softplus is ``x`` > 0: how every backend stores a q scale
    (scale = softplus(raw)); ``xp``: the array namespace (NumPy, jax.numpy,
    pytensor.tensor).

    >>> round(float(np.logaddexp(0.0, softplus_inverse(0.25))), 12)
    0.25
    """
    return x + xp.log(-xp.expm1(-x))


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
    # no closed form: 64-point Gauss-Hermite quadrature, deterministic and accurate
    x = forward(support, loc[..., None] + scale[..., None] * _GH_X)
    mean = (x * _GH_W).sum(-1)
    var = ((x - mean[..., None]) ** 2 * _GH_W).sum(-1)
    return mean, np.sqrt(var)
