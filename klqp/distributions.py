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
from .expr import Expr, as_expr, log

__all__ = [
    "Distribution", "SUPPORT_TRANSFORM", "Mixture", "Normal", "HalfNormal", "LogNormal",
    "Exponential",
    "Gamma", "Beta", "Bernoulli", "Binomial", "Poisson", "Categorical", "StudentT",
    "ContinuousBernoulli", "HalfCauchy", "HalfStudentT", "Cauchy", "Laplace", "Weibull",
    "NegativeBinomial", "ZeroInflatedPoisson", "ZeroInflatedNegativeBinomial",
    "OrderedLogistic", "Uniform", "MvNormal", "Dirichlet", "LKJCholesky",
]

# Support -> the bijection from the real line that q's Gaussian is pushed through.
# Both backends use the same maps (PyMC: log / logodds / interval / ordered transforms;
# NumPyro: biject_to). An interval's support names its bounds: "interval(0.0, 10.0)"
# (kq.Uniform's); "ordered" (a latent declared with transform="ordered") is an increasing
# vector on the last axis.
SUPPORT_TRANSFORM = {
    "real": "identity",
    "positive": "exp",
    "unit_interval": "sigmoid",
    "ordered": "ordered",
    "simplex": "softmax",  # a Dirichlet Global: u = (x, a), p = softmax([x, 0])
    "corr_cholesky": "corr_cholesky",  # an LKJCholesky Global: L from u's lower triangle
}
DISCRETE_SUPPORTS = ("boolean", "nonnegative_integer", "categorical")
#: Families whose value's trailing axes form one draw (an MvNormal's K coordinates): its
#: log density has one value per draw, not per entry.
VALUE_EVENT_DIMS = {"MvNormal": 1, "Dirichlet": 1, "LKJCholesky": 2}


def interval_support(lower: float, upper: float) -> str:
    return f"interval({float(lower)!r}, {float(upper)!r})"


def interval_bounds(support: str):
    """(lower, upper) of an interval support ("interval(0.0, 10.0)"), else None.

    >>> interval_bounds("interval(-1.0, 2.5)"), interval_bounds("positive")
    ((-1.0, 2.5), None)
    """
    if not support.startswith("interval(") or not support.endswith(")"):
        return None
    lower, upper = (float(v) for v in support[len("interval("):-1].split(","))
    return lower, upper


def transform_kind(support: str) -> str:
    """The bijection of a continuous support: identity, exp, sigmoid, interval or
    ordered."""
    return "interval" if interval_bounds(support) else SUPPORT_TRANSFORM[support]


