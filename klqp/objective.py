"""THE objective. Every backend computes its loss through :func:`loss` in this module.

For a minibatch B of b rows out of N (``total_size``), reparameterized draws
theta~ ~ q(theta) and z~_i ~ q(z_i), a backend estimates three terms, each in
full-data nats:

    loglik     = (N/b) * sum_{i in B} log p(y_i | theta~, z~_i, x_i)
    kl_global  = log q(theta~) - log p(theta~)
    kl_local   = (N/b) * sum_{i in B} ( log q(z~_i) - log p(z~_i | theta~, x_i) )

and, for a model with ``kq.Potential`` terms f (0 otherwise), a fourth:

    potential  = (N/b) * sum_{i in B} f_i(theta~, z~_i, x_i)  +  f(theta~)
                 (per-row potentials)                          (global ones)

The loss one optimizer step descends is

    loss = s * ( -T * loglik - potential + beta_global * kl_global + beta_local * kl_local )

with s = b/N when ``scale_cost_to_minibatch`` (PyMC's flag) else 1, and T the
likelihood weight; a potential is the user's own log-density term, taken at weight 1.
s changes the gradient's size, never the optimum. The reported ELBO is always
``loglik + potential - kl_global - kl_local`` (beta = T = 1, full-data nats), whatever
s, b and the weights are. Log-densities of latents are taken in each
latent's unconstrained space (the log-Jacobian sits in log p), as PyMC and NumPyro do.

This module holds only arithmetic, so the same functions serve NumPy, JAX and
PyTensor values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Union

from . import schedules as _schedules

__all__ = ["Shared", "Weight", "Weights", "Terms", "RowDensities", "loss", "elbo", "cost_scale",
           "coefficients", "resolve_weights", "terms_from_rows", "weighted_rows",
           "weighted_global", "WEIGHT_NAMES"]

WEIGHT_NAMES = ("beta_global", "beta_local", "likelihood_weight")


class Shared:
    """A weight the user (or a callback) changes while training, without recompiling.

    >>> import klqp as kq
    >>> beta = kq.Shared(0.1)
    >>> beta.value = 0.5      # takes effect from the next compiled chunk of steps
    """

    def __init__(self, value: float, name: str = "shared"):
        self.name = name
        self.value = value

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, v: float) -> None:
        v = float(v)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"kq.Shared {self.name!r}: value {v!r} must be a finite number >= 0")
        self._value = v

    def __repr__(self) -> str:
        return f"Shared({self._value!r})"


Weight = Union[float, Shared, _schedules.Schedule]


@dataclass(frozen=True)
class Weights:
    """The three weights of the objective, each a Schedule or a Shared."""

    beta_global: Any
    beta_local: Any
    likelihood_weight: Any

    def items(self):
        return ((n, getattr(self, n)) for n in WEIGHT_NAMES)

    def at(self, step: int, xp: Any = None) -> dict:
        """Each weight's value at ``step`` (Shared: its current value)."""
        import numpy as np
        return self.evaluate(step, self.runtime(), xp or np)

    def runtime(self) -> dict:
        """The weights a compiled program takes as arguments, at their current values: a
        kq.Shared and a constant (a plain number). Fits that differ only in these share
        one compiled program (a sweep over beta or a temperature compiles once); a
        schedule of the step is compiled in.

        >>> w = Weights(_schedules.constant(0.5), Shared(2.0), _schedules.linear_warmup(10))
        >>> w.runtime()
        {'beta_global': 0.5, 'beta_local': 2.0}
        """
        return {n: float(w.value) for n, w in self.items() if _is_runtime(w)}

    def compile_key(self) -> tuple:
        """What a compiled program depends on: each schedule by value, each runtime weight
        only by being one (``runtime``)."""
        return tuple((n, "runtime" if _is_runtime(w) else w) for n, w in self.items())

    def evaluate(self, step, runtime: dict, xp: Any) -> dict:
        """Each weight at the (symbolic) ``step`` in array namespace ``xp``: a runtime
        weight from ``runtime`` (the program's argument), a schedule evaluated."""
        return {n: runtime[n] if n in runtime else w(step, xp=xp) for n, w in self.items()}


def _is_runtime(weight) -> bool:
    return isinstance(weight, (Shared, _schedules.Constant))


@dataclass
class Terms:
    """The per-step estimates, in full-data nats (see the module docstring)."""

    loglik: Any
    kl_global: Any
    kl_local: Any
    potential: Any = 0.0

    FIELDS = ("loglik", "kl_global", "kl_local", "potential")

    def values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.FIELDS)


class RowDensities(NamedTuple):
    """A model's unscaled log-densities on R rows, as every backend computes them: the
    globals' log p(theta) + log|J|, and per row (R,): the observations' log p(y_i | .),
    the locals' log p(z_i | .) + log|J| and the per-row potentials; and the global
    potentials' sum."""

    global_logp: Any
    loglik_rows: Any
    local_logp_rows: Any
    potential_rows: Any = 0.0
    potential_global: Any = 0.0


