"""Training on PyMC: one compiled PyTensor step, called from a Python loop.

The step function is PyMC's: ``ObjectiveFunction.updates`` of the ``KlqpKL`` operator with
``KlqpOptimizer`` (``pm.adam`` for the global group, row-wise Adam for the local rows),
compiled by ``pymc.pytensorf.compile`` in the chosen PyTensor mode. Its inputs are this
step's row indices and noise (and, for a stream, the batch's columns and row mask); its
shared state is q's parameters, the optimizer state, a step counter the schedules read and
one scalar per ``kq.Shared`` weight. So a weight's schedule or value never recompiles.

Randomness lives on the host and depends only on (seed, step): in-memory rows come from
``klqp.training.epoch_order`` (a fresh permutation each epoch, N // b batches per epoch,
uniform without replacement; the NumPyro backend takes the same rows), noise from a
generator seeded with (seed, step). A resumed run
therefore continues the random stream of an unbroken one, in every mode.

Why not ``pm.Minibatch``: it draws its rows WITH replacement (an ``integers`` draw), which
is not the objective's minibatch (docs/objective.md) and would hand row-wise Adam duplicate rows; PyMC's logp
admits no other random variable in the data graph; and its shared generator is copied
away by the JAX linker, so its state could not be saved for an exact resume. The
observations still reach PyMC as observed data with ``total_size=N``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as pm_compile
from pytensor.gradient import disconnected_grad
from pytensor.graph.replace import graph_replace
from pytensor.tensor.subtensor import AdvancedIncSubtensor

from klqp import guard, loop, schedules
from klqp.cache import backend_cache, structure_key
from klqp import steps as steps_rule
from klqp.steps import Rule
from klqp.problem import FitConfig, Problem, init_params
from klqp.training import epoch_order
from klqp.results import HISTORY_KEYS, FitResult

from .lowering import (Batch, QParams, as_column, as_float, float_dtype, inv_softplus,
                       inv_softplus_pt, lower, weight_tensors)
from .modes import compile_kwargs, quiet_int64_truncation
from .optim import KlqpOptimizer, RowAdam
from .steps import LocalSolver, RowModel, amortized_locations, global_curvature, split_flat, tile_rows

_NAME = "pymc"


# -- parameters <-> the optimizer's state, as plain arrays ----------------------------------

def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def dense_layout(problem: Problem) -> list[tuple[str, tuple]]:
    """What pm.adam moves: the global group's flat mu and rho, then each kq.Param."""
    spec = problem.model
    d = sum(_size(v.shape) for v in spec.globals)
    out = [("global_mu", (d,)), ("global_rho", (d,))] if spec.globals else []
    return out + [(f"param_{v.name}", tuple(v.shape)) for v in spec.params]


def row_layout(problem: Problem) -> list[tuple[str, tuple]]:
    """What the row-wise Adam moves: each free local's N-row loc and rho."""
    n = problem.total_size
    return [(f"{v.name}_{p}", (n,) + tuple(v.shape))
            for v in problem.model.free_locals for p in ("loc", "rho")]


def state_layout(problem: Problem, rule: "Rule") -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of every state array, in FitState.optimizer's order: the dense
    variables, the row variables, pm.adam's moments (m, v per dense variable) and step
    count, the row-wise Adam's per-row count and moments (RowAdam only), the global
    step's running curvature and averages (when on). Independent of the batch size;
    floats are in PyTensor's floatX."""
    dense, rows, floatx = dense_layout(problem), row_layout(problem), float_dtype()
    out = [(k, s, floatx) for k, s in dense + rows]
    if dense:
        out += [(f"adam_{m}_{k}", s, floatx) for k, s in dense for m in ("m", "v")]
        out += [("adam_t", (), floatx)]
    if rows and rule.row_adam:
        out += [("row_count", (problem.total_size,), "int64")]
        out += [(f"{k}_{m}", s, floatx) for k, s in rows for m in ("m", "v")]
    d = sum(_size(v.shape) for v in problem.model.globals)
    if rule.curvature:
        out += [("global_curvature", (d,), floatx)]
    if rule.dense:
        out += [("global_curvature_matrix", (d, d), floatx)]
    if rule.average:
        out += [("average_mu", (d,), floatx), ("average_scale", (d,), floatx)]
    return out


