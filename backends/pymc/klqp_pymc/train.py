"""The compiled step on PyMC: one PyTensor function per batch ``Layout`` and step ``Rule``.

The step function is PyMC's: ``ObjectiveFunction.updates`` of the ``KlqpKL`` operator with
``KlqpOptimizer`` (``pm.adam`` for the global group, row-wise Adam for the local rows),
compiled by ``pymc.pytensorf.compile`` in the chosen PyTensor mode. Its inputs are this
step's row indices and noise (and, for a stream, the batch's columns and row mask); its
shared state is q's parameters, the optimizer state, a step counter the schedules read and
one scalar per ``kq.Shared`` weight. So a weight's schedule or value never recompiles.

The state's layout and the host-side randomness fed to the step (and why its rows are not
``pm.Minibatch``'s) are ``klqp_pymc.state``'s; the fit that calls it is ``klqp_pymc.program``'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.conditional import ifelse
from pymc.pytensorf import compile as pm_compile
from pytensor.gradient import disconnected_grad
from pytensor.graph.replace import graph_replace
from pytensor.tensor.subtensor import AdvancedIncSubtensor

from klqp import guard
from klqp.cache import Adoptable
from klqp import steps as steps_rule
from klqp.steps import Rule
from klqp.problem import Problem
from klqp.results import HISTORY_KEYS

from .lowering import lower, weight_tensors
from .modes import compile_kwargs, quiet_int64_truncation
from .optim import KlqpOptimizer, RowAdam
from .state import _size, dense_layout, row_layout
from .steps import LocalSolver, RowModel, global_curvature, split_flat, tile_rows
from .tensors import Batch, QParams, as_float, float_dtype, inv_softplus_pt


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
    can share it. Schedules compare by value; a constant or kq.Shared weight is an input
    (``Weights.compile_key``)."""
    return (mode, float_dtype(), layout, problem.total_size, problem.batch_size,
            problem.weights.compile_key(), problem.scale_cost_to_minibatch, learning_rate, rule)


# -- the compiled step -----------------------------------------------------------------------

class Trainer(Adoptable):
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
        self.curvature_matrix, self.curvature_inverse = [  # the dense step's (d, d) pair
            shared(f"global_curvature_{k}", (d, d)) if self.rule.dense else None
            for k in ("matrix", "inverse")]
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
        lr = pt.cast(pt.as_tensor(learning_rate(self.step, xp=pt)), float_dtype())
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
        solver = LocalSolver(problem, self.rule.rows, batch.columns, point, b)
        p = solver.layout.num_nodes
        loc_rows = {v.name: self.rows[f"{v.name}_loc"][batch.indices] for v in spec.free_locals}
        scale_rows = {v.name: pt.softplus(self.rows[f"{v.name}_rho"][batch.indices])
                      for v in spec.free_locals}
        # global_mu is absent in a model with no Global
        new_loc, new_scale, gain_rows = solver.step(loc_rows, scale_rows,
                                                    self.dense.get("global_mu"), weights)
        # The global step takes the locals' new q as given: no gradient through the step.
        new_loc = {k: disconnected_grad(a) for k, a in new_loc.items()}
        new_scale = {k: disconnected_grad(a) for k, a in new_scale.items()}
        more_updates = dict(more_updates)
        for v in spec.free_locals:
            rows_loc, rows_rho = self.rows[f"{v.name}_loc"], self.rows[f"{v.name}_rho"]
            # A padded stream batch repeats its first row, whose new value it computes
            # again: assigning it twice writes the same number.
            floatx = float_dtype()
            more_updates[rows_loc] = pt.set_subtensor(rows_loc[batch.indices],
                                                      pt.cast(new_loc[v.name], floatx))
            new_rho = pt.cast(inv_softplus_pt(new_scale[v.name]), floatx)
            more_updates[rows_rho] = pt.set_subtensor(rows_rho[batch.indices], new_rho)
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
                self.state_variables += [self.curvature_matrix, self.curvature_inverse]
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
        split = lambda x: split_flat(problem, x)
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
            point = {v.name: self.dense[f"param_{v.name}"] for v in problem.model.params}
            row_model = RowModel(problem, batch.columns, point, batch.capacity)
            row_weights = (pt.ones((batch.capacity,), dtype=float_dtype()) if batch.mask is None
                           else batch.mask)
            local = self._draws(amortized=False)
        local.update(self._draws(amortized=True))
        eps = pt.concatenate([self._noise_inputs[v.name].reshape((-1,))
                              for v in problem.model.globals])
        size = int(mu.type.shape[0])
        column = self.step % size
        out = global_curvature(problem, row_model, mu, pt.softplus(rho), eps, self._probe, local,
                               row_weights, weights, antithetic=gs.antithetic,
                               column=column if self.rule.dense else None, line=True)
        sample, column_values, along = out if self.rule.dense else (out[0], None, out[1])
        floatx = float_dtype()
        new_mu, scale, running, matrix, inverse = steps_rule.global_update(
            pt, gs, self.step, pt.cast(pt.as_tensor(gs.step_size(self.step, xp=pt)), floatx),
            mu, pt.softplus(rho), ascent=-grad_mu / self.lowered.cost_scale, sample=sample,
            running=self.curvature, beta_global=weights["beta_global"],
            fallback_loc=updates[mu], fallback_scale=pt.softplus(updates[rho]),
            matrix=self.curvature_matrix, column=column_values, inverse=self.curvature_inverse,
            curvature_along=along, floor=as_float(steps_rule.prior_curvature(problem.model)),
            when=lambda ok, compute, keep: ifelse(ok, pt.cast(compute(), keep.dtype), keep))
        if self.rule.dense:
            updates[self.curvature_matrix] = pt.cast(matrix, floatx)
            updates[self.curvature_inverse] = inverse
        updates[mu] = pt.cast(new_mu, floatx)
        updates[rho] = pt.cast(inv_softplus_pt(scale), floatx)
        updates[self.curvature] = pt.cast(running, floatx)

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
        args = [indices, *noise, *columns] + ([] if mask is None else [mask])
        if self.rule.curvature:
            args.append(probe)
        if self._traced:
            return self.fn(*args)
        with quiet_int64_truncation():  # the first call traces a "jax" mode graph
            out = self.fn(*args)
        self._traced = True
        return out


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
