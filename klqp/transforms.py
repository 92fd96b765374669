"""NumPy versions of the unconstrained transforms (for summaries, sampling and tests).

q(theta) is Gaussian in u; theta = forward(u). The backends use their own (PyMC's
log / logodds transforms, NumPyro's biject_to), which are the same maps.
"""

from __future__ import annotations

import numpy as np

from .distributions import SUPPORT_TRANSFORM

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(64)  # nodes/weights for E over N(0, 1)
_GH_W = _GH_W / _GH_W.sum()


def forward(support: str, u):
    kind = SUPPORT_TRANSFORM[support]
    if kind == "identity":
        return np.asarray(u, dtype=float)
    if kind == "exp":
        return np.exp(u)
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(u, dtype=float)))


def inverse(support: str, x):
    kind = SUPPORT_TRANSFORM[support]
    x = np.asarray(x, dtype=float)
    if kind == "identity":
        return x
    if kind == "exp":
        return np.log(x)
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
    """log |d forward / du| at u."""
    kind = SUPPORT_TRANSFORM[support]
    u = np.asarray(u, dtype=float)
    if kind == "identity":
        return np.zeros_like(u)
    if kind == "exp":
        return u
    return -np.logaddexp(0.0, -u) - np.logaddexp(0.0, u)


def moments(support: str, loc, scale) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of forward(u), u ~ N(loc, scale), in the variable's space."""
    loc, scale = np.asarray(loc, dtype=float), np.asarray(scale, dtype=float)
    kind = SUPPORT_TRANSFORM[support]
    if kind == "identity":
        return loc, scale
    if kind == "exp":  # log-normal, in closed form
        mean = np.exp(loc + 0.5 * scale**2)
        return mean, mean * np.sqrt(np.expm1(scale**2))
    # no closed form: 64-point Gauss-Hermite quadrature, deterministic and accurate
    x = forward(support, loc[..., None] + scale[..., None] * _GH_X)
    mean = (x * _GH_W).sum(-1)
    var = ((x - mean[..., None]) ** 2 * _GH_W).sum(-1)
    return mean, np.sqrt(var)
