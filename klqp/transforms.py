"""NumPy versions of the unconstrained transforms (for summaries, sampling and tests).

q(theta) is Gaussian in u; theta = forward(u). The backends use their own (PyMC's
log / logodds transforms, NumPyro's biject_to), which are the same maps.
"""

from __future__ import annotations

import numpy as np

from .distributions import interval_bounds, transform_kind
from .expr import scipy_gammaln as _gammaln

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
    if kind == "corr_cholesky":  # an LKJCholesky's L from u's strictly lower triangle
        return corr_cholesky_of(u)
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
    if kind == "corr_cholesky":  # the partial correlations' atanh, the auxiliaries at 0
        return corr_cholesky_inverse(np.asarray(x, dtype=float))
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


# -- an LKJCholesky Global: q in the (K, K) numbers u of its value's own shape ------------
# u's strictly lower triangle (K (K - 1) / 2 numbers) maps onto the Cholesky factor L of a
# correlation matrix; its diagonal and upper triangle are auxiliaries with prior N(0, 1)
# that nothing reads (a Dirichlet's a, K (K + 1) / 2 of them): q keeps the value's shape.

def _strict_lower(size: int, dtype="float64") -> np.ndarray:
    """1 below the diagonal, else 0; in the values' dtype (a float64 constant would make
    a float32 PyTensor graph float64)."""
    return np.tril(np.ones((size, size), dtype=dtype), -1)


def _matrix_size(u) -> int:
    """K of a (..., K, K) array; a PyTensor variable's from its static type."""
    size = u.shape[-1]
    if not isinstance(size, (int, np.integer)):
        size = getattr(u, "type", None) and u.type.shape[-1]
        if size is None:
            raise ValueError(f"an LKJCholesky value needs a known matrix size, got {u!r}")
    return int(size)


def _log_sech(u, xp):
    """log sech(u) = log(1 - tanh(u)^2) / 2, without overflow at large |u|."""
    a = xp.abs(u)
    return float(np.log(2.0)) - a - xp.log1p(xp.exp(-2.0 * a))


def corr_cholesky_of(u, xp=np):
    """The Cholesky factor L of a correlation matrix from the (K, K) numbers u (their
    strictly lower triangle): z = tanh(u) are partial correlations, row by row
    L_ij = z_ij prod_{k<j} sqrt(1 - z_ik^2) (j < i), L_ii = prod_{k<i} sqrt(1 - z_ik^2),
    so each row has unit norm (the map of NumPyro's CorrCholeskyTransform, Stan's
    cholesky_factor_corr). ``xp``: the array namespace, so every backend uses this map.

    >>> L = corr_cholesky_of(np.array([[9.0, 9.0], [0.5, 9.0]]))
    >>> L.round(4).tolist(), float((L @ L.T)[1, 0].round(4))
    ([[1.0, 0.0], [0.4621, 0.8868]], 0.4621)
    """
    size = _matrix_size(u)
    lower = _strict_lower(size, u.dtype)
    log_left = _log_sech(u, xp) * lower          # log sqrt(1 - z_ik^2) where k < i
    before = xp.cumsum(log_left, axis=-1) - log_left
    return (xp.tanh(u) * lower + np.eye(size, dtype=u.dtype)) * xp.exp(before)


def corr_cholesky_inverse(chol, xp=np):
    """u with ``corr_cholesky_of(u) = chol``: atanh of the partial correlations below the
    diagonal, 0 on and above it."""
    lower = _strict_lower(_matrix_size(chol), chol.dtype)
    left = 1.0 - (xp.cumsum(chol**2, axis=-1) - chol**2)   # 1 - sum_{k<j} L_ik^2
    bound = 1.0 - np.finfo(chol.dtype).eps                 # +-1 would give atanh = inf
    z = xp.clip(chol / xp.sqrt(xp.maximum(left, np.finfo(chol.dtype).tiny)), -bound, bound)
    return xp.arctanh(xp.where(lower > 0, z, 0.0))


def lkj_log_prior(u, eta, xp=np, gammaln=None):
    """log p(u) of an LKJCholesky(K, eta) Global in its (K, K) numbers u: the LKJ density
    of L = corr_cholesky_of(u) on L's strictly lower triangle, sum_{i>=1} (2 eta - 3 + K
    - i) log L_ii minus the log normalizer (Lewandowski, Kurowicka & Joe 2009), plus the
    map's log-Jacobian sum_{j<i} (log sech^2 u_ij + sum_{k<j} log sqrt(1 - z_ik^2)), plus
    log N(0, 1) of the K (K + 1) / 2 auxiliaries; one value per draw (the last two axes).
    ``eta``: a number; ``gammaln``: the namespace's."""
    gammaln = gammaln or _gammaln
    size = _matrix_size(u)
    lower = _strict_lower(size, u.dtype)
    log_left = _log_sech(u, xp) * lower
    before = xp.cumsum(log_left, axis=-1) - log_left
    log_jacobian = xp.sum((before + 2.0 * log_left) * lower, axis=(-2, -1))
    log_diag = xp.sum(log_left, axis=-1)          # log L_ii
    aux = u * (1.0 - lower)
    log_aux = (-0.5 * xp.sum(aux * aux, axis=(-2, -1))
               - 0.25 * size * (size + 1) * float(np.log(2.0 * np.pi)))
    return _lkj_on_diagonal(log_diag, eta, xp, gammaln) + log_jacobian + log_aux