@dataclass(frozen=True, eq=False)
class Distribution:
    """``family`` with ``params`` (name -> expression) on ``support``.

    ``param_event_dims`` names parameters whose trailing axes are not part of the
    value's shape (a Categorical's ``logits`` carry one axis of categories).
    ``components``: a kq.Mixture's component distributions (its ``params`` are then
    ``w`` and every component's parameters as ``<name>_<k>``, so whatever reads a
    distribution's parameters sees them all).
    """

    family: str
    params: tuple  # ((name, Expr), ...) in the family's order
    support: str
    param_event_dims: tuple = ()
    components: tuple = ()

    @property
    def component(self) -> str:
        """A mixture's component family ("" for other families)."""
        return self.components[0].family if self.components else ""

    @property
    def param_dict(self) -> dict[str, Expr]:
        return dict(self.params)

    @property
    def event_dims(self) -> int:
        """How many trailing axes of a value form one draw (1 for MvNormal, else 0)."""
        return VALUE_EVENT_DIMS.get(self.family, 0)

    @property
    def value_shape(self) -> tuple:
        """Trailing axes of the value that no parameter carries: an LKJCholesky's (K, K)."""
        if self.family != "LKJCholesky":
            return ()
        from .expr import NumpyOps, evaluate
        size = int(evaluate(self.param_dict["dim"], {}, NumpyOps))
        return (size, size)

    @property
    def is_discrete(self) -> bool:
        return self.support in DISCRETE_SUPPORTS

    def __repr__(self) -> str:
        return f"{self.family}({', '.join(f'{k}={v!r}' for k, v in self.params)})"

    def to_dict(self) -> dict:
        if self.components:  # a mixture: its weights, and each component as a distribution
            return {"family": self.family, "params": {"w": self.param_dict["w"].to_dict()},
                    "components": [c.to_dict() for c in self.components],
                    "support": self.support}
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
    "Mixture": {"w": _PROB},
    "ContinuousBernoulli": {"probs": _OPEN_PROB},
    "HalfCauchy": {"beta": _POSITIVE},
    "HalfStudentT": {"nu": _POSITIVE, "sigma": _POSITIVE},
    "Cauchy": {"beta": _POSITIVE},
    "Laplace": {"b": _POSITIVE},
    "Weibull": {"alpha": _POSITIVE, "beta": _POSITIVE},
    "NegativeBinomial": {"mu": _POSITIVE, "alpha": _POSITIVE},
    "ZeroInflatedPoisson": {"psi": _PSI, "mu": _POSITIVE},
    "ZeroInflatedNegativeBinomial": {"psi": _PSI, "mu": _POSITIVE, "alpha": _POSITIVE},
    "OrderedLogistic": {},  # cutpoints: increasing, checked by kq.OrderedLogistic
    "MvNormal": {},  # chol: lower-triangular with a positive diagonal, checked by kq.MvNormal
    "Dirichlet": {"alpha": _POSITIVE},
    "LKJCholesky": {"eta": _POSITIVE},  # dim: checked by kq.LKJCholesky
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


def Uniform(lower=0.0, upper=1.0) -> Distribution:
    """Uniform on (``lower``, ``upper``), two constants with lower < upper. As a latent,
    q lives on the real line through lower + (upper - lower) * sigmoid(u) (PyMC's interval
    transform, NumPyro's biject_to(interval)).

    >>> import klqp as kq
    >>> kq.Uniform(0.0, 100.0).support
    'interval(0.0, 100.0)'
    """
    d = _make("Uniform", "real", lower=lower, upper=upper)
    from .expr import NumpyOps, evaluate, variables_in
    bounds = []
    for name, e in d.params:
        if variables_in(e):
            raise ModelError(f"kq.Uniform: {name}={e!r} reads variables; its bounds must be "
                             "numbers (they fix the transform q lives in), e.g. "
                             "kq.Uniform(0.0, 10.0)")
        value = np.asarray(evaluate(e, {}, NumpyOps), dtype=float)
        if value.ndim:
            raise ModelError(f"kq.Uniform: {name}={e!r} has shape {value.shape}; give a number "
                             "(one interval for every entry)")
        bounds.append(float(value))
    if not bounds[0] < bounds[1]:
        raise ModelError(f"kq.Uniform: lower={bounds[0]!r} must be < upper={bounds[1]!r}; "
                         "give an interval such as kq.Uniform(0.0, 10.0)")
    return Distribution("Uniform", d.params, interval_support(*bounds))


def Dirichlet(alpha) -> Distribution:
    """Dirichlet on the simplex of ``alpha``'s LAST axis (K >= 2 concentrations > 0): for
    a Global (mixture weights, category probabilities) or an Observed of compositions.

    As a Global, q is Gaussian in K numbers u = (x, a): p = softmax([x, 0]) (the additive
    log-ratio map of K - 1 numbers, with its log-Jacobian sum(log p)), and a, an auxiliary
    number with prior N(0, 1) that nothing else reads (so p's prior is Dirichlet(alpha)
    exactly). The data never inform a, so q(a) -> N(0, 1) and its KL -> 0: at the optimum
    the ELBO is the K - 1-number one. ``kq.explain`` says so.

    >>> import klqp as kq
    >>> kq.Dirichlet([1.0, 2.0, 3.0]).support
    'simplex'
    """
    d = _make("Dirichlet", "simplex", alpha=alpha)
    from .expr import NumpyOps, evaluate, variables_in
    a = d.param_dict["alpha"]
    if not variables_in(a):
        value = np.asarray(evaluate(a, {}, NumpyOps), dtype=float)
        if value.ndim == 0 or value.shape[-1] < 2:
            raise ModelError(f"kq.Dirichlet: alpha={a!r} has shape {value.shape}; its last axis "
                             "holds the K >= 2 concentrations, e.g. kq.Dirichlet(np.ones(3))")
    return d


