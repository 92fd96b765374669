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

from klqp.backends import check_one_device
from klqp.compiled import TERM_KEYS, CompiledObjective
from klqp.problem import FitConfig, Problem
from klqp.results import FitResult

from . import modes
from .lowering import Lowered, lower, set_runtime_weights, weight_tensors
from .program import fit as _fit
from .steps import LocalSolver, RowModel, amortized_q, global_curvature, split_flat, tile_rows
from .tensors import (Batch, QParams, as_column, as_float, float_dtype,
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
        return self._function(b)[3]

    def _function(self, b: int, steps: bool = False):
        """The function for batches of ``b`` rows in the current floatX, compiled on first
        use: (fn, the (latent, parameter) order of q's inputs, the noise's names, and the
        terms' Lowered or the step pieces' (output names, shared weights))."""
        key = (steps, b, float_dtype())
        if key in self._functions:
            return self._functions[key]
        spec, n, floatx = self.problem.model, self.problem.total_size, key[2]
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
                noise[v.name] = tensor(f"noise_{v.name}", ((b,) if v.role == "local" else ()) + v.shape)
        dtype = lambda k: "int64" if spec[k].dtype == "int" else floatx
        columns = {k: pt.tensor(f"column_{k}", dtype=dtype(k), shape=(b,) + a.shape[1:])
                   for k, a in self.problem.data.items()}
        order = [(k, p) for k, ps in wrt.items() for p in ps]
        inputs = ([indices, step] + [wrt[k][p] for k, p in order] + list(noise.values())
                  + list(columns.values()))
        build = self._step_outputs if steps else self._term_outputs
        outputs, more_inputs, built = build(b, indices, step, loc, scale, point, noise, columns,
                                            [wrt[k][p] for k, p in order])
        start = time.perf_counter()
        fn = pm_compile(inputs + more_inputs, outputs, **modes.compile_kwargs(self.mode))
        self.compile_seconds += time.perf_counter() - start
        self.compiles[("steps", b) if steps else b] += 1
        self._functions[key] = (fn, order, list(noise), built)
        return self._functions[key]

    def _term_outputs(self, b, indices, step, loc, scale, point, noise, columns, wrt):
        """The terms (TERM_KEYS) and the loss's gradient with respect to ``wrt``."""
        spec = self.problem.model
        rho = {k: inv_softplus_pt(s) for k, s in scale.items()}  # softplus(rho) = scale
        q = QParams(global_mu=_concat([loc[v.name] for v in spec.globals]),
                    global_rho=_concat([rho[v.name] for v in spec.globals]),
                    local_loc={v.name: loc[v.name][indices] for v in spec.free_locals},
                    local_rho={v.name: rho[v.name][indices] for v in spec.free_locals},
                    point=point)
        lowered = lower(self.problem, Batch(indices, columns, b), q, noise, step, stl=self.stl)
        loss = lowered.loss()
        records = lowered.records(loss)
        return [records[k] for k in TERM_KEYS] + pytensor.grad(loss, wrt), [], lowered

    def _arguments(self, function, params, indices, noise, step) -> list:
        """The inputs' values for ``function`` (noise left out: zeros), in its order."""
        _, order, noise_names, _ = function
        spec, noise = self.problem.model, noise or {}
        args = [indices, np.int64(step)] + [as_float(params[k][p]) for k, p in order]
        args += [as_float(noise[k]) if k in noise else
                 as_float(np.zeros(((len(indices),) if spec[k].role == "local" else ())
                                   + tuple(spec[k].shape))) for k in noise_names]
        return args + [as_column(np.take(a, indices, axis=0)) for a in self.problem.data.values()]

    def _evaluate(self, params, indices, noise, step) -> list:
        function = self._function(len(indices))
        set_runtime_weights(function[3].runtime_weights, self.problem)
        with modes.quiet_int64_truncation():
            return function[0](*self._arguments(function, params, indices, noise, step))

    def _terms(self, params, indices, noise, step) -> dict:
        return dict(zip(TERM_KEYS, self._evaluate(params, indices, noise, step)))

    def _grad(self, params, indices, noise, step) -> dict:
        grads = self._evaluate(params, indices, noise, step)[len(TERM_KEYS):]
        out: dict = {}
        for (k, p), g in zip(self._function(len(indices))[1], grads):
            out.setdefault(k, {})[p] = g
        return out

    # -- the step rule's pieces (klqp.steps), deterministic for given rows ---------------------
    def _step_outputs(self, b, indices, step, loc, scale, point, noise, columns, wrt):
        """The local step's new rows and gain, the expectations it reads, and the global
        curvature the global step reads (at a probe, an extra input)."""
        problem, spec, floatx = self.problem, self.problem.model, float_dtype()
        weights, shared = weight_tensors(problem, step)
        global_loc = _concat([loc[v.name] for v in spec.globals])
        outputs, names = [], []
        amortized = amortized_q(problem, columns, point)
        if self.layout is not None:
            solver = LocalSolver(problem, self.local_rule, columns, point, b)
            rows_loc = {k: loc[k][indices] for k in self.layout.names}
            rows_scale = {k: scale[k][indices] for k in self.layout.names}
            new_loc, new_scale, gain = solver.step(rows_loc, rows_scale, global_loc, weights)
            value, grad, hess = solver.expectations(
                solver.flat(rows_loc), pt.log(solver.flat(rows_scale)),
                solver.fixed_values(split_flat(problem, global_loc), solver.amortized_loc), weights)
            parts = {"loc": new_loc, "scale": new_scale, "grad": solver.unflat(grad, b),
                     "hess": solver.unflat(hess, b)}
            for what, per in parts.items():
                names += [(what, k) for k in self.layout.names]
                outputs += [per[k] for k in self.layout.names]
            names += [("value", None), ("gain", None)]
            outputs += [value, gain]
            p = self.layout.num_nodes
            node_u = solver.unflat(pt.repeat(solver.nodes, b, axis=0), p * b)
            local_u = {k: tile_rows(new_loc[k], p) + tile_rows(new_scale[k], p) * node_u[k]
                       for k in self.layout.names}
            row_model, row_weights = solver.row_model, pt.repeat(solver.node_weights, b)
        else:
            p, row_model, row_weights = 1, RowModel(problem, columns, point, b), pt.ones((b,), dtype=floatx)
            local_u = {v.name: loc[v.name][indices] + scale[v.name][indices] * noise[v.name]
                       for v in spec.free_locals}
        local_u.update({k: tile_rows(m + s * noise[k], p) for k, (m, s) in amortized.items()})
        probe = []
        if spec.globals:
            probe = [pt.tensor("probe", dtype=floatx, shape=(global_loc.type.shape[0],))]
            names.append(("curvature", None))
            outputs.append(global_curvature(
                problem, row_model, global_loc, _concat([scale[v.name] for v in spec.globals]),
                _concat([noise[v.name] for v in spec.globals]), probe[0], local_u, row_weights,
                weights, antithetic=False))
        return outputs, probe, (names, shared)

    def _run_steps(self, params, indices, noise, step, probe=None) -> dict:
        function = self._function(len(indices), steps=True)
        fn, _, _, (names, shared) = function
        set_runtime_weights(shared, self.problem)
        args = self._arguments(function, params, indices, noise, step)
        if self.problem.model.globals:  # the curvature's probe (its output unused without one)
            d = sum(int(np.prod(v.shape, dtype=int)) for v in self.problem.model.globals)
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


class PyMCBackend:
    """``kq.compile`` / ``kq.fit`` on PyMC; ``mode`` comes from ``backend_options``."""

    name = "pymc"

    def compile(self, problem: Problem, mode: Optional[str] = None,
                local_step=None) -> PyMCObjective:
        if problem.data is None:
            raise ValueError("kq.compile needs in-memory data (a dict of arrays)")
        return PyMCObjective(problem, modes.check_mode(mode), local_step)

    def fit(self, problem: Problem, config: FitConfig, mode: Optional[str] = None,
            devices=None) -> FitResult:
        check_one_device(devices, "the PyMC backend runs on one device (PyMC has no "
                         "multi-device ADVI). Fit on several devices with backend='numpyro', "
                         "backend_options={'devices': k}")
        return _fit(problem, config, modes.check_mode(mode))