def _lkj_on_diagonal(log_diag, eta, xp, gammaln):
    """log LKJCholesky(L; eta) from log diag(L) (..., K), on L's strictly lower triangle:
    sum_{i>=1} (2 eta - 3 + K - i) log L_ii - log normalizer, the normalizer
    (K - 1) log(pi) / 2 + multigammaln(alpha - 1/2, K - 1) - (K - 1) gammaln(alpha),
    alpha = eta + (K - 1) / 2."""
    size = _matrix_size(log_diag)
    steps = np.arange(1, size, dtype=log_diag.dtype)
    order = 2.0 * (eta[..., None] if hasattr(eta, "ndim") else eta) - 3.0 + size - steps
    dm1, alpha = size - 1, eta + 0.5 * (size - 1)
    log_norm = (float((0.5 * dm1 + dm1 * (dm1 - 1) / 4.0) * np.log(np.pi))
                + sum(gammaln(alpha - 0.5 - 0.5 * k) for k in range(dm1))
                - dm1 * gammaln(alpha))
    return xp.sum(order * log_diag[..., 1:], axis=-1) - log_norm


def lkj_log_density(chol, eta):
    """log LKJCholesky(chol; eta) (NumPy), with respect to chol's strictly lower
    triangle (NumPyro's ``LKJCholesky.log_prob``), one value per (K, K) matrix."""
    chol = np.asarray(chol, dtype=float)
    eta = np.asarray(eta, dtype=float)
    log_diag = np.log(np.diagonal(chol, axis1=-2, axis2=-1))
    return _lkj_on_diagonal(log_diag, eta, np, _gammaln)


def lkj_draw(size: int, eta: float, rng: np.random.Generator, batch=()) -> np.ndarray:
    """Draws of L ~ LKJCholesky(size, eta) (NumPy): column j's partial correlations are
    independent, 2 Beta(b_j, b_j) - 1 with b_j = eta + (size - 2 - j) / 2 (the C-vine
    of Lewandowski et al. 2009, in corr_cholesky_of's order)."""
    column = np.arange(size)
    # the last column has no entry below the diagonal: any valid b there
    b = np.where(column < size - 1, eta + 0.5 * (size - 2 - column), 1.0)
    b = np.broadcast_to(b, tuple(batch) + (size, size))
    bound = 1.0 - np.finfo(float).eps
    z = np.clip(2.0 * rng.beta(b, b) - 1.0, -bound, bound)
    return corr_cholesky_of(np.where(_strict_lower(size) > 0, np.arctanh(z), 0.0))


#: Families whose Global's prior is written on u, in the value's own shape, because the
#: map onto the value drops numbers (their spare entries are auxiliary N(0, 1)).
ON_U = ("Dirichlet", "LKJCholesky")


def value_on_u(family: str, u, xp=np):
    """What the model reads of an ON_U Global whose unconstrained numbers are u."""
    return simplex_of(u, xp) if family == "Dirichlet" else corr_cholesky_of(u, xp)


def log_prior_on_u(family: str, u, params: dict, xp=np, gammaln=None):
    """log p(u) of an ON_U Global, one value per draw; ``params``: its evaluated ones."""
    if family == "Dirichlet":
        return simplex_log_prior(u, params["alpha"], xp, gammaln)
    return lkj_log_prior(u, params["eta"], xp, gammaln)


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
    if kind == "corr_cholesky":
        raise ValueError("an LKJCholesky latent has its density on u (lkj_log_prior), not "
                         "through a Jacobian of L")
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
    if kind in ("softmax", "corr_cholesky"):  # no closed form: 20,000 draws of a fixed stream
        eps = np.random.default_rng(0).standard_normal((20_000,) + loc.shape)
        x = forward(support, loc + scale * eps)
        return x.mean(0), x.std(0)
    # no closed form: 64-point Gauss-Hermite quadrature, deterministic and accurate
    x = forward(support, loc[..., None] + scale[..., None] * _GH_X)
    mean = (x * _GH_W).sum(-1)
    var = ((x - mean[..., None]) ** 2 * _GH_W).sum(-1)
    return mean, np.sqrt(var)