def initial_state(problem: Problem, params: dict, rule: "Rule") -> list[np.ndarray]:
    """State arrays for ``params`` (klqp.problem.init_params' structure) and a fresh
    optimizer."""
    spec = problem.model
    given = {}
    if spec.globals:
        given["global_mu"] = np.concatenate([np.ravel(params[v.name]["loc"]) for v in spec.globals])
        given["global_rho"] = np.concatenate([np.ravel(inv_softplus(params[v.name]["scale"]))
                                              for v in spec.globals])
        given["average_mu"] = given["global_mu"]
        given["average_scale"] = np.concatenate([np.ravel(params[v.name]["scale"])
                                                 for v in spec.globals])
    for v in spec.params:
        given[f"param_{v.name}"] = params[v.name]["value"]
    for v in spec.free_locals:
        given[f"{v.name}_loc"] = params[v.name]["loc"]
        given[f"{v.name}_rho"] = inv_softplus(params[v.name]["scale"])
    return [np.asarray(given[name], dtype=dt).reshape(shape) if name in given
            else np.zeros(shape, dtype=dt) for name, shape, dt in state_layout(problem, rule)]


def params_from_state(problem: Problem, state: list, rule: "Rule") -> dict:
    """{latent: {"loc", "scale"}} (scale = softplus(rho)) and {param: {"value"}}: the raw
    iterates, except that the globals are their running average when the rule averages."""
    spec = problem.model
    # Results are float64 whatever floatX the state is in.
    arrays = {name: np.asarray(a, dtype=float)
              for (name, _, _), a in zip(state_layout(problem, rule), state)}
    out, offset = {}, 0
    for v in spec.globals:
        k = _size(v.shape)
        if rule.average:
            loc = arrays["average_mu"][offset:offset + k].reshape(v.shape)
            scale = arrays["average_scale"][offset:offset + k].reshape(v.shape)
        else:
            loc = arrays["global_mu"][offset:offset + k].reshape(v.shape)
            scale = np.logaddexp(0.0, arrays["global_rho"][offset:offset + k].reshape(v.shape))
        out[v.name] = {"loc": np.array(loc, dtype=float), "scale": np.array(scale, dtype=float)}
        offset += k
    for v in spec.params:
        out[v.name] = {"value": np.array(arrays[f"param_{v.name}"], dtype=float)}
    for v in spec.free_locals:
        out[v.name] = {"loc": np.array(arrays[f"{v.name}_loc"], dtype=float),
                       "scale": np.logaddexp(0.0, arrays[f"{v.name}_rho"])}
    return {v.name: out[v.name] for v in spec.vars.values() if v.name in out}


def check_state(problem: Problem, state: dict, rule: "Rule") -> list[np.ndarray]:
    """State arrays from a FitResult ({name: array}), checked by name and shape against
    this problem's layout; returned in the layout's order."""
    layout = state_layout(problem, rule)
    arrays = loop.resume_arrays(state, {name: shape for name, shape, _ in layout}, _NAME)
    return [arrays[name].astype(dtype) for name, _, dtype in layout]


# -- host-side randomness: a function of (seed, step) only ----------------------------------

def draw_noise(problem: Problem, seed: int, step: int, rows: int) -> list[np.ndarray]:
    """Standard-normal noise for each latent (model order); locals get ``rows`` rows.
    Drawn in float64 whatever floatX is, so float32 runs see the same (rounded) draws."""
    rng = np.random.default_rng([seed, 1, step])
    return [as_float(rng.standard_normal(((rows,) if v.role == "local" else ()) + tuple(v.shape)))
            for v in problem.model.latents]


def draw_probe(problem: Problem, seed: int, step: int) -> np.ndarray:
    """The global curvature's Rademacher probe (flat, D numbers) at ``step``: a stream of
    its own, so the latents' noise is that of a fit without it."""
    d = sum(_size(v.shape) for v in problem.model.globals)
    rng = np.random.default_rng([seed, 2, step])
    return as_float(rng.integers(0, 2, size=d) * 2.0 - 1.0)


