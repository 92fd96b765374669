"""NumPy log densities of klqp's families, and draws from them, elementwise, for results
read after a fit (per-row log-likelihoods for LOO/WAIC, posterior predictive draws,
held-out log predictive densities). Training never uses them: each backend has its
library's own densities, held to tests/reference.py's scipy.stats by the agreement tests.

``logpdf(family, x, params)`` takes the parameter names of ``klqp.distributions``.
Families with a gamma function need SciPy (ArviZ, which the ArviZ export needs, installs it).

>>> import numpy as np
>>> round(float(logpdf("Normal", 0.0, {"mu": 0.0, "sigma": 1.0})), 6)
-0.918939
>>> round(float(logpdf("Bernoulli", 1, {"probs": 0.25})), 6)
-1.386294
>>> sample("Poisson", {"mu": np.array([1.0, 50.0])}, np.random.default_rng(0)).shape
(2,)
"""

from __future__ import annotations

import numpy as np

from . import transforms
from .distributions import VALUE_EVENT_DIMS, split_mixture
from .expr import scipy_gammaln as _gammaln

__all__ = ["logpdf", "sample", "FAMILIES", "EVENT_DIMS", "per_value", "continuous_bernoulli_logp",
           "ordered_logistic_logp", "half_cauchy_logp", "half_student_t_logp", "log1mexp"]

_LOG_2PI = np.log(2.0 * np.pi)
_LOG_2, _LOG_PI = float(np.log(2.0)), float(np.log(np.pi))


def _logits(p: dict):
    return p["logits"] if "logits" in p else np.log(p["probs"]) - np.log1p(-p["probs"])


def _normal(x, mu, sigma):
    z = (x - mu) / sigma
    return -0.5 * z * z - np.log(sigma) - 0.5 * _LOG_2PI


def continuous_bernoulli_log_norm(logits, xp=np):
    """log C(l) of a ContinuousBernoulli with logits l (Loaiza-Ganem & Cunningham 2019):
    C(l) = l / tanh(l / 2), which tends to 2 as l -> 0 (a series there). ``xp``: the
    array namespace, so every backend uses this one formula.

    >>> round(float(continuous_bernoulli_log_norm(0.0)), 12) == round(float(np.log(2.0)), 12)
    True
    """
    a = xp.abs(logits)
    small = a < 1e-3
    safe = xp.where(small, 1.0, a)
    return xp.where(small, xp.log(2.0 + a * a / 6.0), xp.log(safe / xp.tanh(safe / 2)))


def continuous_bernoulli_logp(x, logits, xp=np):
    """log p(x) = x l - softplus(l) + log C(l) of a ContinuousBernoulli with logits l."""
    return x * logits - xp.logaddexp(0.0, logits) + continuous_bernoulli_log_norm(logits, xp)