def LKJCholesky(dim, eta=1.0) -> Distribution:
    """The LKJ prior on the Cholesky factor L of a ``dim`` x ``dim`` correlation matrix
    (NumPyro's ``dist.LKJCholesky(dim, eta)``; PyMC's ``pm.LKJCholeskyCov`` without the
    scales): density proportional to det(L L^T)^(eta - 1), so eta = 1 is uniform over
    correlation matrices and larger eta favours weaker correlations. For a Global; a
    covariance's factor is ``sigma[..., None] * L`` (scales sigma, a positive Global of
    shape (dim,)), e.g. ``kq.MvNormal(mu, sigma[..., None] * L)``. ``dim`` and ``eta``
    are numbers.

    q is Gaussian in dim x dim numbers u, the value's own shape: tanh of u's strictly
    lower triangle are L's partial correlations (Stan's and NumPyro's map), and the
    other dim (dim + 1) / 2 numbers are auxiliaries with prior N(0, 1) that nothing
    reads, so q(aux) -> N(0, 1) and their KL -> 0. ``kq.explain`` says so.

    >>> import klqp as kq
    >>> kq.LKJCholesky(3, eta=2.0).value_shape
    (3, 3)
    """
    d = _make("LKJCholesky", "corr_cholesky", dim=dim, eta=eta)
    from .expr import NumpyOps, evaluate, variables_in
    for name, e in d.params:
        value = None if variables_in(e) else np.asarray(evaluate(e, {}, NumpyOps), dtype=float)
        if value is None or value.ndim:
            raise ModelError(f"kq.LKJCholesky: {name}={e!r} must be a number (it fixes the "
                             "prior's shape and normalizer), e.g. kq.LKJCholesky(3, eta=2.0)")
        if name == "dim" and not (value >= 2 and value == int(value)):
            raise ModelError(f"kq.LKJCholesky: dim={e!r} must be a whole number >= 2 (the "
                             "correlation matrix's size), e.g. kq.LKJCholesky(3)")
    return d


def MvNormal(mu, chol) -> Distribution:
    """Multivariate normal: mean ``mu``, whose LAST axis holds the K coordinates, and
    covariance chol @ chol.T, ``chol`` the (K, K) lower-triangular Cholesky factor with a
    positive diagonal (PyMC's ``pm.MvNormal(mu, chol=...)``, NumPyro's ``scale_tril=``).
    A value's last axis is one draw; its log density is one number per draw. ``chol``
    may be an expression, e.g. ``kq.exp(log_s) * L`` with a constant correlation factor L.

    >>> import numpy as np, klqp as kq
    >>> kq.MvNormal(np.zeros(2), np.linalg.cholesky([[1.0, 0.5], [0.5, 2.0]])).family
    'MvNormal'
    """
    d = _make("MvNormal", "real", event_dims={"chol": 1}.items(), mu=mu, chol=chol)
    from .expr import NumpyOps, evaluate, variables_in
    c = d.param_dict["chol"]
    if not variables_in(c):
        try:
            value = np.asarray(evaluate(c, {}, NumpyOps), dtype=float)
        except (ValueError, IndexError):
            return d  # inconsistent constant shapes: the model's shape check names them
        if value.ndim < 2 or value.shape[-1] != value.shape[-2]:
            raise ModelError(f"kq.MvNormal: chol={c!r} has shape {value.shape}; give the (K, K) "
                             "Cholesky factor of the covariance, np.linalg.cholesky(cov)")
        upper = np.triu(value, 1)
        if (upper != 0).any():
            raise ModelError(f"kq.MvNormal: chol={c!r} is not lower-triangular (entry "
                             f"{_first(upper != 0)} is {float(upper[_first(upper != 0)])!r}); give "
                             "np.linalg.cholesky(cov), not the covariance itself")
        diagonal = np.diagonal(value, axis1=-2, axis2=-1)
        if (diagonal <= 0).any():
            raise ModelError(f"kq.MvNormal: chol={c!r} has a diagonal entry "
                             f"{float(diagonal[_first(diagonal <= 0)])!r} <= 0; a Cholesky factor's "
                             "diagonal is positive (np.linalg.cholesky(cov))")
    return d


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


