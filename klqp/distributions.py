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

from .expr import Expr, as_expr

__all__ = [
    "Distribution", "SUPPORT_TRANSFORM", "Normal", "HalfNormal", "LogNormal", "Exponential",
    "Gamma", "Beta", "Bernoulli", "Binomial", "Poisson", "Categorical", "StudentT",
    "ContinuousBernoulli",
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
    return Distribution(family, tuple((k, as_expr(v)) for k, v in params.items()), support,
                        tuple(event_dims))


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


def Bernoulli(probs=None, logits=None) -> Distribution:
    """Bernoulli on {0, 1}; give ``probs=`` or ``logits=`` (observed only)."""
    return _make("Bernoulli", "boolean", **_one_of("Bernoulli", probs, logits))


def Binomial(n, probs=None, logits=None) -> Distribution:
    """Binomial with ``n`` trials; give ``probs=`` or ``logits=`` (observed only)."""
    return _make("Binomial", "nonnegative_integer", n=n, **_one_of("Binomial", probs, logits))


def Poisson(mu) -> Distribution:
    """Poisson with rate ``mu`` (observed only)."""
    return _make("Poisson", "nonnegative_integer", mu=mu)


def Categorical(logits) -> Distribution:
    """Categorical over the last axis of ``logits`` (observed only); values are 0..K-1."""
    return _make("Categorical", "categorical", event_dims={"logits": 1}.items(), logits=logits)


def ContinuousBernoulli(probs=None, logits=None) -> Distribution:
    """Continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham 2019), with its
    normalizing constant: p(x) = C(l) l^x (1-l)^(1-x). For pixel intensities in [0, 1],
    where a plain Bernoulli likelihood is not a density."""
    return _make("ContinuousBernoulli", "unit_interval",
                 **_one_of("ContinuousBernoulli", probs, logits))