def _as_schedule(learning_rate) -> schedules.Schedule:
    """kq.fit hands a schedule; a bare number (direct callers) is a constant one."""
    if isinstance(learning_rate, schedules.Schedule):
        return learning_rate
    return schedules.constant(float(learning_rate))


@dataclass(frozen=True)
class Layout:
    """The batch a compiled step takes: ``capacity`` rows (the static b), each column's
    row shape, and whether a row mask marks the real rows (streams: shorter batches are
    padded, not recompiled)."""

    capacity: int
    columns: tuple  # ((name, row shape), ...)
    masked: bool

    @classmethod
    def of(cls, capacity: int, columns: dict, masked: bool) -> "Layout":
        return cls(int(capacity), tuple((k, tuple(np.shape(a)[1:])) for k, a in columns.items()),
                   masked)


def cache_key(problem: Problem, learning_rate, mode: str, layout: Layout, rule: Rule) -> tuple:
    """Everything a compiled step depends on besides the model: two fits with equal keys
    can share it. Weights compare by value (schedules) or identity (kq.Shared)."""
    return (mode, float_dtype(), layout, problem.total_size, problem.batch_size, problem.weights,
            problem.scale_cost_to_minibatch, _as_schedule(learning_rate), rule)


#: Compiled trainers kept across fits (``klqp.cache``): a second fit of a model of the
#: same structure (this model object or one declared again) starts without compiling. A
#: waiting trainer holds no reference to the model or the data, so the cache never keeps
#: them alive.
TRAINERS = backend_cache()


def take_trainer(problem: Problem, learning_rate, mode: str, layout: Layout,
                 rule: Rule) -> Optional["Trainer"]:
    """A trainer compiled by an earlier fit with the same model structure and
    ``cache_key``, taken out of the cache for this fit; None if there is none."""
    structure = structure_key(problem.model)
    if structure is None:
        return None
    trainer = TRAINERS.take((structure, cache_key(problem, learning_rate, mode, layout, rule)))
    if trainer is not None:
        trainer.problem = problem
    return trainer


def give_back_trainer(problem: Problem, trainer: "Trainer") -> None:
    trainer.problem = None
    structure = structure_key(problem.model)
    if structure is not None:
        TRAINERS.give_back((structure, trainer.key), trainer)


def _final_pass_key(problem: Problem, mode: str, rule: "Rule"):
    structure = structure_key(problem.model)
    layout = Layout.of(problem.batch_size, problem.data, masked=False)
    return None if structure is None else (structure, "final pass", cache_key(
        problem, 0.0, mode, layout, rule))


def take_final_pass(problem: Problem, mode: str, rule: "Rule") -> Optional["FinalPass"]:
    """The final pass compiled by an earlier fit of the same structure, or None."""
    key = _final_pass_key(problem, mode, rule)
    final = None if key is None else TRAINERS.take(key)
    if final is not None:
        final.problem = problem
    return final


def give_back_final_pass(problem: Problem, mode: str, rule: "Rule", final: "FinalPass") -> None:
    key = _final_pass_key(problem, mode, rule)
    final.problem = None
    if key is not None:
        TRAINERS.give_back(key, final)


# -- the compiled step -----------------------------------------------------------------------

