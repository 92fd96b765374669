"""PyTensor's side of klqp's vocabulary, shared by the lowering, the step rule and the
compiled step.

The graphs' float dtype (PyTensor's ``floatX``) and the casts of NumPy inputs to it;
``klqp.expr``'s array namespace for PyTensor (``PytensorOps``); each klqp family's PyMC
distribution (``pm_distribution``; a ``pm.CustomDist`` for the continuous Bernoulli, which
PyMC lacks); softplus's inverse, how q's scale is stored as ``MeanFieldGroup``'s rho; and
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
from pymc.distributions.transforms import logodds

from klqp.densities import continuous_bernoulli_log_norm
from klqp.expr import ArrayOps
from klqp.transforms import softplus_inverse

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
PytensorOps = ArrayOps(pt, sigmoid=pt.sigmoid, softplus=pt.softplus,
                       log_sigmoid=lambda x: -pt.softplus(-x),
                       const=lambda value: pt.as_tensor(as_float(value)))


# -- distributions ---------------------------------------------------------------------------

def continuous_bernoulli_logp(value, logits):
    """Loaiza-Ganem & Cunningham (2019), which PyMC lacks: log p(x) = x l - softplus(l)
    + log C(l), C(l) = l / tanh(l / 2), which tends to 2 as l -> 0 (a series there)."""
    return value * logits - pt.softplus(logits) + continuous_bernoulli_log_norm(logits, pt)


def _continuous_bernoulli(name, logits, **kwargs):
    """A pm.CustomDist; as a latent it lives on (0, 1) through PyMC's logodds transform."""
    return pm.CustomDist(name, logits, logp=continuous_bernoulli_logp,
                         default_transform=logodds, **kwargs)


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
}


def pm_distribution(family: str, params: dict):
    """(PyMC distribution constructor, its keyword arguments) for a klqp family."""
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
