"""PyTensor's side of klqp's vocabulary, shared by the lowering, the step rule and the
compiled step.

The graphs' float dtype (PyTensor's ``floatX``) and the casts of NumPy inputs to it;
``klqp.expr``'s array namespace for PyTensor (``PytensorOps``); each klqp family's PyMC
distribution (``pm_distribution``; a ``pm.CustomDist`` for the continuous Bernoulli, which
PyMC lacks, and for the half-Cauchy and half-Student-t, whose PyMC log densities are off
by a float32 log 2, and for the ordered logistic, whose PyMC log density is the log of
a difference of sigmoids); softplus's inverse, how q's scale is stored as ``MeanFieldGroup``'s rho; and
what ``klqp_pymc.lowering.lower`` takes: a batch's rows (``Batch``) and q's parameters
(``QParams``) as PyTensor variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.distributions.transforms import log as log_transform
from pymc.distributions.transforms import logodds

from klqp.densities import (continuous_bernoulli_logp, half_cauchy_logp, half_student_t_logp,
                             ordered_logistic_logp)
from klqp.distributions import split_mixture
from klqp.expr import ArrayOps
from klqp.transforms import log_prior_on_u, softplus_inverse

__all__ = ["float_dtype", "as_float", "as_column", "PytensorOps", "pm_distribution",
           "inv_softplus", "inv_softplus_pt", "Batch", "QParams"]


def float_dtype() -> str:
    """The float dtype of every graph this backend builds: PyTensor's ``floatX``, read when
    a graph is built. It is "float64" unless the user sets it, as for any PyMC model, with
    ``PYTENSOR_FLAGS=floatX=float32`` or ``pytensor.config.floatX = "float32"``."""
    return pytensor.config.floatX


def as_float(a, dtype: Optional[str] = None) -> np.ndarray:
    """``a`` as a NumPy array of the graphs' float dtype (compiled steps trust their
    inputs' dtypes, so every float input goes through here)."""
    return np.asarray(a, dtype=dtype or float_dtype())


def as_column(a: np.ndarray) -> np.ndarray:
    """A batch column as a compiled function's input: integer columns as they are (int64,
    checked by klqp.problem), float columns in floatX."""
    return a if a.dtype.kind in "iu" else as_float(a)


#: klqp.expr's array namespace for PyTensor.
PytensorOps = ArrayOps(pt, lgamma=pt.gammaln, sigmoid=pt.sigmoid, softplus=pt.softplus,
                       log_sigmoid=lambda x: -pt.softplus(-x),
                       const=lambda value: pt.as_tensor(as_float(value)))


# -- distributions ---------------------------------------------------------------------------

def _continuous_bernoulli(name, logits, **kwargs):
    """PyMC lacks it (Loaiza-Ganem & Cunningham 2019): a pm.CustomDist; as a latent it lives on (0, 1) through PyMC's logodds transform."""
    return pm.CustomDist(name, logits, logp=lambda x, logits: continuous_bernoulli_logp(
        x, logits, pt), default_transform=logodds, **kwargs)


def _half_cauchy(name, beta, **kwargs):
    """A pm.CustomDist; as a latent it lives on (0, inf) through PyMC's log transform."""
    return pm.CustomDist(name, beta, logp=lambda x, beta: half_cauchy_logp(x, beta, pt),
                         default_transform=log_transform, **kwargs)


def _half_student_t(name, nu, sigma, **kwargs):
    """A pm.CustomDist; as a latent it lives on (0, inf) through PyMC's log transform."""
    return pm.CustomDist(name, nu, sigma, logp=lambda x, nu, sigma: half_student_t_logp(
        x, nu, sigma, pt, pt.gammaln), default_transform=log_transform, **kwargs)


def prior_on_u(name, family, params, value_shape, **kwargs):
    """The prior of a Global whose density klqp writes on its unconstrained numbers u
    (klqp.transforms.ON_U: a Dirichlet's u = (x, a), an LKJCholesky's (K, K) numbers) as
    a pm.CustomDist on the real line: klqp.transforms.log_prior_on_u, one value per draw.
    An LKJCholesky's eta travels as a (K, K) matrix, so the signature carries K."""
    if family == "Dirichlet":
        return pm.CustomDist(name, params["alpha"], logp=lambda value, alpha: log_prior_on_u(
            family, value, {"alpha": alpha}, pt, pt.gammaln), signature="(k)->(k)", **kwargs)
    eta = params["eta"] * pt.ones(tuple(value_shape))
    return pm.CustomDist(name, eta, logp=lambda value, eta: log_prior_on_u(
        family, value, {"eta": eta[..., 0, 0]}, pt, pt.gammaln), signature="(k,k)->(k,k)",
        **kwargs)


def _ordered_logistic(name, eta, cutpoints, **kwargs):
    """A pm.CustomDist on the labels 0..K-1 (observed only), the cutpoints on the last axis."""
    return pm.CustomDist(name, eta, cutpoints, logp=lambda y, eta, c: ordered_logistic_logp(
        y, eta, c, pt), signature="(),(k)->()", dtype="int64", **kwargs)


def _probs_or_logits(p: dict) -> dict:
    return {"p": p["probs"]} if "probs" in p else {"logit_p": p["logits"]}


def _logits(p: dict):
    return p["logits"] if "logits" in p else pt.log(p["probs"]) - pt.log1p(-p["probs"])