def weighted_rows(d: RowDensities, weights: Mapping) -> Any:
    """Each row's part of -loss / s before N/b, q's log q aside: T log p(y_i | .) +
    f_i + beta_local log p(z_i | .) (what the local step raises, row by row)."""
    return (weights["likelihood_weight"] * d.loglik_rows + d.potential_rows
            + weights["beta_local"] * d.local_logp_rows)


def weighted_global(d: RowDensities, weights: Mapping) -> Any:
    """The rows-free part of -loss / s, q's log q aside: beta_global log p(theta) + f."""
    return weights["beta_global"] * d.global_logp + d.potential_global


def terms_from_rows(*, total_size, row_weights, loglik_rows, local_kl_rows, kl_global,
                    potential_rows=0.0, potential_global=0.0, xp: Any = None) -> Terms:
    """The three terms from one batch's per-row values.

    loglik_rows: sum over a row's observations of log p(y_i | .); local_kl_rows: sum over
    a row's locals of log q(z_i) - log p(z_i | .); kl_global: log q(theta) - log p(theta).
    row_weights: 1 for a row of the batch, 0 for padding, and w_p for node p of a row
    whose locals are integrated by quadrature (a row's nodes are virtual rows whose
    weights sum to 1). b = sum(row_weights) is the number of real rows, so N/b and s are
    those of the batch whichever of these it is.

    >>> import numpy as np
    >>> t = terms_from_rows(total_size=10, row_weights=np.array([1.0, 1.0, 0.0]),
    ...                     loglik_rows=np.array([-1.0, -2.0, -99.0]),
    ...                     local_kl_rows=np.zeros(3), kl_global=0.5)
    >>> float(t.loglik)   # (N/b) * (-1 - 2) with b = 2: the padded row counts for nothing
    -15.0
    """
    import numpy as np
    xp = xp or np
    ratio = total_size / xp.sum(row_weights)
    return Terms(loglik=ratio * xp.sum(row_weights * loglik_rows),
                 kl_global=kl_global,
                 kl_local=ratio * xp.sum(row_weights * local_kl_rows),
                 potential=ratio * xp.sum(row_weights * potential_rows) + potential_global)


def cost_scale(total_size: int, batch_size: int, scale_cost_to_minibatch: bool) -> float:
    """s: b/N when scale_cost_to_minibatch, else 1 (PyMC's meaning of the flag)."""
    return batch_size / total_size if scale_cost_to_minibatch else 1.0


def loss(terms: Terms, *, beta_global, beta_local, likelihood_weight, cost_scale) -> Any:
    """``s * (-T * loglik - potential + beta_global * kl_global + beta_local * kl_local)``."""
    return cost_scale * (-likelihood_weight * terms.loglik
                         - terms.potential
                         + beta_global * terms.kl_global
                         + beta_local * terms.kl_local)


def elbo(terms: Terms) -> Any:
    """The evidence lower bound estimate: always at beta = T = 1, full-data nats."""
    return terms.loglik + terms.potential - terms.kl_global - terms.kl_local


def coefficients(*, total_size: int, batch_size: int, beta_global: float, beta_local: float,
                 likelihood_weight: float, scale_cost_to_minibatch: bool) -> dict:
    """The factor in front of each RAW minibatch sum in the loss.

    loglik multiplies -sum_B log p(y_i|.); kl_global multiplies log q(theta) - log p(theta);
    kl_local multiplies sum_B (log q(z_i) - log p(z_i|.)); potential_rows multiplies
    -sum_B f_i (a per-row kq.Potential) and potential_global -f (a global one).
    """
    s = cost_scale(total_size, batch_size, scale_cost_to_minibatch)
    ratio = total_size / batch_size
    return {"loglik": s * likelihood_weight * ratio,
            "kl_global": s * beta_global,
            "kl_local": s * beta_local * ratio,
            "potential_rows": s * ratio,
            "potential_global": s}


def _as_weight(name: str, value) -> Any:
    if isinstance(value, (Shared, _schedules.Schedule)):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name}={value!r}: give a number, a kq.Shared or a kq.schedules schedule")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}={v!r}: a weight must be a finite number >= 0 "
                         f"(e.g. {name}=1.0, or a schedule such as kq.schedules.linear_warmup(1000))")
    return _schedules.constant(v)


def resolve_weights(*, beta=None, beta_global=None, beta_local=None, likelihood_weight=1.0,
                    num_batches: int = 1) -> Weights:
    """Normalize the user's weight arguments. ``beta`` sets both KL weights; ``beta_global``
    or ``beta_local`` override it for their block. Unset KL weights are 1 (the ELBO)."""
    base = 1.0 if beta is None else beta
    chosen = {"beta_global": base if beta_global is None else beta_global,
              "beta_local": base if beta_local is None else beta_local,
              "likelihood_weight": likelihood_weight}
    out = {}
    for name, value in chosen.items():
        w = _as_weight(name, value)
        out[name] = w.bind(num_batches=num_batches) if isinstance(w, _schedules.Schedule) else w
    return Weights(**out)
