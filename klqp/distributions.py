"""Distributions as plain data: a family name, its parameters (expressions) and support.

Parameter names follow PyMC's (``mu``, ``sigma``, ``lam``, ``alpha``, ``beta``, ``nu``),
except Bernoulli/Binomial/Categorical, which take ``probs=`` or ``logits=``. Each
backend maps a family to its own distribution object; the core only knows the
support, which fixes the unconstrained transform a latent's q lives in.

>>> import klqp as kq
>>> kq.HalfNormal(1.0)
HalfNormal(sigma=1.0)
>>> kq.HalfNormal(1.0).support
'positive'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelError
from .expr import Expr, as_expr

__all__ = [
    "Distribution", "SUPPORT_TRANSFORM", "Normal", "HalfNormal", "LogNormal", "Exponential",
    "Gamma", "Beta", "Bernoulli", "Binomial", "Poisson", "Categorical", "StudentT",
    "ContinuousBernoulli", "HalfCauchy", "HalfStudentT", "Cauchy", "Laplace", "Weibull",
    "NegativeBinomial", "ZeroInflatedPoisson",
]

# Support -> the bijection from the real line that q's Gaussian is pushed through.
# Both backends use the same maps (PyMC: log / logodds transforms; NumPyro: biject_to).
SUPPORT_TRANSFORM = {
    "real": "identity",
    "positive": "exp",
    "unit_interval": "sigmoid",
}
DISCRETE_SUPPORTS = ("boolean", "nonnegative_integer", "categorical")


@dataclass(frozen=True, eq=False)
class Distribution:
    """``family`` with ``params`` (name -> expression) on ``support``.

    ``param_event_dims`` names parameters whose trailing axes are not part of the
    value's shape (a Categorical's ``logits`` carry one axis of categories).
    """

    family: str
    params: tuple  # ((name, Expr), ...) in the family's order
    support: str
    param_event_dims: tuple = ()

    @property
    def param_dict(self) -> dict[str, Expr]:
        return dict(self.params)

    @property
    def is_discrete(self) -> bool:
        return self.support in DISCRETE_SUPPORTS

    def __repr__(self) -> str:
        return f"{self.family}({', '.join(f'{k}={v!r}' for k, v in self.params)})"

    def to_dict(self) -> dict:
        return {"family": self.family, "params": {k: v.to_dict() for k, v in self.params},
                "support": self.support}  # support: read back by klqp/spec_json.py


def _make(family: str, support: str, event_dims=(), **params) -> Distribution:
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            try:
                np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                raise ModelError(f"kq.{family}: {k}={v!r} is not a number or a rectangular "
                                 "array of numbers") from None
    exprs = tuple((k, as_expr(v)) for k, v in params.items())
    check_constant_params(family, exprs)
    return Distribution(family, exprs, support, tuple(event_dims))


# -- where a constant parameter may lie --------------------------------------------------
# A parameter that is a constant (a number, an array, or an expression that reads no
# variable, such as kq.exp(-1.0)) is checked when the distribution is written; one outside
# its family's parameter space would only show up as a NaN loss inside a compiled step.
# Parameters that read variables are left to the model (e.g. write sigma=kq.exp(log_s)).
_POSITIVE = ("> 0", "a positive number, e.g. 1.0, or an expression such as kq.exp(log_s)")
_PROB = ("in [0, 1]", "a probability, or logits= for values on the real line")
_OPEN_PROB = ("in (0, 1)", "a probability strictly between 0 and 1, or logits= instead")
_COUNT = ("a whole number >= 0", "the number of trials, e.g. 10")
_PSI = ("in [0, 1]", "a probability, e.g. 0.7, or an expression such as kq.sigmoid(a)")
PARAM_DOMAINS = {
    "Normal": {"sigma": _POSITIVE},
    "HalfNormal": {"sigma": _POSITIVE},
    "LogNormal": {"sigma": _POSITIVE},
    "Exponential": {"lam": _POSITIVE},
    "Gamma": {"alpha": _POSITIVE, "beta": _POSITIVE},
    "Beta": {"alpha": _POSITIVE, "beta": _POSITIVE},
    "StudentT": {"nu": _POSITIVE, "sigma": _POSITIVE},
    "Bernoulli": {"probs": _PROB},
    "Binomial": {"n": _COUNT, "probs": _PROB},
    "Poisson": {"mu": _POSITIVE},
    "Categorical": {},
    "ContinuousBernoulli": {"probs": _OPEN_PROB},
    "HalfCauchy": {"beta": _POSITIVE},
    "HalfStudentT": {"nu": _POSITIVE, "sigma": _POSITIVE},
    "Cauchy": {"beta": _POSITIVE},
    "Laplace": {"b": _POSITIVE},
    "Weibull": {"alpha": _POSITIVE, "beta": _POSITIVE},
    "NegativeBinomial": {"mu": _POSITIVE, "alpha": _POSITIVE},
    "ZeroInflatedPoisson": {"psi": _PSI, "mu": _POSITIVE},
}


def _outside(rule: str, value):
    """Boolean mask of the entries of ``value`` outside ``rule``'s set."""
    if rule == "> 0":
        return ~(value > 0)
    if rule == "in [0, 1]":
        return ~((value >= 0) & (value <= 1))
    if rule == "in (0, 1)":
        return ~((value > 0) & (value < 1))
    return ~((value >= 0) & (value == np.round(value)))