_FAMILIES = {
    "Normal": lambda p: (pm.Normal, {"mu": p["mu"], "sigma": p["sigma"]}),
    "HalfNormal": lambda p: (pm.HalfNormal, {"sigma": p["sigma"]}),
    "LogNormal": lambda p: (pm.LogNormal, {"mu": p["mu"], "sigma": p["sigma"]}),
    "Exponential": lambda p: (pm.Exponential, {"lam": p["lam"]}),
    "Gamma": lambda p: (pm.Gamma, {"alpha": p["alpha"], "beta": p["beta"]}),
    "Beta": lambda p: (pm.Beta, {"alpha": p["alpha"], "beta": p["beta"]}),
    "StudentT": lambda p: (pm.StudentT, {"nu": p["nu"], "mu": p["mu"], "sigma": p["sigma"]}),
    "Bernoulli": lambda p: (pm.Bernoulli, _probs_or_logits(p)),
    "Binomial": lambda p: (pm.Binomial, {"n": p["n"], **_probs_or_logits(p)}),
    "Poisson": lambda p: (pm.Poisson, {"mu": p["mu"]}),
    "Categorical": lambda p: (pm.Categorical, {"logit_p": p["logits"]}),
    "ContinuousBernoulli": lambda p: (_continuous_bernoulli, {"logits": _logits(p)}),
    "HalfCauchy": lambda p: (_half_cauchy, {"beta": p["beta"]}),
    "HalfStudentT": lambda p: (_half_student_t, {"nu": p["nu"], "sigma": p["sigma"]}),
    "Cauchy": lambda p: (pm.Cauchy, {"alpha": p["alpha"], "beta": p["beta"]}),
    "Laplace": lambda p: (pm.Laplace, {"mu": p["mu"], "b": p["b"]}),
    "Uniform": lambda p: (pm.Uniform, {"lower": p["lower"], "upper": p["upper"]}),
    "MvNormal": lambda p: (pm.MvNormal, {"mu": p["mu"], "chol": p["chol"]}),
    "Dirichlet": lambda p: (pm.Dirichlet, {"a": p["alpha"]}),
    "Weibull": lambda p: (pm.Weibull, {"alpha": p["alpha"], "beta": p["beta"]}),
    "NegativeBinomial": lambda p: (pm.NegativeBinomial, {"mu": p["mu"], "alpha": p["alpha"]}),
    "ZeroInflatedPoisson": lambda p: (pm.ZeroInflatedPoisson, {"psi": p["psi"], "mu": p["mu"]}),
    "ZeroInflatedNegativeBinomial": lambda p: (pm.ZeroInflatedNegativeBinomial, {
        "psi": p["psi"], "mu": p["mu"], "alpha": p["alpha"]}),
    "OrderedLogistic": lambda p: (_ordered_logistic, {"eta": p["eta"],
                                                      "cutpoints": p["cutpoints"]}),
}


def _mixture(name, w, *flat, component: str, keys: list, **kwargs):
    """kq.Mixture as a pm.CustomDist: logsumexp_k(log w_k + log p_k(y)) over w's last axis,
    each component's log density PyMC's own (``pm.logp`` of its ``.dist``)."""
    def logp(value, w, *flat):
        _, parts = split_mixture({"w": w, **dict(zip(keys, flat))})
        logps = [pm.logp(cls.dist(**kw), value)
                 for cls, kw in (pm_distribution(component, p) for p in parts)]
        return pt.logsumexp(pt.log(w) + pt.stack(logps, axis=-1), axis=-1)

    count = len(split_mixture({"w": None, **dict.fromkeys(keys)})[1])  # K components
    return pm.CustomDist(name, w, *flat, logp=logp, signature=f"({count}),"
                         + ",".join("()" for _ in flat) + "->()", **kwargs)


def pm_distribution(family: str, params: dict, component: str = ""):
    """(PyMC distribution constructor, its keyword arguments) for a klqp family (a
    kq.Mixture also names its ``component`` family)."""
    if family == "Mixture":
        keys = [k for k in params if k != "w"]
        return (lambda name, **kw: _mixture(name, params["w"], *(params[k] for k in keys),
                                            component=component, keys=keys, **kw)), {}
    if family not in _FAMILIES:
        raise NotImplementedError(f"the pymc backend has no lowering for {family!r}")
    return _FAMILIES[family](params)


def inv_softplus(x):
    """The rho whose softplus is x (NumPy): how q's scale is stored (MeanFieldGroup's rho)."""
    return softplus_inverse(np.asarray(x, dtype=float))


def inv_softplus_pt(x):
    """inv_softplus for PyTensor: a given scale as MeanFieldGroup's rho."""
    return softplus_inverse(x, pt)


# -- what a lowering takes -------------------------------------------------------------------

@dataclass
class Batch:
    """This step's rows as PyTensor variables.

    indices: (b,) row numbers; columns: every Data/Observed column's b rows; mask: None
    (all b rows are real) or a (b,) float 0/1 vector marking the real rows of a padded
    batch. ``capacity`` is the static b the model is built for.
    """

    indices: Any
    columns: dict
    capacity: int
    mask: Any = None

    @property
    def count(self):
        """The number of real rows: b in N/b and in s = b/N."""
        return self.capacity if self.mask is None else self.mask.sum()


@dataclass
class QParams:
    """The optimized quantities as PyTensor expressions.

    global_mu / global_rho: flat vectors over the global latents in model order (None
    without globals). local_loc / local_rho: per FREE local latent, this batch's rows,
    shape (b, *shape). point: each kq.Param's value. scale = softplus(rho), as PyMC's
    MeanFieldGroup has it. (An amortized local's q comes from its encoder.)
    """

    global_mu: Any
    global_rho: Any
    local_loc: dict = field(default_factory=dict)
    local_rho: dict = field(default_factory=dict)
    point: dict = field(default_factory=dict)
