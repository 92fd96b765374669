"""The compiled step on NumPyro/JAX: one jitted update, run by a fused ``lax.scan`` over
chunks (``klqp_numpyro.program`` drives it for one fit; ``klqp_numpyro.storage`` says
where the row table and the data live).

Each step takes its minibatch as a slice of its epoch's row order
(``klqp.training.epoch_order``: one NumPy shuffle per epoch, made on the host and handed
to each chunk; the PyMC backend takes the same rows), draws the noise from
``fold_in(key, step)``, evaluates every weight's schedule at the traced step, and
applies the step rule (``klqp.steps``); a chunk of steps is one compiled call, and the
core's loop (``klqp.loop``) handles progress, callbacks and Ctrl-C between chunks.
Because the minibatch and the noise depend only on (seed, step), a resumed run
continues the random stream of an unbroken one.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from klqp import guard, objective
from klqp.problem import FitConfig, Problem
from klqp.training import epoch_order
from klqp.results import HISTORY_KEYS

from klqp import steps as rule

from .optim import RowAdamState, row_adam_update
from .state import (OptState, _as_params, _runtime_weights, _weights_at, draw_noise, draw_probe,
                    named_state)
from .storage import storage_for
from .steps import Stepper, softplus_inverse

class Trainer:
    """Holds the jitted update for one problem; counts how often JAX traced it."""

    def __init__(self, problem: Problem, config: FitConfig, place=None, host=None):
        self.problem = problem
        # where the N-row table and the data live (klqp_numpyro.storage): one device, a
        # mesh (place: a sharding.Placement) or host memory (host: a host_table.HostTable)
        self.storage = storage_for(place, host)
        self.rows = self.storage.rows
        self.learning_rate = config.learning_rate  # a schedule: evaluated at the traced step
        self.rows_rule = config.local_step
        self.global_rule = config.global_step
        self.stepper = Stepper(problem, config.local_step, config.global_step)
        self.checked_names = guard.checked_variables(problem.model)
        self.max_nonfinite = config.max_nonfinite
        self.optimizer = optax.scale_by_adam()
        self.trace_counts = collections.Counter()
        self._chunk = jax.jit(self._run_chunk, static_argnames=("length",))
        self._orders: dict = {}  # (seed, epoch) -> row order, the few epochs in use
        # A streamed step donates the state it replaces: without it, each step would copy
        # the N-row table (O(N) a step; 10x slower at N = 5M).
        self._step = jax.jit(self._stream_step, donate_argnums=(0, 1))
        self._final = jax.jit(self._final_pass)

    # -- kept across fits (klqp.cache) -------------------------------------------------
    def adopt(self, problem: Problem) -> "Trainer":
        """This compiled trainer for ``problem``, a problem of the same structure as the
        one it was compiled for (equal ``trainer_key``): only its data differ, and the
        data are arguments of the compiled programs."""
        self.problem = self.stepper.problem = problem
        self._data, self._orders = None, {}
        return self

    def release(self) -> "Trainer":
        """Drop the fit's data before the trainer waits in the cache."""
        self._data, self._orders = None, {}
        return self

    # -- the update of one step -------------------------------------------------------
    def init_state(self, variables):
        """(Adam state of the dense variables, row-wise Adam state or None, the global
        step's state: running curvature and averages)."""
        model, st = self.problem.model, self.stepper
        globals_ = {v.name: variables["dense"][v.name] for v in model.globals}
        extra = {}
        if st.curvature:  # the diagonal's running average; with dense_max, the whole matrix
            extra["curvature"] = {"diagonal": {k: jnp.zeros_like(p["loc"])
                                               for k, p in globals_.items()}}
            if st.dense:
                extra["curvature"]["matrix"] = jnp.zeros((st.global_size, st.global_size))
                extra["curvature"]["inverse"] = jnp.zeros((st.global_size, st.global_size))
        if st.average:
            extra["loc"] = {k: jnp.copy(p["loc"]) for k, p in globals_.items()}  # own buffers:
            # a streamed step donates its state, and a buffer may be donated only once
            extra["scale"] = {k: jax.nn.softplus(p["raw_scale"]) for k, p in globals_.items()}
        rows = None
        if self.stepper.rule.row_adam:  # made where the table lives (own buffers each)
            table = self.storage.new_table
            zeros = lambda: jax.tree.map(lambda a: table(np.zeros(a.shape, a.dtype)),  # noqa: E731
                                         variables["rows"])
            rows = RowAdamState(table(np.zeros(self.problem.total_size, np.int32)), zeros(),
                                zeros())
        return OptState(self.optimizer.init(variables["dense"]), rows, extra)

    def update(self, variables, opt_state, batch, indices, key, step, runtime_weights, active=True):
        """One step on one minibatch (``klqp.steps``): the local step on the batch's rows,
        then the global step on the same batch. Locals are gathered to the batch rows, so
        their work is O(b), not O(N). ``active=False`` (traced) computes the step but
        keeps the state."""
        problem, st = self.problem, self.stepper
        n = problem.total_size
        w = _weights_at(problem, step, runtime_weights)
        b = indices.shape[0]
        s = objective.cost_scale(n, b, problem.scale_cost_to_minibatch)
        local_names = {v.name for v in problem.model.latents if v.role == "local"}
        noise = {k: self.rows.batch(z) if k in local_names else z
                 for k, z in draw_noise(problem, key, b).items()}
        dense_state, row_state, global_state = opt_state
        dense = variables["dense"]
        rows = old_rows = lax.optimization_barrier(  # gathered once (see draw_noise)
            jax.tree.map(lambda a: self.rows.take(a, indices), variables["rows"]))
        gain = jnp.zeros(())
        if st.layout is not None:
            new_rows, gain_rows = st.local_update(_as_params(dense), _as_params(rows), batch, w)
            rows = {k: {"loc": r["loc"], "raw_scale": softplus_inverse(r["scale"])}
                    for k, r in new_rows.items()}
            gain = n / b * gain_rows.sum()
        stl = st.rule.stl

        def loss_of(dense, rows):
            t = st.training_terms(_as_params({**dense, **rows}), batch, noise, stl=stl)
            return objective.loss(t, cost_scale=s, **w), t.values()

        argnums = (0, 1) if st.layout is None else 0
        (loss, aux), grads = jax.value_and_grad(loss_of, argnums=argnums, has_aux=True)(dense, rows)
        g_dense, g_rows = grads if st.layout is None else (grads, None)
        t = objective.Terms(*aux)
        lr = self.learning_rate(step, xp=jnp)
        updates, new_dense_state = self.optimizer.update(g_dense, dense_state, dense)
        new_dense = jax.tree.map(lambda p, u: p - lr * u, dense, updates)
        new_global = self._global_step(dense, new_dense, g_dense, global_state, rows, batch, noise,
                                       w, s, step, key)
        if st.curvature:
            new_dense = {**new_dense, **new_global.pop("dense")}
        # A step with a non-finite loss, term, gradient or new value is not applied
        # (klqp.guard): ``apply`` selects old or new values, all inside the compiled step.
        # The barrier keeps XLA from fusing each new value's computation into the guard's
        # reductions as well as into the state (a second copy of the step to compile).
        loss, terms, g_dense, g_rows, new_dense, rows = lax.optimization_barrier(
            (loss, t.values(), g_dense, g_rows, new_dense, rows))
        t = objective.Terms(*terms)
        figures = {"loss": loss, "loglik": t.loglik, "kl_global": t.kl_global,
                   "kl_local": t.kl_local, "potential": t.potential}
        checked = [jax.tree.leaves((g_dense[k], new_dense[k])) if k in g_dense else
                   jax.tree.leaves(rows[k]) + ([] if g_rows is None else jax.tree.leaves(g_rows[k]))
                   for k in self.checked_names]
        ok, bad_term, bad_variable = guard.diagnosis(jnp, figures, checked)
        apply = jnp.logical_and(active, ok)
        keep = lambda new, old: jnp.where(apply, new, old)  # not the N-row arrays: O(size)
        new_dense = jax.tree.map(keep, new_dense, dense)
        new_dense_state = jax.tree.map(keep, new_dense_state, dense_state)
        new_global = jax.tree.map(keep, new_global, global_state)
        if self.stepper.rule.row_adam:
            row_lr = lr * (np.sqrt(n / problem.batch_size) if self.rows_rule.scale_by_visits
                           else 1.0)
            table, row_state = row_adam_update(g_rows, row_state, variables["rows"], indices,
                                               row_lr, apply, rows=self.rows)
        elif st.layout is None:  # no free locals
            table = variables["rows"]
        else:
            table = jax.tree.map(lambda full, r, old: self.rows.put(full, indices, keep(r, old)),
                                 variables["rows"], rows, old_rows)
        record = {"loss": loss, "elbo": objective.elbo(t), "loglik": t.loglik,
                  "kl_global": jnp.asarray(t.kl_global), "kl_local": jnp.asarray(t.kl_local),
                  "potential": jnp.asarray(t.potential), "local_gain": gain, "skipped": jnp.logical_and(active, ~ok), **w}
        record = {k: jnp.asarray(record[k], jnp.result_type(float)) for k in HISTORY_KEYS}
        record.update(nonfinite_term=bad_term, nonfinite_variable=bad_variable)
        return ({"dense": new_dense, "rows": table},
                OptState(new_dense_state, row_state, new_global), record)

    def _global_step(self, dense, adam_dense, g_dense, global_state, rows, batch, noise, w, s,
                     step, key) -> dict:
        """The global step's own state (and, with curvature, the globals' new q under
        "dense"): natural-gradient locations and curvature-set scales where the running
        curvature is positive, Adam's values elsewhere; then the running averages."""
        st, gs = self.stepper, self.global_rule
        model = self.problem.model
        out = {}
        new_globals = {v.name: adam_dense[v.name] for v in model.globals}
        if st.curvature:
            params = _as_params({**dense, **rows})
            flat, unflat = st.flat_globals, st.unflat_globals
            probe = draw_probe(self.problem, key)
            curvature = global_state["curvature"]
            if st.dense:
                sample, column, along = st.global_curvature(
                    params, batch, noise, w, probe=probe, column=step % st.global_size,
                    line=True)
            else:
                (sample, along), column = st.global_curvature(params, batch, noise, w,
                                                              probe=probe, line=True), None
            loc, raw = ({k: p[part] for k, p in dense.items() if k in new_globals}
                        for part in ("loc", "raw_scale"))
            fallback = {part: {k: adam_dense[k][part] for k in new_globals}
                        for part in ("loc", "raw_scale")}
            new_loc, new_scale, running, matrix, inverse = rule.global_update(
                jnp, gs, step, gs.step_size(step, xp=jnp), flat(loc),
                flat(jax.tree.map(jax.nn.softplus, raw)),
                ascent=flat({k: -g_dense[k]["loc"] / s for k in new_globals}),
                sample=flat(sample), running=flat(curvature["diagonal"]),
                beta_global=w["beta_global"], fallback_loc=flat(fallback["loc"]),
                fallback_scale=flat(jax.tree.map(jax.nn.softplus, fallback["raw_scale"])),
                matrix=curvature.get("matrix"), column=column, inverse=curvature.get("inverse"),
                when=lambda ok, compute, keep: jax.lax.cond(ok, compute, lambda: keep),
                curvature_along=along, floor=jnp.asarray(rule.prior_curvature(model)))
            out["curvature"] = {"diagonal": unflat(running)}
            if st.dense:
                out["curvature"].update(matrix=matrix, inverse=inverse)
            new_loc, new_scale = unflat(new_loc), unflat(new_scale)
            out["dense"] = {k: {"loc": new_loc[k], "raw_scale": softplus_inverse(new_scale[k])}
                            for k in new_globals}
            new_globals.update(out["dense"])
        if st.average:
            out["loc"] = {k: rule.running_average(jnp, global_state["loc"][k], p["loc"], step)
                          for k, p in new_globals.items()}
            out["scale"] = {k: rule.running_average(jnp, global_state["scale"][k],
                                                    jax.nn.softplus(p["raw_scale"]), step)
                            for k, p in new_globals.items()}
        return out

    def device_data(self) -> dict:
        """The in-memory columns where the compiled chunk reads them (moved once a fit)."""
        if getattr(self, "_data", None) is None:
            self._data = self.storage.data(self.problem.data)
        return self._data

    # -- what a fit reports ---------------------------------------------------------------
    def reported_params(self, variables, opt_state, data, step: int, runtime_weights) -> dict:
        """q as the fit reports it (``klqp.steps``): the globals' averaged iterates, the
        locals after the final pass at those globals (in-memory data only)."""
        st, n = self.stepper, self.problem.total_size
        params = {**_as_params(variables["dense"], self.storage.to_host),
                  **self.storage.row_params(variables["rows"], n)}
        global_state = opt_state.global_step
        if st.average:
            for k in global_state["loc"]:
                params[k] = {"loc": np.asarray(global_state["loc"][k], dtype=float),
                             "scale": np.asarray(global_state["scale"][k], dtype=float)}
        if st.layout is not None and data is not None and self.rows_rule.final_pass:
            dense = {k: jax.tree.map(jnp.asarray, p) for k, p in params.items()
                     if k not in st.layout.names}
            at = jnp.asarray(max(step - 1, 0))
            final = self.storage.final_pass(
                lambda d, table, columns: self._final(d, table, columns, at, runtime_weights),
                dense, variables["rows"], data, n, self.problem.batch_size)
            for k, p in final.items():
                params[k] = {q: self.storage.to_host(a, n) for q, a in p.items()}
        return params

    # -- where the state lives (klqp_numpyro.storage) -------------------------------------
    def place_state(self, variables, opt_state):
        """(variables, optimizer state) where the storage keeps them: row tables on the
        host, row-sharded on a mesh, the rest replicated; one device: as they are."""
        placed = self.storage.place({"dense": variables["dense"], "rows": variables["rows"],
                                     **opt_state._asdict()}, tables={"rows", "row_adam"})
        return ({"dense": placed.pop("dense"), "rows": placed.pop("rows")}, OptState(**placed))

    def state_arrays(self, variables, opt_state) -> dict:
        """The state as named host arrays ({"q/dense/theta/loc": ..., "adam/mu/...": ...})
        with N-row tables (the same on any number of devices, so a checkpoint resumes on
        another)."""
        n, copy = self.problem.total_size, self.storage.copy_to_host
        host = lambda t, rows=False: jax.tree.map(lambda a: copy(a, n if rows else None), t)  # noqa: E731
        return named_state({"dense": host(variables["dense"]), "rows": host(variables["rows"], True)},
                           OptState(host(opt_state.adam), host(opt_state.row_adam, True),
                                    host(opt_state.global_step)), np.asarray)

    def _final_pass(self, dense_params, table, data, step, runtime_weights):
        """The local step over all N rows, b at a time, at the reported globals."""
        self.trace_counts["final_pass"] += 1
        problem, st = self.problem, self.stepper
        n, b = next(iter(data.values())).shape[0], problem.batch_size  # all rows, or a block
        w = _weights_at(problem, step, runtime_weights)
        chunks = -(-n // b)
        order = jnp.minimum(jnp.arange(chunks * b), n - 1).reshape(chunks, b)  # last row repeated
        table = _as_params(table)

        def chunk(idx):
            columns, rows = lax.optimization_barrier((  # gathered once (see draw_noise)
                {k: self.rows.take(v, idx) for k, v in data.items()},
                jax.tree.map(lambda a: self.rows.take(a, idx), table)))
            new, _ = st.local_update(dense_params, rows, columns, w, self.rows_rule.final_pass)
            return new

        out = lax.map(chunk, order)
        return jax.tree.map(lambda a: a.reshape((chunks * b,) + a.shape[2:])[:n], out)

    # -- in-memory data: a chunk of steps as one scan ----------------------------------
    def chunk_rows(self, seed: int, step0: int, length: int) -> np.ndarray:
        """The (length, b) row numbers of steps step0 .. step0+length-1
        (``klqp.training.epoch_order``: step t takes slice t mod M of its epoch's order),
        made on the host, each epoch's order once; steps past the run's end (the last
        chunk is padded to one length, so it never recompiles) take valid rows too."""
        m, n, b = self.problem.num_batches, self.problem.total_size, self.problem.batch_size
        epochs = range(step0 // m, (step0 + length - 1) // m + 1)
        self._orders = {(seed, e): self._orders.get((seed, e)) for e in epochs}  # keep these
        for key, order in self._orders.items():
            if order is None:
                self._orders[key] = epoch_order(seed, key[1], n).astype(np.int32)
        out = np.empty((length, b), np.int32)
        for i, t in enumerate(range(step0, step0 + length)):
            epoch, pos = divmod(t, m)
            out[i] = self._orders[(seed, epoch)][pos * b:(pos + 1) * b]
        return out

    def _run_chunk(self, carry, data, key, step0, n_active, runtime_weights, batch_rows, *, length):
        """``length`` steps as one lax.scan; step step0+i takes the rows ``batch_rows[i]``
        (from ``chunk_rows``). ``carry`` also counts the non-finite steps in a row; at
        ``max_nonfinite`` the rest of the chunk applies nothing."""
        self.trace_counts["chunk"] += 1
        noise_key = jax.random.split(key)[1]

        def body(carry, i):
            variables, opt_state, in_row = carry
            step = step0 + i
            idx = batch_rows[i]
            batch = lax.optimization_barrier({k: self.rows.take(v, idx) for k, v in data.items()})
            # Steps past the end of the run leave the state as it was.
            active = jnp.logical_and(i < n_active, in_row < self.max_nonfinite)
            new_vars, new_state, record = self.update(
                variables, opt_state, batch, idx, jax.random.fold_in(noise_key, step), step,
                runtime_weights, active=active)
            in_row = jnp.where(active, jnp.where(record["skipped"] > 0, in_row + 1, 0), in_row)
            return (new_vars, new_state, in_row), record

        return lax.scan(body, carry, jnp.arange(length))

    def chunk_arguments(self, run, key, n_active: int, length: int) -> tuple:
        """The arguments of ``_chunk`` for the run's next chunk (also what
        ``compiled_chunk`` lowers), as the storage hands them over."""
        variables, opt_state, data, rows = self.storage.chunk_inputs(
            run.variables, run.opt_state, self.device_data(),
            self.chunk_rows(run.config.seed, run.step, length), self.problem.total_size)
        return ((variables, opt_state, jnp.asarray(run.in_row)), data, key,
                jnp.asarray(run.step), jnp.asarray(n_active), _runtime_weights(self.problem), rows)

    def chunk_result(self, run, variables, opt_state) -> tuple:
        """(variables, optimizer state) after a chunk (a host table gets its rows back)."""
        return self.storage.chunk_outputs(run.variables, run.opt_state, variables, opt_state)

    def compiled_chunk(self, run, key, length: int):
        """The chunk of ``length`` steps as XLA compiled it (``.as_text()`` is its HLO):
        what a test reads to see which collectives a sharded fit runs."""
        return self._chunk.lower(*self.chunk_arguments(run, key, length, length),
                                 length=length).compile()

    # -- streamed batches: one jitted step per batch ------------------------------------
    def _stream_step(self, variables, opt_state, batch, indices, key, step, runtime_weights):
        self.trace_counts["stream_step"] += 1
        return self.update(variables, opt_state, batch, indices, key, step, runtime_weights)