def check_constant_params(family: str, params) -> None:
    """Refuse a constant parameter that is NaN, infinite or outside its family's domain
    (``PARAM_DOMAINS``), with a ModelError naming the family, the parameter, the value
    and the fix.

    >>> check_constant_params("Normal", (("mu", as_expr(0.0)), ("sigma", as_expr(-1.0))))
    Traceback (most recent call last):
    ...
    klqp.model.ModelError: kq.Normal: sigma=-1.0 must be > 0; give a positive number, ...
    """
    from .expr import NumpyOps, evaluate, variables_in

    domains = PARAM_DOMAINS.get(family, {})
    for name, e in params:
        if variables_in(e):
            continue  # reads variables: its value is only known in the fit
        with np.errstate(all="ignore"):
            try:
                value = np.asarray(evaluate(e, {}, NumpyOps), dtype=float)
            except (ValueError, IndexError):
                continue  # inconsistent constant shapes: the model's shape check names them
        shown = f"{name}={e!r}" if e.op == "const" else f"{name}={e!r} (= {_show(value)})"
        bad = ~np.isfinite(value)
        if bad.any():
            at = _first(bad)
            raise ModelError(f"kq.{family}: {shown} is not finite"
                             f"{_where(value, at, float(value[at]))}; give a finite number "
                             "(NaN and inf are not parameter values)")
        if name in domains:
            rule, fix = domains[name]
            bad = _outside(rule, value)
            if bad.any():
                at = _first(bad)
                raise ModelError(f"kq.{family}: {shown} must be {rule}"
                                 f"{_where(value, at, float(value[at]))}; give {fix}")


def _first(mask) -> tuple:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _where(value, at, entry=None) -> str:
    if not at:
        return ""
    return f" (entry {at}{'' if entry is None else f' is {entry!r}'})"


def _show(value) -> str:
    return repr(float(value)) if value.ndim == 0 else f"array of shape {value.shape}"


def _one_of(family: str, probs, logits) -> dict:
    if (probs is None) == (logits is None):
        raise ValueError(f"{family}: give exactly one of probs= or logits=")
    return {"probs": probs} if probs is not None else {"logits": logits}


def Normal(mu=0.0, sigma=1.0) -> Distribution:
    """Normal(mu, sigma) on the real line."""
    return _make("Normal", "real", mu=mu, sigma=sigma)


def HalfNormal(sigma=1.0) -> Distribution:
    """Half-normal with scale ``sigma`` on (0, inf)."""
    return _make("HalfNormal", "positive", sigma=sigma)


