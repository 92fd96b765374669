"""One fit on PyMC: the ``klqp.loop.Program`` that the core's loop (``klqp.loop.run``)
calls chunk by chunk.

``Program`` holds one fit's state (``klqp_pymc.state``), draws each step's rows and noise
on the host and calls the compiled step (``klqp_pymc.train.Trainer``) once per step;
``FinalPass`` is the local step over all N rows that the report runs at the reported
globals. Both compiled objects are kept across fits in ``TRAINERS`` (``klqp.cache``), so a
second fit of a model of the same structure compiles nothing.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pytensor.tensor as pt
from pymc.pytensorf import compile as pm_compile

from klqp import loop
from klqp.cache import Adoptable, backend_cache
from klqp.steps import Rule
from klqp.problem import FitConfig, Problem, init_params
from klqp.training import epoch_order
from klqp.results import HISTORY_KEYS, FitResult

from .lowering import set_runtime_weights, weight_tensors
from .modes import compile_kwargs, quiet_int64_truncation
from .state import (_NAME, _size, check_state, draw_noise, draw_probe, initial_state,
                    params_from_state, state_layout)
from .steps import LocalSolver
from .tensors import as_column, as_float, float_dtype
from .train import Layout, Trainer, cache_key


#: Compiled trainers kept across fits (``klqp.cache``): a second fit of a model of the
#: same structure (this model object or one declared again) starts without compiling. A
#: waiting trainer holds no reference to the model or the data, so the cache never keeps
#: them alive.
TRAINERS = backend_cache()


def _final_pass_key(problem: Problem, mode: str, rule: Rule) -> tuple:
    layout = Layout.of(problem.batch_size, problem.data, masked=False)
    return ("final pass", cache_key(problem, None, mode, layout, rule))


# -- the final pass --------------------------------------------------------------------------

class FinalPass(Adoptable):
    """The local step over all N rows at the reported globals (``klqp.steps``): one
    compiled Newton iteration of a batch's rows, the globals' location, the point values
    and the step, with no shared state, called ``final_pass`` times on b rows at a time
    (a smaller graph to compile than the iterations unrolled; an iteration starts from
    the last one's rows, so the result is the same)."""

    def __init__(self, problem: Problem, rule: Rule, mode: str):
        spec, b, floatx = problem.model, problem.batch_size, float_dtype()
        self.problem, self.rule, self.capacity = problem, rule, b
        dtype = lambda k: "int64" if spec[k].dtype == "int" else floatx
        self.column_names = list(problem.data)
        columns = {k: pt.tensor(f"column_{k}", dtype=dtype(k), shape=(b,) + problem.data[k].shape[1:])
                   for k in self.column_names}
        point = {v.name: pt.tensor(f"point_{v.name}", dtype=floatx, shape=tuple(v.shape))
                 for v in spec.params}
        d = sum(_size(v.shape) for v in spec.globals)
        mu = pt.tensor("global_mu", dtype=floatx, shape=(d,)) if spec.globals else None
        step = pt.scalar("step", dtype="int64")
        loc = {v.name: pt.tensor(f"{v.name}_loc", dtype=floatx, shape=(b,) + tuple(v.shape))
               for v in spec.free_locals}
        scale = {v.name: pt.tensor(f"{v.name}_scale", dtype=floatx, shape=(b,) + tuple(v.shape))
                 for v in spec.free_locals}
        weights, self.shared = weight_tensors(problem, step)
        solver = LocalSolver(problem, rule.rows, columns, point, b)
        locs, scales, _ = solver.step(loc, scale, mu, weights, iterations=1)
        self.names = [v.name for v in spec.free_locals]
        inputs = ([*loc.values(), *scale.values()] + [columns[k] for k in self.column_names]
                  + list(point.values()) + ([mu] if mu is not None else []) + [step])
        self.fn = pm_compile(inputs, [locs[k] for k in self.names] + [scales[k] for k in self.names],
                             **compile_kwargs(mode))

    def __call__(self, params: dict, step: int) -> dict:
        """{free local: {"loc", "scale"}} for all N rows, from ``params`` (the reported
        globals and point values, the locals' training iterates)."""
        problem, b = self.problem, self.capacity
        n, spec = problem.total_size, problem.model
        set_runtime_weights(self.shared, problem)
        point = [as_float(params[v.name]["value"]) for v in spec.params]
        mu = ([as_float(np.concatenate([np.ravel(params[v.name]["loc"]) for v in spec.globals]))]
              if spec.globals else [])
        out = {k: {"loc": np.empty_like(params[k]["loc"]), "scale": np.empty_like(params[k]["scale"])}
               for k in self.names}
        for start in range(0, n, b):
            rows = np.minimum(np.arange(start, start + b), n - 1)  # the last row repeated
            res = ([as_float(params[k]["loc"][rows]) for k in self.names]
                   + [as_float(params[k]["scale"][rows]) for k in self.names])
            fixed = ([as_column(np.take(problem.data[k], rows, axis=0)) for k in self.column_names]
                     + point + mu + [np.int64(step)])
            for _ in range(self.rule.rows.final_pass):
                with quiet_int64_truncation():
                    res = self.fn(*res, *fixed)
            keep = slice(0, min(b, n - start))
            for i, k in enumerate(self.names):
                out[k]["loc"][start:start + b] = np.asarray(res[i], dtype=float)[keep]
                out[k]["scale"][start:start + b] = np.asarray(res[len(self.names) + i],
                                                               dtype=float)[keep]
        return out


# -- one fit ---------------------------------------------------------------------------------

class Program:
    """One fit's compiled step and its state (``klqp.loop.Program``): the core's loop
    (``klqp.loop.run``) calls it chunk by chunk. The step is compiled on the first chunk
    (or taken from ``TRAINERS``), so ``steps=0`` compiles nothing."""

    backend = _NAME

    def __init__(self, problem: Problem, config: FitConfig, mode: str):
        self.problem, self.config, self.mode = problem, config, mode
        self.trainer: Optional[Trainer] = None
        self.capacity: Optional[int] = None
        self.compiles = 0
        self.compile_seconds = 0.0
        self.rule = Rule.of(problem.model, config.local_step, config.global_step)
        self.final_pass: Optional[FinalPass] = None
        self.arrays = initial_state(problem, init_params(problem, config.seed, config.init_scale),
                                    self.rule)
        if config.resume is not None:
            self.arrays = check_state(problem, config.resume.state.optimizer, self.rule)
        self._epoch, self._order = None, None  # the current epoch's row order

    def use_trainer(self, layout: Layout, step: int) -> Trainer:
        """A trainer for this batch layout (a cached one, or compiled now), carrying the
        current state over."""
        state = self.arrays_now()
        trainer = TRAINERS.take_for(self.problem, cache_key(
            self.problem, self.config.learning_rate, self.mode, layout, self.rule))
        if trainer is None:
            trainer = Trainer(self.problem, self.config.learning_rate, self.mode, layout,
                              self.rule)
            self.compiles += 1
            self.compile_seconds += trainer.compile_seconds
        trainer.load_state(state, step)
        self.trainer, self.capacity = trainer, trainer.capacity
        return trainer

    def run_steps(self, step: int, count: int, length: int, in_row: int, stop) -> dict:
        """``count`` compiled steps, one call each, with the weights set once (a kq.Shared
        changes only between chunks); ends early on Ctrl-C (``stop``) or after
        ``max_nonfinite`` non-finite steps in a row."""
        problem, seed = self.problem, self.config.seed
        n, b, m = problem.total_size, problem.batch_size, problem.num_batches
        trainer = self.trainer or self.use_trainer(Layout.of(b, problem.data, masked=False), step)
        set_runtime_weights(trainer.lowered.runtime_weights, problem)
        outs = []
        for t in range(step, step + count):
            if stop():
                break
            epoch, pos = divmod(t, m)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, epoch_order(seed, epoch, n)
            indices = self._order[pos * b:(pos + 1) * b]
            columns = [as_column(np.take(problem.data[k], indices, axis=0))
                       for k, _ in trainer.layout.columns]
            outs.append(trainer(indices, draw_noise(problem, seed, t, b), columns,
                                probe=draw_probe(problem, seed, t)))
            in_row = in_row + 1 if outs[-1][HISTORY_KEYS.index("skipped")] else 0
            if in_row >= self.config.max_nonfinite:
                break  # the core stops the fit; no later step may apply
        return _figures(outs)

    def run_batch(self, step: int, columns: dict, rows, size: int) -> dict:
        trainer = self._trainer_for(size, columns, step)
        set_runtime_weights(trainer.lowered.runtime_weights, self.problem)
        cap = trainer.capacity
        indices = rows if rows is not None else np.arange(size, dtype=np.int64)
        mask = as_float(np.arange(cap) < size)
        padded = [as_column(np.ascontiguousarray(_pad(columns[k], cap)))
                  for k, _ in trainer.layout.columns]
        seed = self.config.seed
        return _figures([trainer(_pad(indices, cap), draw_noise(self.problem, seed, step, cap),
                                 padded, mask, probe=draw_probe(self.problem, seed, step))])

    def _trainer_for(self, b: int, cols: dict, step: int) -> Trainer:
        """The current trainer if a batch of b rows with these row shapes fits it; otherwise
        one compiled for it (the first batch's length sets b; a shorter batch is padded)."""
        trainer = self.trainer
        capacity = trainer.capacity if trainer is not None else b
        layout = Layout.of(max(b, capacity), cols, masked=True)
        if trainer is not None and layout == trainer.layout:
            return trainer
        return self.use_trainer(layout, step)

    def arrays_now(self) -> list:
        """The state arrays in ``state_layout``'s order."""
        return self.trainer.state_arrays() if self.trainer is not None else self.arrays

    def state(self) -> dict:
        return {name: a for (name, _, _), a in zip(state_layout(self.problem, self.rule),
                                                    self.arrays_now())}

    def report(self, step: int) -> dict:
        """q as the fit reports it (``klqp.steps``): the globals' averaged iterates, the
        locals after the final pass at those globals (in-memory data only)."""
        params = params_from_state(self.problem, self.arrays_now(), self.rule)
        if self.rule.local_step and self.rule.rows.final_pass and self.problem.data is not None:
            if self.final_pass is None:
                self.final_pass = TRAINERS.take_for(
                    self.problem, _final_pass_key(self.problem, self.mode, self.rule))
            if self.final_pass is None:
                start = time.perf_counter()
                self.final_pass = FinalPass(self.problem, self.rule, self.mode)
                self.compile_seconds += time.perf_counter() - start
            params.update(self.final_pass(params, max(step - 1, 0)))
        return params

    def info(self) -> dict:
        return {"compiles": self.compiles, "mode": self.mode, "dtype": float_dtype(),
                "compile_seconds": round(self.compile_seconds, 3),
                "batch_capacity": self.capacity}

    def close(self) -> None:
        """Hand the compiled step and final pass back to the cache."""
        if self.trainer is not None:
            self.arrays, trainer, self.trainer = self.trainer.state_arrays(), self.trainer, None
            TRAINERS.give_back_for(self.problem, trainer.key, trainer)
        if self.final_pass is not None:
            TRAINERS.give_back_for(self.problem, _final_pass_key(self.problem, self.mode,
                                                                 self.rule), self.final_pass)
            self.final_pass = None


def _figures(outs: list) -> dict:
    """Compiled steps' outputs (HISTORY_KEYS, then the non-finite diagnosis) as arrays."""
    keys = [*HISTORY_KEYS, "nonfinite_term", "nonfinite_variable"]
    return {k: np.array([out[i] for out in outs]) for i, k in enumerate(keys)}


def fit(problem: Problem, config: FitConfig, mode: str) -> FitResult:
    """The backend's ``fit``: the core's loop (``klqp.loop.run``) over this backend's
    ``Program``."""
    return loop.run(problem, config, Program(problem, config, mode))


def _pad(a: np.ndarray, capacity: int) -> np.ndarray:
    """``a`` padded to ``capacity`` rows by repeating its first row (a valid value, so no
    NaN can leak through a 0 mask)."""
    if len(a) == capacity:
        return a
    return np.concatenate([a, np.repeat(a[:1], capacity - len(a), axis=0)])