class Trainer:
    """The compiled step of one problem for one batch ``Layout`` and step ``Rule``.

    Inputs: the batch's row indices, noise and columns (gathered on the host: b rows, so
    no mode copies the whole data set into its graph each call), and for a stream the
    row mask.
    """

    def __init__(self, problem: Problem, learning_rate, mode: str, layout: Layout, rule: Rule):
        self.problem, self.mode, self.layout, self.rule = problem, mode, layout, rule
        self.capacity = layout.capacity
        self.key = cache_key(problem, learning_rate, mode, layout, rule)
        self.compile_seconds = 0.0
        self._traced = False
        self._final = None
        self._build(learning_rate)

    # -- graph ---------------------------------------------------------------------------
    def _shared_state(self) -> None:
        """The shared variables the optimizer moves (values are set by load_state)."""
        problem = self.problem
        shared = lambda name, shape: pytensor.shared(as_float(np.zeros(shape)), name, shape=shape)
        self.dense = {k: shared(k, s) for k, s in dense_layout(problem)}
        self.rows = {k: shared(k, s) for k, s in row_layout(problem)}
        self.step = pytensor.shared(np.int64(0), "step")
        d = sum(_size(v.shape) for v in problem.model.globals)
        self.curvature = shared("global_curvature", (d,)) if self.rule.curvature else None
        self.curvature_matrix = (shared("global_curvature_matrix", (d, d)) if self.rule.dense
                                 else None)
        self.average = ({"mu": shared("average_mu", (d,)), "scale": shared("average_scale", (d,))}
                        if self.rule.average else None)

    def _inputs(self):
        """Symbolic inputs and the Batch they make."""
        spec, b = self.problem.model, self.capacity
        indices = pt.tensor("indices", dtype="int64", shape=(b,))
        floatx = float_dtype()
        noise = {v.name: pt.tensor(f"noise_{v.name}", dtype=floatx,
                                   shape=((b,) if v.role == "local" else ()) + tuple(v.shape))
                 for v in spec.latents}
        dtype = lambda k: "int64" if spec[k].dtype == "int" else floatx
        columns = {k: pt.tensor(f"column_{k}", dtype=dtype(k), shape=(b,) + row)
                   for k, row in self.layout.columns}
        mask = pt.tensor("row_mask", dtype=floatx, shape=(b,)) if self.layout.masked else None
        inputs = [indices, *noise.values(), *columns.values()] + ([mask] if mask is not None else [])
        self._noise_inputs = noise
        if self.rule.curvature:
            d = sum(_size(v.shape) for v in spec.globals)
            self._probe = pt.tensor("probe", dtype=floatx, shape=(d,))
            inputs.append(self._probe)
        return inputs, Batch(indices, columns, b, mask), noise

    def _build(self, learning_rate) -> None:
        problem, spec, b, rule = self.problem, self.problem.model, self.capacity, self.rule
        self._shared_state()
        # Adam's step size at the symbolic step: a schedule never recompiles either.
        lr = pt.cast(pt.as_tensor(_as_schedule(learning_rate)(self.step, xp=pt)), float_dtype())
        inputs, batch, noise = self._inputs()
        point = {v.name: self.dense[f"param_{v.name}"] for v in spec.params}
        weights = weight_tensors(problem, self.step)
        more_updates = {self.step: self.step + 1}
        gain = pt.as_tensor(as_float(0.0))
        stand_ins = {}
        if rule.local_step:
            lowered_batch, q, noise, more_updates, gain = self._local_step(batch, noise, point,
                                                                          weights[0], more_updates)
        else:
            # The free locals' batch rows as shared stand-ins (PyMC differentiates w.r.t.
            # shared variables); once the updates are built they become the N-row arrays'
            # batch rows.
            stand_ins = {k: pytensor.shared(as_float(np.zeros((b,) + full.type.shape[1:])),
                                            f"{k}_rows") for k, full in self.rows.items()}
            q = QParams(self.dense.get("global_mu"), self.dense.get("global_rho"),
                        {v.name: stand_ins[f"{v.name}_loc"] for v in spec.free_locals},
                        {v.name: stand_ins[f"{v.name}_rho"] for v in spec.free_locals}, point)
            lowered_batch = batch
        stl = rule.stl
        self.lowered = lower(problem, lowered_batch, q, noise, self.step, weights=weights,
                             antithetic=rule.globals is not None and rule.globals.antithetic,
                             stl=stl)
        outputs, updates = self._outputs_and_updates(lr, batch, list(point.values()), stand_ins,
                                                     more_updates, gain)
        start = time.perf_counter()
        self.fn = pm_compile(inputs, outputs, updates=updates, **compile_kwargs(self.mode))
        self.fn.trust_input = True
        self.compile_seconds = time.perf_counter() - start

    def _local_step(self, batch: Batch, noise: dict, point: dict, weights: dict, more_updates):
        """The local step on the batch's rows (``klqp.steps``), and what the global step's
        estimator reads: the batch with each row's quadrature nodes as weighted virtual
        rows, q's parameters there, the noise (the nodes, for free locals)."""
        problem, spec, b = self.problem, self.problem.model, self.capacity
        solver = self.solver(batch.columns, point, b)
        layout = solver.layout
        p = layout.num_nodes
        loc_rows = {v.name: self.rows[f"{v.name}_loc"][batch.indices] for v in spec.free_locals}
        scale_rows = {v.name: pt.softplus(self.rows[f"{v.name}_rho"][batch.indices])
                      for v in spec.free_locals}
        global_mu = self.dense.get("global_mu")  # absent in a model with no Global
        fixed = solver.fixed_values({} if global_mu is None else split_flat(problem, global_mu),
                                    amortized_locations(problem, batch.columns, point))
        loc, log_scale, gain_rows = solver.newton(solver.flat(loc_rows),
                                                  pt.log(solver.flat(scale_rows)), fixed, weights)
        # The global step takes the locals' new q as given: no gradient through the step.
        loc, log_scale = disconnected_grad(loc), disconnected_grad(log_scale)
        new_loc, new_scale = solver.unflat(loc, b), solver.unflat(pt.exp(log_scale), b)
        more_updates = dict(more_updates)
        for v in spec.free_locals:
            rows_loc, rows_rho = self.rows[f"{v.name}_loc"], self.rows[f"{v.name}_rho"]
            # A padded stream batch repeats its first row, whose new value it computes
            # again: assigning it twice writes the same number.
            floatx = float_dtype()
            more_updates[rows_loc] = pt.set_subtensor(rows_loc[batch.indices],
                                                      pt.cast(new_loc[v.name], floatx))
            more_updates[rows_rho] = pt.set_subtensor(rows_rho[batch.indices],
                                                      pt.cast(inv_softplus_pt(new_scale[v.name]),
                                                              floatx))
        real = pt.ones((b,), dtype=float_dtype()) if batch.mask is None else batch.mask
        gain = (problem.total_size / real.sum()) * (real * gain_rows).sum()
        row_weights = pt.repeat(solver.node_weights, b) * tile_rows(real, p)
        virtual = Batch(tile_rows(batch.indices, p), solver.columns_tiled, p * b, row_weights)
        q = QParams(self.dense.get("global_mu"), self.dense.get("global_rho"),
                    {k: tile_rows(a, p) for k, a in new_loc.items()},
                    {k: tile_rows(inv_softplus_pt(a), p) for k, a in new_scale.items()}, point)
        node_noise = solver.unflat(pt.repeat(solver.nodes, b, axis=0), p * b)
        noise = {k: (node_noise[k] if k in node_noise else
                     tile_rows(a, p) if spec[k].role == "local" else a) for k, a in noise.items()}
        self._virtual = (solver, virtual, q, noise)
        return virtual, q, noise, more_updates, gain

    def solver(self, columns: dict, point: dict, rows: int) -> LocalSolver:
        layout = steps_rule.local_layout(self.problem.model, self.rule.rows)
        return LocalSolver(self.problem, layout, self.rule.rows, columns, point, rows)

    def _outputs_and_updates(self, lr, batch: Batch, point: list, stand_ins: dict,
                             more_updates: dict, gain):
        """PyMC's ObjectiveFunction.updates with klqp's optimizer, the step counter's
        increment, the local step's row updates and the history's figures; then the
        global step's curvature steps and averages; the stand-ins then become N-row rows."""
        rule = self.rule
        row_lr = lr
        if rule.row_adam and rule.rows.scale_by_visits:
            row_lr = lr * np.sqrt(self.problem.total_size / self.problem.batch_size)
        row_adam = RowAdam(list(self.rows.values()), self.problem.total_size, row_lr) \
            if self.rows and rule.row_adam else None
        optimizer = KlqpOptimizer(lr, row_adam, list(stand_ins.values()), batch.indices,
                                  batch.mask)
        updates = self.lowered.objective.updates(
            obj_optimizer=optimizer, more_obj_params=point + list(stand_ins.values()),
            more_updates=more_updates, more_replacements=self.lowered.noise_replacements)
        loss = updates.loss
        dense = list(self.dense.values())
        assert len(optimizer.dense) == len(dense) and all(
            a is b for a, b in zip(optimizer.dense, dense)), "pm.adam's order is the layout's"
        self.state_variables = (dense + list(self.rows.values()) + optimizer.adam_state
                                + (row_adam.state_variables() if row_adam else []))
        updates = dict(updates)
        if rule.curvature:
            self._curvature_step(updates, optimizer.grads[self.dense["global_mu"]])
            self.state_variables.append(self.curvature)
            if rule.dense:
                self.state_variables.append(self.curvature_matrix)
        if rule.average:
            mu, scale = updates[self.dense["global_mu"]], pt.softplus(updates[self.dense["global_rho"]])
            for name, value in (("mu", mu), ("scale", scale)):
                updates[self.average[name]] = pt.cast(steps_rule.running_average(
                    pt, self.average[name], value, self.step), float_dtype())
                self.state_variables.append(self.average[name])
        records = self.lowered.records(loss)
        records["local_gain"] = gain
        ok, bad_term, bad_variable = guard.diagnosis(
            pt, records, self._checked(optimizer.grads, updates, stand_ins))
        records["skipped"] = ~ok
        outputs = [pt.cast(records[k], float_dtype()) for k in HISTORY_KEYS] + [
            bad_term, bad_variable, ok]
        targets = list(updates)
        rows = {stand_ins[k]: self.rows[k][batch.indices] for k in stand_ins}
        replaced = graph_replace(outputs + [updates[t] for t in targets], rows, strict=False)
        ok = replaced[len(outputs) - 1]
        updates = {t: self._guarded(t, new, ok)
                   for t, new in zip(targets, replaced[len(outputs):])}
        return replaced[:len(outputs) - 1], updates

    def _checked(self, grads: dict, updates: dict, stand_ins: dict) -> list:
        """For each of ``guard.checked_variables``: the arrays of this step that must be
        finite for it to be applied (its gradients, its new values; a free local's only
        for the batch rows, so the check is O(b))."""
        problem = self.problem
        split = lambda x: split_flat(problem, x) if x is not None else {}
        mu, rho = self.dense.get("global_mu"), self.dense.get("global_rho")
        per_global = [split(grads.get(mu)), split(grads.get(rho)), split(updates.get(mu)),
                      split(updates.get(rho))]
        out = []
        for name in guard.checked_variables(problem.model):
            role = problem.model[name].role
            if role == "global":
                out.append([d[name] for d in per_global if name in d])
            elif role == "param":
                var = self.dense[f"param_{name}"]
                out.append([a for a in (grads.get(var), updates.get(var)) if a is not None])
            else:
                arrays = []
                for key in (f"{name}_loc", f"{name}_rho"):
                    if key in stand_ins:
                        arrays.append(grads[stand_ins[key]])
                    new = updates.get(self.rows[key])
                    if new is not None:
                        arrays.append(_written_rows(new, self.rows[key]))
                out.append(arrays)
        return out

    def _guarded(self, target, new, ok):
        """``new`` where the step is applied (``ok``), else ``target``'s current value. The
        step counter always advances (schedules, batches and noise follow the step); an
        N-row table's update writes its old batch rows back, so the guard stays O(b)."""
        if target is self.step:
            return new
        if _rows_update(new, target):
            node = new.owner
            written, idx = node.inputs[1], node.inputs[2]
            unchanged = target[idx] if node.op.set_instead_of_inc else pt.zeros_like(written)
            return node.op(target, pt.switch(ok, written, unchanged), idx)
        return pt.switch(ok, new, target)

    def _curvature_step(self, updates: dict, grad_mu) -> None:
        """Natural-gradient locations and curvature-set scales (``klqp.steps``) for the
        global numbers whose running curvature is positive; Adam's elsewhere."""
        problem, gs = self.problem, self.rule.globals
        mu, rho = self.dense["global_mu"], self.dense["global_rho"]
        weights = self.lowered.weights
        if self.rule.local_step:
            solver, virtual, q, noise = self._virtual
            row_model, row_weights = solver.row_model, virtual.mask
            local = {k: q.local_loc[k] + pt.softplus(q.local_rho[k]) * noise[k]
                     for k in q.local_loc}
        else:
            batch = self.lowered.operator.batch
            row_model = RowModel(problem, batch.columns, {k: v for k, v in
                                                           self.lowered_point().items()},
                                 batch.capacity)
            row_weights = (pt.ones((batch.capacity,), dtype=float_dtype()) if batch.mask is None
                           else batch.mask)
            local = self._local_draws()
        local.update({k: a for k, a in self._amortized_draws().items()})
        eps = pt.concatenate([self._noise_inputs[v.name].reshape((-1,))
                              for v in problem.model.globals])
        size = int(mu.type.shape[0])
        column = self.step % size
        out = global_curvature(problem, row_model, mu, pt.softplus(rho), eps, self._probe, local,
                               row_weights, weights, antithetic=gs.antithetic,
                               column=column if self.rule.dense else None)
        sample, column_values = out if self.rule.dense else (out, None)
        floatx = float_dtype()
        new_mu, scale, running, matrix = steps_rule.global_update(
            pt, gs, self.step, pt.cast(pt.as_tensor(gs.step_size(self.step, xp=pt)), floatx),
            mu, pt.softplus(rho), ascent=-grad_mu / self.lowered.cost_scale, sample=sample,
            running=self.curvature, beta_global=weights["beta_global"],
            fallback_loc=updates[mu], fallback_scale=pt.softplus(updates[rho]),
            matrix=self.curvature_matrix if self.rule.dense else None, column=column_values)
        if self.rule.dense:
            updates[self.curvature_matrix] = pt.cast(matrix, floatx)
        updates[mu] = pt.cast(new_mu, floatx)
        updates[rho] = pt.cast(inv_softplus_pt(scale), floatx)
        updates[self.curvature] = pt.cast(running, floatx)

    def lowered_point(self) -> dict:
        return {v.name: self.dense[f"param_{v.name}"] for v in self.problem.model.params}

    def _draws(self, amortized: bool) -> dict:
        """The training loss's draw of each free (or amortized) local, per batch row."""
        lowered = self.lowered
        out = {}
        for v in self.problem.model.locals:
            if v.amortized != amortized:
                continue
            rv = lowered.rvs[v.name]
            value = lowered.pm_model.rvs_to_values[rv]
            draw = lowered.approx.symbolic_single_sample(value)
            out[v.name] = lowered.sampled([draw])[0]
        return out

    def _local_draws(self) -> dict:
        return self._draws(amortized=False)

    def _amortized_draws(self) -> dict:
        return self._draws(amortized=True)

    # -- state -----------------------------------------------------------------------------
    def load_state(self, arrays: list, step: int) -> None:
        """Set every state variable (and the step counter): nothing of a previous fit
        that used this compiled step survives."""
        assert len(arrays) == len(self.state_variables)
        for var, a in zip(self.state_variables, arrays):
            var.set_value(np.array(a, dtype=var.dtype, copy=True))
        self.step.set_value(np.int64(step))

    def state_arrays(self) -> list[np.ndarray]:
        """Copies of the state variables, in state_layout's order (FitState.optimizer)."""
        return [np.array(v.get_value(), copy=True) for v in self.state_variables]

    # -- one step ------------------------------------------------------------------------------
    def __call__(self, indices: np.ndarray, noise: list, columns: list, mask=None,
                 probe=None) -> list:
        """Run one step; returns the HISTORY_KEYS figures of the step. ``columns`` in
        ``layout.columns`` order, each with ``capacity`` rows; ``probe``: the curvature's
        (``draw_probe``), needed when the rule has curvature steps."""
        self.lowered.refresh_shared_weights()
        args = [indices, *noise, *columns] + ([] if mask is None else [mask])
        if self.rule.curvature:
            args.append(probe)
        if self._traced:
            return self.fn(*args)
        with quiet_int64_truncation():  # the first call traces a "jax" mode graph
            out = self.fn(*args)
        self._traced = True
        return out


