"""klqp's PyMC backend (entry point ``pymc`` in the ``klqp.backends`` group).

The model is lowered to a ``pm.Model`` and a mean-field ``Approximation`` (one
``MeanFieldGroup`` per block) trained by PyMC's ``ObjectiveFunction`` of a ``KL`` operator
whose ``apply`` is ``klqp.objective.loss``; see ``klqp_pymc.lowering`` for how local latents
are subsampled. ``backend_options={"mode": "c" | "numba" | "jax"}`` picks PyTensor's
compiler. Graphs are built in PyTensor's ``floatX`` (float64 unless the user sets
``PYTENSOR_FLAGS=floatX=float32``), read when a graph is compiled.

>>> import klqp as kq
>>> kq.backends.get("pymc").name
'pymc'
"""

from __future__ import annotations

import collections
import time
from typing import Optional

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as pm_compile

from klqp.problem import FitConfig, Problem, init_params
from klqp.results import FitResult

from . import modes
from .lowering import (Batch, Lowered, QParams, as_column, as_float, float_dtype,
                       inv_softplus_pt, lower)
from .train import fit as _fit

__all__ = ["PyMCBackend", "PyMCObjective"]

_TERM_KEYS = ("loss", "elbo", "loglik", "kl_global", "kl_local")


class PyMCObjective:
    """The compiled objective of one problem: loss, gradient and terms as functions of the
    parameters (q's loc/scale, point parameters' values) for a given minibatch
    (``indices``) and noise.

    The graph is built by the same ``lowering.lower`` the training step uses, with the
    parameters, the indices, the noise and the step as function inputs. A function is
    compiled once per batch length and float dtype (``compiles`` counts them); weights
    are shared variables and a symbolic step, so changing them never recompiles.
    """

    def __init__(self, problem: Problem, mode: str):
        self.problem = problem
        self.mode = mode
        self.compiles = collections.Counter()
        self.compile_seconds = 0.0
        self._functions: dict[tuple, tuple] = {}

    @property
    def dtype(self) -> str:
        """The float dtype the objective computes in: PyTensor's floatX."""
        return float_dtype()

    def init_params(self, seed: int = 0, init_scale: float = 0.1) -> dict:
        return init_params(self.problem, seed, init_scale)

    def lowered(self, b: int) -> Lowered:
        """The PyMC model, approximation and operator for batches of ``b`` rows."""
        return self._function(b)[1]

    def _function(self, b: int):
        key = (b, float_dtype())
        if key not in self._functions:
            self._functions[key] = self._compile(*key)
        return self._functions[key]

    def _compile(self, b: int, floatx: str):
        spec, n = self.problem.model, self.problem.total_size
        indices = pt.tensor("indices", dtype="int64", shape=(b,))
        step = pt.scalar("step", dtype="int64")
        tensor = lambda name, shape: pt.tensor(name, dtype=floatx, shape=tuple(shape))
        wrt, loc, scale, point, noise = {}, {}, {}, {}, {}
        for v in spec.vars.values():
            if v.role == "param":
                point[v.name] = tensor(v.name, v.shape)
                wrt[v.name] = {"value": point[v.name]}
            elif v.role == "global" or (v.role == "local" and not v.amortized):
                rows = (n,) if v.role == "local" else ()
                loc[v.name] = tensor(f"{v.name}_loc", rows + v.shape)
                scale[v.name] = tensor(f"{v.name}_scale", rows + v.shape)
                wrt[v.name] = {"loc": loc[v.name], "scale": scale[v.name]}
            if v.role in ("global", "local"):
                rows = (b,) if v.role == "local" else ()
                noise[v.name] = tensor(f"noise_{v.name}", rows + v.shape)
        rho = {k: inv_softplus_pt(s) for k, s in scale.items()}  # softplus(rho) = scale
        q = QParams(global_mu=_concat([loc[v.name] for v in spec.globals]),
                    global_rho=_concat([rho[v.name] for v in spec.globals]),
                    local_loc={v.name: loc[v.name][indices] for v in spec.free_locals},
                    local_rho={v.name: rho[v.name][indices] for v in spec.free_locals},
                    point=point)
        dtype = lambda k: "int64" if spec[k].dtype == "int" else floatx
        columns = {k: pt.tensor(f"column_{k}", dtype=dtype(k), shape=(b,) + a.shape[1:])
                   for k, a in self.problem.data.items()}
        batch = Batch(indices, columns, b)
        lowered = lower(self.problem, batch, q, noise, step)
        loss = lowered.loss()
        records = lowered.records(loss)
        order = [(k, p) for k, ps in wrt.items() for p in ps]
        grads = pytensor.grad(loss, [wrt[k][p] for k, p in order])
        inputs = ([indices, step] + [wrt[k][p] for k, p in order] + list(noise.values())
                  + list(columns.values()))
        start = time.perf_counter()
        fn = pm_compile(inputs, [records[k] for k in _TERM_KEYS] + grads,
                        **modes.compile_kwargs(self.mode))
        self.compile_seconds += time.perf_counter() - start
        self.compiles[b] += 1
        return fn, lowered, order, list(noise)

    def _evaluate(self, params, indices, noise, step) -> list:
        indices = np.asarray(indices, dtype=np.int64)
        fn, lowered, order, noise_names = self._function(len(indices))
        lowered.refresh_shared_weights()
        args = [indices, np.int64(step)]
        args += [as_float(params[k][p]) for k, p in order]
        args += [as_float(noise[k]) for k in noise_names]
        args += [as_column(np.take(a, indices, axis=0)) for a in self.problem.data.values()]
        with modes.quiet_int64_truncation():
            return fn(*args)

    def terms(self, params, *, indices, noise, step: int = 0) -> dict:
        """loss, elbo, loglik, kl_global, kl_local for this minibatch and noise."""
        out = self._evaluate(params, indices, noise, step)
        return {k: float(v) for k, v in zip(_TERM_KEYS, out)}

    def loss(self, params, *, indices, noise, step: int = 0) -> float:
        return self.terms(params, indices=indices, noise=noise, step=step)["loss"]

    def grad(self, params, *, indices, noise, step: int = 0) -> dict:
        """d loss / d params, with the structure of ``params`` (scale in its own space;
        free-local rows outside ``indices`` get exactly zero)."""
        grads = self._evaluate(params, indices, noise, step)[len(_TERM_KEYS):]
        order = self._function(len(indices))[2]
        out: dict = {}
        for (k, p), g in zip(order, grads):
            out.setdefault(k, {})[p] = np.asarray(g, dtype=float)
        return out


def _concat(parts: list):
    return pt.concatenate([p.reshape((-1,)) for p in parts]) if parts else None


class PyMCBackend:
    """``kq.compile`` / ``kq.fit`` on PyMC; ``mode`` comes from ``backend_options``."""

    name = "pymc"

    def compile(self, problem: Problem, mode: Optional[str] = None) -> PyMCObjective:
        if problem.data is None:
            raise ValueError("kq.compile needs in-memory data (a dict of arrays)")
        return PyMCObjective(problem, modes.check_mode(mode, modes.DEFAULT_COMPILE_MODE))

    def fit(self, problem: Problem, config: FitConfig, mode: Optional[str] = None) -> FitResult:
        return _fit(problem, config, modes.check_mode(mode, modes.DEFAULT_FIT_MODE))