def ZeroInflatedNegativeBinomial(psi, mu, alpha) -> Distribution:
    """NegativeBinomial(mu, alpha) with probability ``psi``, else an extra zero (PyMC's:
    p(0) = (1 - psi) + psi NB(0; mu, alpha); observed only)."""
    return _make("ZeroInflatedNegativeBinomial", "nonnegative_integer", psi=psi, mu=mu,
                 alpha=alpha)


def OrderedLogistic(eta, cutpoints) -> Distribution:
    """Ordinal labels 0..K-1 (observed only; PyMC's pm.OrderedLogistic): P(y = k) =
    sigmoid(eta - c_{k-1}) - sigmoid(eta - c_k), with c_{-1} = -inf and c_{K-1} = +inf.
    ``eta``: the latent predictor (per row); ``cutpoints``: the K-1 increasing cutpoints
    on its LAST axis (a Global ordered vector: ``c0 + kq.cumsum(kq.exp(log_gaps), -1)``).

    >>> import klqp as kq
    >>> kq.OrderedLogistic(0.5, [-1.0, 0.0, 2.0]).support
    'categorical'
    """
    d = _make("OrderedLogistic", "categorical", event_dims={"cutpoints": 1}.items(),
              eta=eta, cutpoints=cutpoints)
    from .expr import NumpyOps, evaluate, variables_in
    c = d.param_dict["cutpoints"]
    if not variables_in(c):  # constant cutpoints: on a last axis, and increasing
        try:
            value = np.asarray(evaluate(c, {}, NumpyOps), dtype=float)
        except (ValueError, IndexError):
            return d  # inconsistent constant shapes: the model's shape check names them
        if value.ndim == 0 or value.shape[-1] < 1:
            raise ModelError(f"kq.OrderedLogistic: cutpoints={c!r} has shape {value.shape}, but "
                             "its last axis must hold the K-1 cutpoints of K >= 2 categories; "
                             "give a vector such as [-1.0, 0.5, 2.0]")
        steps = np.diff(value, axis=-1)
        if (steps <= 0).any():
            at = _first(steps <= 0)
            raise ModelError(f"kq.OrderedLogistic: cutpoints={c!r} are not increasing (entry "
                             f"{at[:-1] + (at[-1] + 1,)} is {float(value[at[:-1] + (at[-1] + 1,)])!r}, "
                             f"after {float(value[at])!r}); give strictly increasing cutpoints, "
                             "e.g. sorted values, or for learned ones "
                             "c0 + kq.cumsum(kq.exp(log_gaps), -1)")
    return d


#: Families a kq.Mixture may take as components: those whose parameters are all per-value
#: (no category axis) and that every backend has as a plain distribution.
MIXABLE = ("Normal", "StudentT", "LogNormal", "Gamma", "Exponential", "Beta", "Laplace",
           "Cauchy", "Weibull", "Poisson", "NegativeBinomial", "Bernoulli", "Binomial")