def _categorical(x, logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = np.broadcast_to(logp, np.shape(x) + logp.shape[-1:])
    return np.take_along_axis(logp, np.asarray(x, dtype=int)[..., None], axis=-1)[..., 0]


def log1mexp(x, xp=np):
    """log(1 - exp(x)) for x < 0, stably at both ends (Maechler 2012)."""
    return xp.where(x > -_LOG_2, xp.log(-xp.expm1(x)), xp.log1p(-xp.exp(x)))


def ordered_logistic_logp(y, eta, cutpoints, xp=np):
    """log P(y = k) of an OrderedLogistic (labels 0..K-1, the K-1 cutpoints on the last
    axis), with a = eta - c_{k-1}, b = eta - c_k: sigmoid(a) - sigmoid(b) = sigmoid(a)
    sigmoid(-b) (1 - exp(b - a)), so log P = log_sigmoid(a) + log_sigmoid(-b) +
    log1mexp(c_{k-1} - c_k), a term left out where its cutpoint is infinite (k = 0:
    c_{-1} = -inf; k = K-1: c_{K-1} = +inf); -inf outside 0..K-1. The libraries' own
    take the log of a difference of sigmoids (-inf, and NaN gradients, once a
    probability underflows). ``xp``: the array namespace, one formula for every backend.

    >>> round(float(np.exp(ordered_logistic_logp(1, 0.0, np.array([-1.0, 1.0])))), 6)
    0.462117
    """
    last = cutpoints.shape[-1]  # K - 1
    at = xp.arange(last)
    label = xp.expand_dims(y, -1)
    lo = xp.sum(xp.where(xp.equal(at, label - 1), cutpoints, 0.0), axis=-1)  # c_{y-1}
    hi = xp.sum(xp.where(xp.equal(at, label), cutpoints, 0.0), axis=-1)      # c_y
    has_lo, has_hi = y > 0, y < last
    inner = has_lo & has_hi
    log_sigmoid = lambda x: -xp.logaddexp(0.0, -x)  # noqa: E731
    out = (xp.where(has_lo, log_sigmoid(eta - lo), 0.0)
           + xp.where(has_hi, log_sigmoid(hi - eta), 0.0)
           + xp.where(inner, log1mexp(xp.where(inner, lo - hi, -1.0), xp), 0.0))
    return xp.where((y >= 0) & (y <= last), out, -np.inf)


def half_cauchy_logp(x, beta, xp=np):
    """log p(x) = log(2 / pi) - log(beta) - log1p((x / beta)^2) on x >= 0 (constants as
    Python floats: PyMC's own adds log 2 of an int8, computed in float32)."""
    res = _LOG_2 - _LOG_PI - xp.log(beta) - xp.log1p((x / beta) ** 2)
    return xp.where(x < 0, -np.inf, res)


def half_student_t_logp(x, nu, sigma, xp=np, gammaln=_gammaln):
    """log 2 + StudentT(nu, 0, sigma)'s log p(x) on x >= 0."""
    res = (_LOG_2 + gammaln((nu + 1.0) / 2.0) - gammaln(nu / 2.0) - 0.5 * xp.log(nu * np.pi)
           - xp.log(sigma) - (nu + 1.0) / 2.0 * xp.log1p((x / sigma) ** 2 / nu))
    return xp.where(x < 0, -np.inf, res)


def _ordered_logistic(x, eta, cutpoints):
    """NumPy's: labels that are not whole numbers have log P = -inf."""
    x, cutpoints = np.asarray(x), np.asarray(cutpoints)
    whole = x == np.round(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ordered_logistic_logp(np.where(whole, x, -1), eta, cutpoints)
    return np.where(whole, out, -np.inf)


def _mv_normal(x, mu, chol):
    """log N(x; mu, chol chol^T) over the last axis (one number per draw)."""
    x, mu, chol = (np.asarray(a, dtype=float) for a in (x, mu, chol))
    diff = x - mu
    chol = np.broadcast_to(chol, diff.shape + diff.shape[-1:])
    white = np.linalg.solve(chol, diff[..., None])[..., 0]
    log_det = np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    return -0.5 * (white ** 2).sum(-1) - log_det - 0.5 * diff.shape[-1] * _LOG_2PI


def _lkj_draws(dim, eta, rng):
    """LKJCholesky draws; ``sample`` may have broadcast the (scalar) parameters to the
    value's shape, (..., K, K): its trailing axes are then the matrix's own."""
    size = int(np.max(dim))
    eta = np.asarray(eta, dtype=float)
    if eta.shape[-2:] == (size, size):
        eta = eta[..., 0, 0]
    return transforms.lkj_draw(size, eta[..., None, None], rng, eta.shape)


def _normalized(y):
    return y / y.sum(axis=-1, keepdims=True)


def _zero_inflated(x, psi, logp):
    """log of (1 - psi) [x = 0] + psi p(x), from the count family's log p(x)."""
    with np.errstate(divide="ignore"):
        nonzero = np.log(psi) + logp
        return np.where(x == 0, np.logaddexp(np.log1p(-psi), nonzero), nonzero)


_FAMILIES = {
    "Normal": lambda x, p: _normal(x, p["mu"], p["sigma"]),
    "HalfNormal": lambda x, p: _normal(x, 0.0, p["sigma"]) + np.log(2.0),
    "LogNormal": lambda x, p: _normal(np.log(x), p["mu"], p["sigma"]) - np.log(x),
    "Exponential": lambda x, p: np.log(p["lam"]) - p["lam"] * x,
    "Gamma": lambda x, p: (p["alpha"] * np.log(p["beta"]) - _gammaln(p["alpha"])
                           + (p["alpha"] - 1) * np.log(x) - p["beta"] * x),
    "Beta": lambda x, p: ((p["alpha"] - 1) * np.log(x) + (p["beta"] - 1) * np.log1p(-x)
                          + _gammaln(p["alpha"] + p["beta"]) - _gammaln(p["alpha"])
                          - _gammaln(p["beta"])),
    "StudentT": lambda x, p: (_gammaln((p["nu"] + 1) / 2) - _gammaln(p["nu"] / 2)
                              - 0.5 * np.log(p["nu"] * np.pi) - np.log(p["sigma"])
                              - (p["nu"] + 1) / 2
                              * np.log1p(((x - p["mu"]) / p["sigma"]) ** 2 / p["nu"])),
    "Bernoulli": lambda x, p: x * _logits(p) - np.logaddexp(0.0, _logits(p)),
    "Binomial": lambda x, p: (_gammaln(p["n"] + 1) - _gammaln(x + 1) - _gammaln(p["n"] - x + 1)
                              + x * _logits(p) - p["n"] * np.logaddexp(0.0, _logits(p))),
    "Poisson": lambda x, p: x * np.log(p["mu"]) - p["mu"] - _gammaln(x + 1),
    "Categorical": lambda x, p: _categorical(x, p["logits"]),
    "ContinuousBernoulli": lambda x, p: continuous_bernoulli_logp(x, _logits(p)),
    "HalfCauchy": lambda x, p: half_cauchy_logp(x, p["beta"]),
    "HalfStudentT": lambda x, p: half_student_t_logp(x, p["nu"], p["sigma"]),
    "Cauchy": lambda x, p: (-np.log(np.pi) - np.log(p["beta"])
                            - np.log1p(((x - p["alpha"]) / p["beta"]) ** 2)),
    "Laplace": lambda x, p: -np.log(2.0 * p["b"]) - np.abs(x - p["mu"]) / p["b"],
    "MvNormal": lambda x, p: _mv_normal(x, p["mu"], p["chol"]),
    "Dirichlet": lambda x, p: (_gammaln(np.sum(np.broadcast_to(p["alpha"], np.shape(x)), -1))
                               - np.sum(_gammaln(np.broadcast_to(p["alpha"], np.shape(x))), -1)
                               + np.sum((p["alpha"] - 1.0) * np.log(x), -1)),
    "LKJCholesky": lambda x, p: transforms.lkj_log_density(x, p["eta"]),
    "Uniform": lambda x, p: np.where((x >= p["lower"]) & (x <= p["upper"]),
                                     -np.log(p["upper"] - p["lower"]), -np.inf),
    "Weibull": lambda x, p: (np.log(p["alpha"]) - np.log(p["beta"])
                             + (p["alpha"] - 1) * np.log(x / p["beta"])
                             - (x / p["beta"]) ** p["alpha"]),
    "NegativeBinomial": lambda x, p: (_gammaln(x + p["alpha"]) - _gammaln(x + 1)
                                      - _gammaln(p["alpha"])
                                      + p["alpha"] * (np.log(p["alpha"])
                                                      - np.log(p["alpha"] + p["mu"]))
                                      + x * (np.log(p["mu"]) - np.log(p["alpha"] + p["mu"]))),
    "ZeroInflatedPoisson": lambda x, p: np.where(
        x == 0, np.logaddexp(np.log1p(-p["psi"]), np.log(p["psi"]) - p["mu"]),
        np.log(p["psi"]) + x * np.log(p["mu"]) - p["mu"] - _gammaln(x + 1)),
    "ZeroInflatedNegativeBinomial": lambda x, p: _zero_inflated(
        x, p["psi"], _FAMILIES["NegativeBinomial"](x, p)),
    "OrderedLogistic": lambda x, p: _ordered_logistic(x, p["eta"], p["cutpoints"]),
}


def logpdf(family: str, x, params: dict, component: str = "") -> np.ndarray:
    """log p(x) elementwise, for a klqp family with parameters ``params`` (NumPy arrays);
    a kq.Mixture also needs its ``component`` family (``dist.component``)."""
    if family == "Mixture":
        w, parts = split_mixture(params)
        logps = np.stack([logpdf(component, x, p) for p in parts], axis=-1)
        with np.errstate(divide="ignore"):
            terms = np.log(np.asarray(w, dtype=float)) + logps
        top = np.max(terms, axis=-1, keepdims=True)
        return np.log(np.sum(np.exp(terms - top), axis=-1)) + top[..., 0]
    if family not in _FAMILIES:
        raise NotImplementedError(f"no NumPy density for {family!r}; families: {sorted(_FAMILIES)}")
    x = np.asarray(x, dtype=int if family == "Categorical" else float)
    params = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    return np.asarray(_FAMILIES[family](x, params))


def _probs(p: dict):
    if "probs" in p:
        return p["probs"]
    return 0.5 * (1.0 + np.tanh(0.5 * p["logits"]))  # sigmoid, stable at both ends


def _size(p: dict) -> tuple:
    """The broadcast shape of a family's parameters: the size of its standard draws."""
    return np.broadcast_shapes(*(np.shape(v) for v in p.values()))


def _categorical_draw(logits, rng):
    """Gumbel-max: argmax(logits + Gumbel noise) is a draw of Categorical(logits)."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)


def _continuous_bernoulli_draw(logits, rng):
    """Inverse CDF: x = log1p(u expm1(l)) / l (u uniform), the uniform at l = 0."""
    u = rng.uniform(size=np.shape(logits))
    safe = np.where(np.abs(logits) < 1e-6, 1e-6, logits)
    # each branch keeps its exponent <= 0 where it is taken; np.where evaluates both
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.where(safe > 0, 1.0 + np.log(u + (1.0 - u) * np.exp(-safe)) / safe,
                     np.log1p(u * np.expm1(safe)) / safe)
    return np.clip(np.where(np.abs(logits) < 1e-6, u, x), 0.0, 1.0)


def _ordered_logistic_draw(eta, cutpoints, rng):
    """Inverse CDF with one uniform u: P(y <= k) = sigmoid(c_k - eta) for k < K-1, so y is
    the number of cutpoints whose CDF value u exceeds. ``cutpoints``: (*eta.shape, K-1)."""
    cdf = 0.5 * (1.0 + np.tanh(0.5 * (cutpoints - eta[..., None])))  # sigmoid, stable
    u = rng.uniform(size=np.shape(eta))
    return (u[..., None] > cdf).sum(axis=-1).astype(np.int64)


_DRAWS = {
    "Normal": lambda p, rng: rng.normal(p["mu"], p["sigma"]),
    "HalfNormal": lambda p, rng: np.abs(rng.normal(0.0, p["sigma"])),
    "LogNormal": lambda p, rng: np.exp(rng.normal(p["mu"], p["sigma"])),
    "Exponential": lambda p, rng: rng.exponential(1.0 / p["lam"]),
    "Gamma": lambda p, rng: rng.gamma(p["alpha"], 1.0 / p["beta"]),
    "Beta": lambda p, rng: rng.beta(p["alpha"], p["beta"]),
    "StudentT": lambda p, rng: p["mu"] + p["sigma"] * rng.standard_t(
        np.broadcast_to(p["nu"], np.broadcast_shapes(*(np.shape(v) for v in p.values())))),
    "Bernoulli": lambda p, rng: (rng.uniform(size=np.shape(_probs(p))) < _probs(p)).astype(np.int64),
    "Binomial": lambda p, rng: rng.binomial(np.asarray(p["n"], dtype=np.int64), _probs(p)),
    "Poisson": lambda p, rng: rng.poisson(p["mu"]),
    "Categorical": lambda p, rng: _categorical_draw(p["logits"], rng),
    "ContinuousBernoulli": lambda p, rng: _continuous_bernoulli_draw(
        p["logits"] if "logits" in p else np.log(p["probs"]) - np.log1p(-p["probs"]), rng),
    "HalfCauchy": lambda p, rng: np.abs(p["beta"] * rng.standard_cauchy(_size(p))),
    "HalfStudentT": lambda p, rng: np.abs(p["sigma"] * rng.standard_t(
        np.broadcast_to(p["nu"], _size(p)))),
    "Cauchy": lambda p, rng: p["alpha"] + p["beta"] * rng.standard_cauchy(_size(p)),
    "Laplace": lambda p, rng: rng.laplace(p["mu"], p["b"]),
    "Dirichlet": lambda p, rng: _normalized(rng.gamma(p["alpha"])),
    "MvNormal": lambda p, rng: p["mu"] + np.einsum("...ij,...j->...i", p["chol"],
                                                   rng.standard_normal(p["mu"].shape)),
    "LKJCholesky": lambda p, rng: _lkj_draws(p["dim"], p["eta"], rng),
    "Uniform": lambda p, rng: rng.uniform(p["lower"], p["upper"]),
    "Weibull": lambda p, rng: p["beta"] * rng.weibull(np.broadcast_to(p["alpha"], _size(p))),
    # a Gamma(alpha, rate alpha / mu) mixture of Poissons
    "NegativeBinomial": lambda p, rng: rng.poisson(rng.gamma(p["alpha"], p["mu"] / p["alpha"])),
    "ZeroInflatedPoisson": lambda p, rng: (rng.poisson(p["mu"])
                                           * (rng.uniform(size=_size(p)) < p["psi"])),
    "ZeroInflatedNegativeBinomial": lambda p, rng: (
        rng.poisson(rng.gamma(p["alpha"], p["mu"] / p["alpha"]))
        * (rng.uniform(size=_size(p)) < p["psi"])),
    "OrderedLogistic": lambda p, rng: _ordered_logistic_draw(p["eta"], p["cutpoints"], rng),
}

#: The families with both a NumPy density (``logpdf``) and a NumPy sampler (``sample``).
FAMILIES = tuple(sorted(_FAMILIES))
assert set(_DRAWS) == set(_FAMILIES)


#: Parameters whose trailing axes are not the draw's (a Categorical's categories).
EVENT_DIMS = {"Categorical": {"logits": 1}, "OrderedLogistic": {"cutpoints": 1},
              "Mixture": {"w": 1}, "MvNormal": {"chol": 1}}


def per_value(family: str, logp, shape) -> np.ndarray:
    """``logpdf``'s values broadcast to a value of ``shape``, one per entry, or one per draw
    of a family whose draws span trailing axes (an MvNormal's last): what a row sums."""
    shape = tuple(shape)
    return np.broadcast_to(logp, shape[:len(shape) - VALUE_EVENT_DIMS.get(family, 0)])


def sample(family: str, params: dict, rng: np.random.Generator, shape=None,
           component: str = "") -> np.ndarray:
    """One draw of a klqp family for each element of its broadcast parameters (NumPy).

    ``shape``: the draw's shape when the parameters broadcast to less (e.g. the rows of an
    observation whose parameters are one number). Integer families give int64 arrays.
    The stream of ``rng`` is the only randomness, so a seeded ``rng`` repeats the draws.
    A kq.Mixture also needs its ``component`` family.
    """
    if family not in _DRAWS and family != "Mixture":
        raise NotImplementedError(f"no NumPy sampler for {family!r}; families: {sorted(_DRAWS)}")
    params = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    events = EVENT_DIMS.get(family, {})
    own = {k: v.shape[:v.ndim - events.get(k, 0)] for k, v in params.items()}
    target = tuple(shape) if shape is not None else np.broadcast_shapes(*own.values())
    params = {k: np.broadcast_to(v, target + v.shape[v.ndim - events.get(k, 0):])
              for k, v in params.items()}
    if family == "Mixture":
        w, parts = split_mixture(params)
        # the component of each element by one uniform against w's cumulative sums
        which = (rng.uniform(size=target)[..., None] > np.cumsum(w, axis=-1)[..., :-1]).sum(-1)
        draws = np.stack([sample(component, p, rng, target) for p in parts], axis=-1)
        return np.take_along_axis(draws, which[..., None], axis=-1)[..., 0]
    return np.asarray(_DRAWS[family](params, rng))