class FinalPass:
    """The local step over all N rows at the reported globals (``klqp.steps``): one
    compiled function of a batch's rows, the globals' location, the point values and the
    step, with no shared state, called b rows at a time."""

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
        layout = steps_rule.local_layout(spec, rule.rows)
        solver = LocalSolver(problem, layout, rule.rows, columns, point, b)
        fixed = solver.fixed_values(split_flat(problem, mu),
                                    amortized_locations(problem, columns, point))
        new_loc, new_log_scale, _ = solver.newton(solver.flat(loc), pt.log(solver.flat(scale)),
                                                  fixed, weights, rule.rows.final_pass)
        locs, scales = solver.unflat(new_loc, b), solver.unflat(pt.exp(new_log_scale), b)
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
        for weight, holder in self.shared:
            holder.set_value(as_float(weight.value, holder.dtype))
        point = [as_float(params[v.name]["value"]) for v in spec.params]
        mu = ([as_float(np.concatenate([np.ravel(params[v.name]["loc"]) for v in spec.globals]))]
              if spec.globals else [])
        out = {k: {"loc": np.empty_like(params[k]["loc"]), "scale": np.empty_like(params[k]["scale"])}
               for k in self.names}
        for start in range(0, n, b):
            rows = np.minimum(np.arange(start, start + b), n - 1)  # the last row repeated
            args = ([as_float(params[k]["loc"][rows]) for k in self.names]
                    + [as_float(params[k]["scale"][rows]) for k in self.names]
                    + [as_column(np.take(problem.data[k], rows, axis=0)) for k in self.column_names]
                    + point + mu + [np.int64(step)])
            with quiet_int64_truncation():
                res = self.fn(*args)
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
        trainer = take_trainer(self.problem, self.config.learning_rate, self.mode, layout,
                               self.rule)
        if trainer is None:
            trainer = Trainer(self.problem, self.config.learning_rate, self.mode, layout,
                              self.rule)
            self.compiles += 1
            self.compile_seconds += trainer.compile_seconds
        trainer.load_state(state, step)
        self.trainer, self.capacity = trainer, trainer.capacity
        return trainer

    def run_steps(self, step: int, count: int, length: int, in_row: int, stop) -> dict:
        """``count`` compiled steps, one call each; ends early on Ctrl-C (``stop``) or
        after ``max_nonfinite`` non-finite steps in a row."""
        problem, seed = self.problem, self.config.seed
        n, b, m = problem.total_size, problem.batch_size, problem.num_batches
        trainer = self.trainer or self.use_trainer(Layout.of(b, problem.data, masked=False), step)
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
        cap = trainer.capacity
        indices = rows if rows is not None else np.arange(size, dtype=np.int64)
        mask = as_float(np.zeros(cap))
        mask[:size] = 1.0
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
                self.final_pass = take_final_pass(self.problem, self.mode, self.rule)
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
            give_back_trainer(self.problem, trainer)
        if self.final_pass is not None:
            give_back_final_pass(self.problem, self.mode, self.rule, self.final_pass)
            self.final_pass = None


