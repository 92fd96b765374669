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

from klqp.compiled import TERM_KEYS, CompiledObjective
from klqp.expr import evaluate
from klqp.problem import FitConfig, Problem
from klqp.results import FitResult

from . import modes
from .lowering import Lowered, lower, weight_tensors
from .program import fit as _fit
from .steps import (LocalSolver, RowModel, amortized_locations, global_curvature, split_flat,
                    tile_rows)
from .tensors import (Batch, PytensorOps, QParams, as_column, as_float, float_dtype,
                      inv_softplus_pt)

__all__ = ["PyMCBackend", "PyMCObjective"]


class PyMCObjective(CompiledObjective):
    """The compiled objective on PyMC (``klqp.compiled.CompiledObjective``).

    The graph is built by the same ``lowering.lower`` the training step uses, with the
    parameters, the indices, the noise and the step as function inputs. A function is
    compiled once per batch length and float dtype (``compiles`` counts them); weights
    are shared variables and a symbolic step, so changing them never recompiles.
    """

    def __init__(self, problem: Problem, mode: str, local_step=None):
        super().__init__(problem, local_step)
        self.mode = mode
        self.compiles = collections.Counter()
        self.compile_seconds = 0.0
        self._functions: dict[tuple, tuple] = {}

    def _float_dtype(self) -> str:
        return float_dtype()

    def lowered(self, b: int) -> Lowered:
        """The PyMC model, approximation and operator for batches of ``b`` rows."""
        return self._function(b)[1]

    def _function(self, b: int, steps: bool = False):
        """The function for batches of ``b`` rows in the current floatX, compiled on first
        use: the terms and gradient, or (``steps``) the step rule's pieces."""
        key = (steps, b, float_dtype())
        if key not in self._functions:
            self._functions[key] = (self._compile_steps if steps else self._compile)(*key[1:])
        return self._functions[key]

    def _inputs(self, b: int, floatx: str):
        """Symbolic inputs: indices, step, q's parameters (N-row locals), noise, columns."""
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
        dtype = lambda k: "int64" if spec[k].dtype == "int" else floatx
        columns = {k: pt.tensor(f"column_{k}", dtype=dtype(k), shape=(b,) + a.shape[1:])
                   for k, a in self.problem.data.items()}
        return indices, step, wrt, loc, scale, point, noise, columns

    def _compile(self, b: int, floatx: str):
        spec = self.problem.model
        indices, step, wrt, loc, scale, point, noise, columns = self._inputs(b, floatx)
        rho = {k: inv_softplus_pt(s) for k, s in scale.items()}  # softplus(rho) = scale
        q = QParams(global_mu=_concat([loc[v.name] for v in spec.globals]),
                    global_rho=_concat([rho[v.name] for v in spec.globals]),
                    local_loc={v.name: loc[v.name][indices] for v in spec.free_locals},
                    local_rho={v.name: rho[v.name][indices] for v in spec.free_locals},
                    point=point)
        batch = Batch(indices, columns, b)
        lowered = lower(self.problem, batch, q, noise, step, stl=self.stl)
        loss = lowered.loss()
        records = lowered.records(loss)
        order = [(k, p) for k, ps in wrt.items() for p in ps]
        grads = pytensor.grad(loss, [wrt[k][p] for k, p in order])
        inputs = ([indices, step] + [wrt[k][p] for k, p in order] + list(noise.values())
                  + list(columns.values()))
        start = time.perf_counter()
        fn = pm_compile(inputs, [records[k] for k in TERM_KEYS] + grads,
                        **modes.compile_kwargs(self.mode))
        self.compile_seconds += time.perf_counter() - start
        self.compiles[b] += 1
        return fn, lowered, order, list(noise)

    def _evaluate(self, params, indices, noise, step) -> list:
        fn, lowered, order, noise_names = self._function(len(indices))
        lowered.refresh_shared_weights()
        args = [indices, np.int64(step)]
        args += [as_float(params[k][p]) for k, p in order]
        args += [as_float(noise[k]) for k in noise_names]
        args += [as_column(np.take(a, indices, axis=0)) for a in self.problem.data.values()]
        with modes.quiet_int64_truncation():
            return fn(*args)

    def _terms(self, params, indices, noise, step) -> dict:
        return dict(zip(TERM_KEYS, self._evaluate(params, indices, noise, step)))

    def _grad(self, params, indices, noise, step) -> dict:
        grads = self._evaluate(params, indices, noise, step)[len(TERM_KEYS):]
        out: dict = {}
        for (k, p), g in zip(self._function(len(indices))[2], grads):
            out.setdefault(k, {})[p] = g
        return out

    # -- the step rule's pieces (klqp.steps), deterministic for given rows ---------------------
    def _compile_steps(self, b: int, floatx: str):
        """One function of the parameters, rows and noise: the local step's new rows and
        gain, the expectations it reads, and the global curvature the global step reads."""
        problem, spec = self.problem, self.problem.model
        indices, step, wrt, loc, scale, point, noise, columns = self._inputs(b, floatx)
        weights, shared = weight_tensors(problem, step)
        global_loc = _concat([loc[v.name] for v in spec.globals])
        amortized_loc = amortized_locations(problem, columns, point)
        outputs, names = [], []
        local_u, row_weights = {}, pt.ones((b,), dtype=floatx)
        if self.layout is not None:
            solver = LocalSolver(problem, self.layout, self.local_rule, columns, point, b)
            fixed = solver.fixed_values(split_flat(problem, global_loc), amortized_loc)
            loc0 = solver.flat({k: loc[k][indices] for k in self.layout.names})
            log_scale0 = pt.log(solver.flat({k: scale[k][indices] for k in self.layout.names}))
            value, grad, hess = solver.expectations(loc0, log_scale0, fixed, weights)
            new_loc, new_log_scale, gain = solver.newton(loc0, log_scale0, fixed, weights)
            parts = {"loc": solver.unflat(new_loc, b), "scale": solver.unflat(pt.exp(new_log_scale), b),
                     "grad": solver.unflat(grad, b), "hess": solver.unflat(hess, b)}
            for what, per in parts.items():
                for k in self.layout.names:
                    names.append((what, k))
                    outputs.append(per[k])
            names += [("value", None), ("gain", None)]
            outputs += [value, gain]
            p = self.layout.num_nodes
            node_u = solver.unflat(pt.repeat(solver.nodes, b, axis=0), p * b)
            local_u = {k: tile_rows(parts["loc"][k], p) + tile_rows(parts["scale"][k], p) * node_u[k]
                       for k in self.layout.names}
            row_model = solver.row_model
            row_weights = pt.repeat(solver.node_weights, b)
            local_u.update({k: tile_rows(a + _encoder_scale(problem, k, columns, point) * noise[k], p)
                            for k, a in amortized_loc.items()})
        else:
            row_model = RowModel(problem, columns, point, b)
            for v in spec.locals:
                if v.amortized:
                    local_u[v.name] = amortized_loc[v.name] + _encoder_scale(
                        problem, v.name, columns, point) * noise[v.name]
                else:
                    local_u[v.name] = loc[v.name][indices] + scale[v.name][indices] * noise[v.name]
        probe = None
        if spec.globals:
            probe = pt.tensor("probe", dtype=floatx, shape=(global_loc.type.shape[0],))
            names.append(("curvature", None))
            outputs.append(global_curvature(
                problem, row_model, global_loc, _concat([scale[v.name] for v in spec.globals]),
                _concat([noise[v.name] for v in spec.globals]), probe, local_u, row_weights,
                weights, antithetic=False))
        inputs = ([indices, step] + [wrt[k][q] for k in wrt for q in wrt[k]]
                  + list(noise.values()) + list(columns.values())
                  + ([probe] if probe is not None else []))
        start = time.perf_counter()
        fn = pm_compile(inputs, outputs, **modes.compile_kwargs(self.mode))
        self.compile_seconds += time.perf_counter() - start
        self.compiles[("steps", b)] += 1
        order = [(k, q) for k in wrt for q in wrt[k]]
        return fn, names, order, list(noise), shared

    def _run_steps(self, params, indices, noise, step, probe=None) -> dict:
        fn, names, order, noise_names, shared = self._function(len(indices), steps=True)
        for weight, holder in shared:
            holder.set_value(as_float(weight.value, holder.dtype))
        spec = self.problem.model
        noise = noise or {}
        args = [indices, np.int64(step)] + [as_float(params[k][q]) for k, q in order]
        args += [as_float(noise[k]) if k in noise else
                 as_float(np.zeros(((len(indices),) if spec[k].role == "local" else ())
                                   + tuple(spec[k].shape))) for k in noise_names]
        args += [as_column(np.take(a, indices, axis=0)) for a in self.problem.data.values()]
        if spec.globals:  # the curvature's probe (its output unused without one)
            d = sum(int(np.prod(v.shape, dtype=int)) for v in spec.globals)
            args.append(as_float(np.ones(d) if probe is None else probe))
        with modes.quiet_int64_truncation():
            out = fn(*args)
        return {name: np.asarray(o, dtype=float) for name, o in zip(names, out)}

    def _local_step(self, params, indices, step) -> dict:
        out = self._run_steps(params, indices, None, step)
        return {k: {"loc": out[("loc", k)], "scale": out[("scale", k)]}
                for k in self.layout.names}

    def _local_expectations(self, params, indices, step) -> tuple:
        out = self._run_steps(params, indices, None, step)
        return (out[("value", None)], {k: out[("grad", k)] for k in self.layout.names},
                {k: out[("hess", k)] for k in self.layout.names})

    def _global_curvature(self, params, indices, noise, probe, step) -> dict:
        """Without ``probe``, the exact -diag H takes one call per global number."""
        spec = self.problem.model
        if probe is not None:
            flat_probe = np.concatenate([probe[v.name].reshape(-1) for v in spec.globals])
            flat = self._run_steps(params, indices, noise, step, flat_probe)[("curvature", None)]
        else:
            d = sum(int(np.prod(v.shape, dtype=int)) for v in spec.globals)
            flat = np.array([self._run_steps(params, indices, noise, step, np.eye(d)[j])[
                ("curvature", None)][j] for j in range(d)])
        return split_flat(self.problem, flat)