def LogNormal(mu=0.0, sigma=1.0) -> Distribution:
    """exp(Normal(mu, sigma)) on (0, inf)."""
    return _make("LogNormal", "positive", mu=mu, sigma=sigma)


def Exponential(lam=1.0) -> Distribution:
    """Exponential with rate ``lam`` on (0, inf)."""
    return _make("Exponential", "positive", lam=lam)


def Gamma(alpha, beta) -> Distribution:
    """Gamma with shape ``alpha`` and rate ``beta`` on (0, inf)."""
    return _make("Gamma", "positive", alpha=alpha, beta=beta)


def Beta(alpha, beta) -> Distribution:
    """Beta(alpha, beta) on (0, 1)."""
    return _make("Beta", "unit_interval", alpha=alpha, beta=beta)


def StudentT(nu, mu=0.0, sigma=1.0) -> Distribution:
    """Student's t with ``nu`` degrees of freedom, location ``mu``, scale ``sigma``."""
    return _make("StudentT", "real", nu=nu, mu=mu, sigma=sigma)


def HalfStudentT(nu, sigma=1.0) -> Distribution:
    """|StudentT(nu, 0, sigma)| on (0, inf): ``nu`` degrees of freedom, scale ``sigma``."""
    return _make("HalfStudentT", "positive", nu=nu, sigma=sigma)


def Cauchy(alpha=0.0, beta=1.0) -> Distribution:
    """Cauchy with location ``alpha`` and scale ``beta`` on the real line."""
    return _make("Cauchy", "real", alpha=alpha, beta=beta)


def HalfCauchy(beta=1.0) -> Distribution:
    """Half-Cauchy with scale ``beta`` on (0, inf)."""
    return _make("HalfCauchy", "positive", beta=beta)


def Laplace(mu=0.0, b=1.0) -> Distribution:
    """Laplace (double exponential) with location ``mu`` and scale ``b`` on the real line."""
    return _make("Laplace", "real", mu=mu, b=b)


def Weibull(alpha, beta) -> Distribution:
    """Weibull with shape ``alpha`` and scale ``beta`` on (0, inf) (scipy's weibull_min)."""
    return _make("Weibull", "positive", alpha=alpha, beta=beta)


def Bernoulli(probs=None, logits=None) -> Distribution:
    """Bernoulli on {0, 1}; give ``probs=`` or ``logits=`` (observed only)."""
    return _make("Bernoulli", "boolean", **_one_of("Bernoulli", probs, logits))


def Binomial(n, probs=None, logits=None) -> Distribution:
    """Binomial with ``n`` trials; give ``probs=`` or ``logits=`` (observed only)."""
    return _make("Binomial", "nonnegative_integer", n=n, **_one_of("Binomial", probs, logits))


def Poisson(mu) -> Distribution:
    """Poisson with rate ``mu`` (observed only)."""
    return _make("Poisson", "nonnegative_integer", mu=mu)


def NegativeBinomial(mu, alpha) -> Distribution:
    """Negative binomial with mean ``mu``, variance mu + mu^2 / alpha (observed only)."""
    return _make("NegativeBinomial", "nonnegative_integer", mu=mu, alpha=alpha)


def ZeroInflatedPoisson(psi, mu) -> Distribution:
    """Poisson(mu) with probability ``psi``, else an extra zero (PyMC's; observed only)."""
    return _make("ZeroInflatedPoisson", "nonnegative_integer", psi=psi, mu=mu)


def Categorical(logits) -> Distribution:
    """Categorical over the last axis of ``logits`` (observed only); values are 0..K-1."""
    return _make("Categorical", "categorical", event_dims={"logits": 1}.items(), logits=logits)


def ContinuousBernoulli(probs=None, logits=None) -> Distribution:
    """Continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham 2019), with its
    normalizing constant: p(x) = C(l) l^x (1-l)^(1-x). For pixel intensities in [0, 1],
    where a plain Bernoulli likelihood is not a density."""
    return _make("ContinuousBernoulli", "unit_interval",
                 **_one_of("ContinuousBernoulli", probs, logits))