def _figures(outs: list) -> dict:
    """Compiled steps' outputs (HISTORY_KEYS, then the non-finite diagnosis) as arrays."""
    keys = [*HISTORY_KEYS, "nonfinite_term", "nonfinite_variable"]
    return {k: np.array([out[i] for out in outs]) for i, k in enumerate(keys)}


def fit(problem: Problem, config: FitConfig, mode: str) -> FitResult:
    """The backend's ``fit``: the core's loop (``klqp.loop.run``) over this backend's
    ``Program``."""
    return loop.run(problem, config, Program(problem, config, mode))


def _rows_update(new, table) -> bool:
    """Whether ``new`` is ``set_subtensor(table[idx], y)`` or ``inc_subtensor(...)`` with
    one integer vector idx: the form of every update of an N-row table here."""
    node = new.owner
    return (node is not None and isinstance(node.op, AdvancedIncSubtensor)
            and node.inputs[0] is table and tuple(node.op.idx_list) == (0,)
            and len(node.inputs) == 3)


def _written_rows(new, table):
    """The batch rows an N-row table's update writes (its increment for an inc), or the
    whole new value when the update has another form."""
    return new.owner.inputs[1] if _rows_update(new, table) else new


def _pad(a: np.ndarray, capacity: int) -> np.ndarray:
    """``a`` padded to ``capacity`` rows by repeating its first row (a valid value, so no
    NaN can leak through a 0 mask)."""
    if len(a) == capacity:
        return a
    return np.concatenate([a, np.repeat(a[:1], capacity - len(a), axis=0)])