def _concat(parts: list):
    return pt.concatenate([p.reshape((-1,)) for p in parts]) if parts else None


def _encoder_scale(problem: Problem, name: str, columns: dict, point: dict):
    """An amortized local's encoder scale on ``columns``."""
    env = {**columns, **point}
    return evaluate(problem.model[name].encoder[1], env, PytensorOps)


class PyMCBackend:
    """``kq.compile`` / ``kq.fit`` on PyMC; ``mode`` comes from ``backend_options``."""

    name = "pymc"

    def compile(self, problem: Problem, mode: Optional[str] = None,
                local_step=None) -> PyMCObjective:
        if problem.data is None:
            raise ValueError("kq.compile needs in-memory data (a dict of arrays)")
        return PyMCObjective(problem, modes.check_mode(mode, modes.DEFAULT_COMPILE_MODE),
                             local_step)

    def fit(self, problem: Problem, config: FitConfig, mode: Optional[str] = None,
            devices=None) -> FitResult:
        check_devices(devices)
        return _fit(problem, config, modes.check_mode(mode, modes.DEFAULT_FIT_MODE))


def check_devices(devices) -> None:
    """PyMC's ADVI runs on one device: ``devices`` may only be 1 (or left out)."""
    if devices is None or (isinstance(devices, (int, np.integer)) and not isinstance(devices, bool)
                           and devices == 1):
        return
    if isinstance(devices, (list, tuple)) and len(devices) == 1:
        return
    raise ValueError(f"backend_options['devices']={devices!r}: the PyMC backend runs on one "
                     "device (PyMC has no multi-device ADVI). Fit on several devices with "
                     "backend='numpyro', backend_options={'devices': k}")