def Mixture(w, components) -> Distribution:
    """A finite mixture for a kq.Observed: p(y) = sum_k w_k p_k(y), computed as a stable
    log-sum-exp. ``w``: the weights, an expression whose LAST axis holds the K
    probabilities (a Global simplex such as ``kq.exp(a - kq.logsumexp(a, -1)[..., None])``
    or per-row weights); ``components``: K distributions of one family (PyMC's
    ``pm.Mixture(w, comp_dists)``), each with per-value parameters.

    >>> import klqp as kq
    >>> kq.Mixture([0.3, 0.7], [kq.Normal(-1.0, 1.0), kq.Normal(2.0, 0.5)]).support
    'real'
    """
    components = tuple(components) if isinstance(components, (list, tuple)) else ()
    if len(components) < 2 or not all(isinstance(c, Distribution) for c in components):
        raise ModelError("kq.Mixture: components must be a list of two or more distributions, "
                         "e.g. [kq.Normal(mu_a, s), kq.Normal(mu_b, s)]")
    family = components[0].family
    if any(c.family != family for c in components):
        raise ModelError(f"kq.Mixture: the components are of {sorted({c.family for c in components})}; "
                         "give components of one family (write the others with kq.logsumexp)")
    if family not in MIXABLE:
        raise ModelError(f"kq.Mixture: components of {family} are not supported; use one of "
                         f"{', '.join(MIXABLE)}")
    names = [k for k, _ in components[0].params]
    if any([k for k, _ in c.params] != names for c in components):
        raise ModelError(f"kq.Mixture: every {family} component must take the same parameters "
                         "(all probs= or all logits=)")
    w_expr = as_expr(w)
    params = (("w", w_expr),) + tuple((f"{k}_{i}", e) for i, c in enumerate(components)
                                      for k, e in c.params)
    check_constant_params("Mixture", params[:1])
    from .expr import NumpyOps, evaluate, variables_in
    if not variables_in(w_expr):
        value = np.asarray(evaluate(w_expr, {}, NumpyOps), dtype=float)
        if value.ndim == 0 or value.shape[-1] != len(components):
            raise ModelError(f"kq.Mixture: w has shape {value.shape}, but its last axis must hold "
                             f"the {len(components)} components' weights")
        if not np.allclose(value.sum(-1), 1.0, atol=1e-6):
            raise ModelError(f"kq.Mixture: the weights w sum to {value.sum(-1)!r}, not 1; "
                             "normalize them (w / sum(w))")
    return Distribution("Mixture", params, components[0].support, (("w", 1),), components)


def split_mixture(params) -> tuple:
    """A kq.Mixture's parameter values, keyed as its ``params`` (``w`` and
    ``<name>_<k>``), as (w, [component k's {name: value}, ...]): how every backend and
    the NumPy density take a mixture apart.

    >>> split_mixture({"w": [0.3, 0.7], "mu_0": -1.0, "sigma_0": 1.0, "mu_1": 2.0, "sigma_1": 0.5})
    ([0.3, 0.7], [{'mu': -1.0, 'sigma': 1.0}, {'mu': 2.0, 'sigma': 0.5}])
    """
    parts: dict = {}
    for key, value in params.items():
        if key != "w":
            name, k = key.rsplit("_", 1)
            parts.setdefault(int(k), {})[name] = value
    return params["w"], [parts[k] for k in sorted(parts)]


def Categorical(logits=None, probs=None) -> Distribution:
    """Categorical over the last axis (observed only); values are 0..K-1. Give ``logits=``
    (unnormalized log probabilities) or ``probs=`` (positive, normalized over the last
    axis here: ``probs=p`` is ``logits=kq.log(p)``, the same distribution)."""
    if (probs is None) == (logits is None):
        raise ValueError("Categorical: give exactly one of logits= or probs=, e.g. "
                         "logits=x @ W or probs=kq.softmax(x @ W)")
    if probs is not None:
        logits = log(as_expr(probs))
    return _make("Categorical", "categorical", event_dims={"logits": 1}.items(), logits=logits)


def ContinuousBernoulli(probs=None, logits=None) -> Distribution:
    """Continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham 2019), with its
    normalizing constant: p(x) = C(l) l^x (1-l)^(1-x). For pixel intensities in [0, 1],
    where a plain Bernoulli likelihood is not a density."""
    return _make("ContinuousBernoulli", "unit_interval",
                 **_one_of("ContinuousBernoulli", probs, logits))
