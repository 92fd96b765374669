"""The object ``kq.compile`` returns, written once for every backend.

:class:`CompiledObjective` owns the public surface: ``init_params``, ``dtype``, ``terms``,
``loss``, ``grad``, ``local_step``, ``local_expectations`` and ``global_curvature``, their
documentation, the checking and conversion of the arguments (params, indices, noise,
probe, step) to NumPy, and the conversion of every output to float64 NumPy (``float``
for the terms). A backend's objective subclasses it and implements a few primitives on
arguments already checked, each returning the backend's own arrays:

=========================================================  ==================================
``_float_dtype()``                                         the dtype it computes in, a name
``_terms(params, indices, noise, step)``                   {term: scalar} (``TERM_KEYS``)
``_grad(params, indices, noise, step)``                    d loss / d params, params' structure
``_local_step(params, indices, step)``                     {free local: {"loc", "scale"}},
                                                           the batch rows after one local step
``_local_expectations(params, indices, step)``             (value, {local: grad}, {local: hess})
``_global_curvature(params, indices, noise, probe, step)`` {global: curvature sample}
=========================================================  ==================================

``params`` reaches them as {name: {field: ndarray}} (dtypes as given), ``indices`` as a
1-D int64 array, ``noise`` as {latent: ndarray} holding only the model's latents that
were given, ``probe`` as {global: float64 ndarray} or None and ``step`` as an int. The
two step-rule primitives on the locals are only called when the objective has a local
step (``layout`` is not None).

>>> import numpy as np
>>> import klqp as kq
>>> with kq.Model("m") as m:
...     mu = kq.Global("mu", kq.Normal(0.0, 1.0))
...     y = kq.Observed("y", kq.Normal(mu, 1.0))
>>> c = kq.compile(m, {"y": np.array([0.5, 1.5])}, backend="numpyro", batch_size=2)
>>> isinstance(c, CompiledObjective)
True
>>> t = c.terms(c.init_params(), indices=[0, 1], noise={"mu": np.array(0.0)})
>>> list(t), type(t["loss"]).__name__
(['loss', 'elbo', 'loglik', 'kl_global', 'kl_local', 'potential'], 'float')
>>> c.local_step(c.init_params(), indices=[0])
Traceback (most recent call last):
...
ValueError: this objective has no local step: the model has no free local latent, or kq.compile(..., local_step=None) turned it off
"""

from __future__ import annotations

import abc
import operator
from typing import Any, Mapping, Optional

import numpy as np

from .problem import Problem, init_params
from .steps import LocalLayout, RowAdam, local_layout

__all__ = ["CompiledObjective", "TERM_KEYS"]

TERM_KEYS = ("loss", "elbo", "loglik", "kl_global", "kl_local", "potential")

Arrays = Mapping[str, Any]            # {name: array}
Params = Mapping[str, Arrays]         # {name: {"loc", "scale"} | {"value"}: array}


class CompiledObjective(abc.ABC):
    """The compiled objective of one problem: loss, gradient and terms as functions of
    q's parameters (q's loc/scale, point parameters' values) for a given minibatch
    (``indices``) and noise, and the step rule's pieces (``klqp.steps``) for given rows.

    With fixed indices and noise every method is deterministic. Weights (``beta``,
    ``likelihood_weight``, schedules, ``kq.Shared``) are read at ``step`` on each call;
    changing them never recompiles. With ``local_step=kq.RowAdam(stl=True)``, ``grad`` is
    the sticking-the-landing gradient that rule trains the free locals with.

    Attributes: ``problem`` (the validated :class:`klqp.problem.Problem`),
    ``local_rule`` (the ``local_step`` rule compiled for), ``layout`` (its
    :class:`klqp.steps.LocalLayout`, None without a local step) and ``stl``.
    """

    def __init__(self, problem: Problem, local_step=None):
        self.problem = problem
        self.local_rule = local_step
        self.layout: Optional[LocalLayout] = local_layout(problem.model, local_step)
        # kq.RowAdam(stl=True): the gradient that rule trains free locals with
        self.stl: bool = isinstance(local_step, RowAdam) and local_step.stl

    # -- the public surface -----------------------------------------------------------------
    @property
    def dtype(self) -> str:
        """The float dtype the objective computes in, "float64" or "float32": on NumPyro
        JAX's ("float64" when x64 is enabled: ``JAX_ENABLE_X64=1`` or
        ``jax.config.update("jax_enable_x64", True)``), on PyMC PyTensor's ``floatX``."""
        return self._float_dtype()

    def init_params(self, seed: int = 0, init_scale: float = 0.1) -> dict:
        """q's initial parameters, as ``kq.fit`` starts from them: {latent: {"loc",
        "scale"}} (free locals with N rows), {point parameter: {"value"}}."""
        return init_params(self.problem, seed, init_scale)

    def terms(self, params, *, indices, noise, step: int = 0) -> dict:
        """loss, elbo, loglik, kl_global, kl_local, potential for this minibatch and noise."""
        out = self._terms(_params(params), _indices(indices), self._noise(noise), _step(step))
        return {k: float(out[k]) for k in TERM_KEYS}

    def loss(self, params, *, indices, noise, step: int = 0) -> float:
        """The loss the fit minimizes, for this minibatch and noise (``terms``' "loss")."""
        return self.terms(params, indices=indices, noise=noise, step=step)["loss"]

    def grad(self, params, *, indices, noise, step: int = 0) -> dict:
        """d loss / d params, with the structure of ``params`` (scale in its own space;
        free-local rows outside ``indices`` get exactly zero)."""
        g = self._grad(_params(params), _indices(indices), self._noise(noise), _step(step))
        return _as_float(g)

    def local_step(self, params, *, indices, step: int = 0) -> dict:
        """``params`` with the rows ``indices`` of every free local moved by one local step
        (``klqp.steps``; the globals held at their q location). No randomness."""
        self._need_local_step()
        idx = _indices(indices)
        new = self._local_step(_params(params), idx, _step(step))
        out = _as_float(params, copy=True)
        for k, q in new.items():
            for name, a in q.items():
                out[k][name][idx] = np.asarray(a, dtype=float)
        return out

    def local_expectations(self, params, *, indices, step: int = 0) -> dict:
        """What the local step reads for each row of ``indices``: ``value`` = E[l] (b,),
        ``grad`` = E[l'] and ``hess`` = the diagonal of E[l''] ({free local: (b, *shape)}),
        l the row's weighted log joint, E over q(z_i) by the step's quadrature."""
        self._need_local_step()
        value, grad, hess = self._local_expectations(_params(params), _indices(indices),
                                                     _step(step))
        return {"value": _as_float(value), "grad": _as_float(grad), "hess": _as_float(hess)}

    def global_curvature(self, params, *, indices, noise, probe=None, step: int = 0) -> dict:
        """The global step's curvature sample for each global ({name: array}): with
        ``probe`` ({global: array of +-1}, the step's Rademacher probe r), -(r / s) * H (s
        * r); without, the exact -diag H. H = d^2 J / d theta^2 at the global draw theta =
        m + s * eps (eps: ``noise``'s globals), J the weighted full-data log joint the
        global step estimates from the rows ``indices`` (after the local step, when
        there is one). One draw: training averages it over an antithetic pair."""
        if probe is not None:
            probe = {v.name: np.asarray(probe[v.name], dtype=float)
                     for v in self.problem.model.globals}
        c = self._global_curvature(_params(params), _indices(indices), self._noise(noise),
                                   probe, _step(step))
        return _as_float(c)

    # -- what a backend implements ----------------------------------------------------------
    @abc.abstractmethod
    def _float_dtype(self) -> str:
        """The name of the float dtype the backend computes in."""

    @abc.abstractmethod
    def _terms(self, params: Params, indices: np.ndarray, noise: Arrays,
               step: int) -> Mapping[str, Any]:
        """{term: scalar} for every name in ``TERM_KEYS``."""

    @abc.abstractmethod
    def _grad(self, params: Params, indices: np.ndarray, noise: Arrays,
              step: int) -> Mapping[str, Arrays]:
        """d loss / d params, with the structure of ``params``."""

    @abc.abstractmethod
    def _local_step(self, params: Params, indices: np.ndarray,
                    step: int) -> Mapping[str, Arrays]:
        """{free local: {"loc", "scale"}}: the rows ``indices`` after one local step."""

    @abc.abstractmethod
    def _local_expectations(self, params: Params, indices: np.ndarray,
                            step: int) -> tuple[Any, Arrays, Arrays]:
        """(E[l] (b,), {free local: E[l'] (b, *shape)}, {free local: diag E[l'']})."""

    @abc.abstractmethod
    def _global_curvature(self, params: Params, indices: np.ndarray, noise: Arrays,
                          probe: Optional[Arrays], step: int) -> Arrays:
        """{global: curvature sample} (see ``global_curvature``)."""

    # -- helpers -----------------------------------------------------------------------------
    def _need_local_step(self) -> None:
        if self.layout is None:
            raise ValueError("this objective has no local step: the model has no free local "
                             "latent, or kq.compile(..., local_step=None) turned it off")

    def _noise(self, noise) -> dict:
        """The model's latents among ``noise``, in model order, as arrays."""
        return {v.name: np.asarray(noise[v.name]) for v in self.problem.model.latents
                if v.name in noise}


def _params(params) -> dict:
    """{name: {field: ndarray}}, each array's dtype as given."""
    return {k: {q: np.asarray(a) for q, a in p.items()} for k, p in params.items()}


def _indices(indices) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
        raise ValueError(f"indices must be a 1-D array of row numbers, got {idx.dtype} with "
                         f"shape {idx.shape}")
    return idx.astype(np.int64)


def _step(step) -> int:
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step={step!r} must be an integer (the training step whose weights "
                        "apply)") from None


def _as_float(tree, copy: bool = False):
    """Every array of a nest of dicts as a float64 NumPy array (a new one with ``copy``)."""
    if isinstance(tree, Mapping):
        return {k: _as_float(a, copy) for k, a in tree.items()}
    return np.array(tree, dtype=float) if copy else np.asarray(tree, dtype=float)
