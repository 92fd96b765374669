"""Training on NumPyro/JAX: one jitted update, run by a fused ``lax.scan`` over chunks.

In-memory data lives on the device. Each step takes its minibatch as a slice of its
epoch's row order (``klqp.training.epoch_order``: one NumPy shuffle per epoch, made on
the host and handed to each chunk; the PyMC backend takes the same rows), draws the
noise from ``fold_in(key, step)``, evaluates every weight's schedule at the traced
step, and applies Adam; a chunk of steps is one compiled call, and the progress bar,
callbacks and Ctrl-C are handled between chunks. Because the minibatch and the noise
depend only on (seed, step), a resumed run continues the random stream of an
unbroken one.
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from klqp import guard, loop, objective, transforms
from klqp.cache import backend_cache, structure_key
from klqp.objective import Shared
from klqp.problem import FitConfig, Problem, init_params
from klqp.training import epoch_order
from klqp.results import HISTORY_KEYS, FitResult

from klqp import steps as rule

from .host_table import HostTable, compact_rows
from .optim import RowAdamState, row_adam_init, row_adam_update
from .sharding import RowsHere
from .steps import Stepper, softplus_inverse

_NAME = "numpyro"


def _weights_at(problem: Problem, step, shared_values: dict) -> dict:
    """Every weight at ``step`` (traced): schedules are evaluated with jnp; a Shared weight
    comes in as a traced argument, so changing it recompiles nothing."""
    out = {}
    for name, w in problem.weights.items():
        out[name] = shared_values[name] if isinstance(w, Shared) else w(step, xp=jnp)
    return out


def _shared_values(problem: Problem) -> dict:
    return {name: jnp.asarray(w.value) for name, w in problem.weights.items()
            if isinstance(w, Shared)}


class OptState(NamedTuple):
    """The optimizers' state of a fit, by name (checkpoints store it by these names)."""

    adam: Any         # optax's scale_by_adam state of the "dense" variables (globals, Params)
    row_adam: Any     # kq.RowAdam's RowAdamState of the free locals' N-row table, or None
    global_step: dict  # the global step's running curvature and averages ({} when off)


def state_names(variables, opt_state) -> list[str]:
    """Each state array's name: its path in {"q": variables, **opt_state's fields} as
    "a/b/c" (dict keys, NamedTuple fields), e.g. "q/dense/theta/loc", "adam/mu/theta/loc",
    "global_step/curvature/diagonal/theta"."""
    def part(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)
    tree = {"q": variables, **opt_state._asdict()}
    return ["/".join(part(k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def named_state(variables, opt_state, to_array) -> dict:
    """{name: array} of the state (``state_names``)."""
    tree = {"q": variables, **opt_state._asdict()}
    return dict(zip(state_names(variables, opt_state),
                    (to_array(a) for a in jax.tree.leaves(tree))))


def draw_noise(problem: Problem, key, b: int) -> dict:
    keys = jax.random.split(key, max(1, len(problem.model.latents)))
    return {v.name: jax.random.normal(k, ((b,) if v.role == "local" else ()) + tuple(v.shape))
            for k, v in zip(keys, problem.model.latents)}


def draw_probe(problem: Problem, key):
    """The global curvature's Rademacher probe ({global: +-1 of its shape}) of the step with
    ``key``: a key of its own, so the latents' noise is that of a fit without it."""
    keys = jax.random.split(jax.random.fold_in(key, 0x9E37), max(1, len(problem.model.globals)))
    return {v.name: jax.random.rademacher(k, tuple(v.shape), dtype=jnp.result_type(float))
            for k, v in zip(keys, problem.model.globals)}


class Trainer:
    """Holds the jitted update for one problem; counts how often JAX traced it."""

    def __init__(self, problem: Problem, config: FitConfig, place=None, host=None):
        self.problem = problem
        self.place = place  # klqp_numpyro.sharding.Placement, or None: one device
        self.host = host    # klqp_numpyro.host_table.HostTable: the row table in host memory
        self.rows = place.rows if place is not None else RowsHere()
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
        if st.average:
            extra["loc"] = {k: jnp.copy(p["loc"]) for k, p in globals_.items()}  # own buffers:
            # a streamed step donates its state, and a buffer may be donated only once
            extra["scale"] = {k: jax.nn.softplus(p["raw_scale"]) for k, p in globals_.items()}
        rows = None
        if self.stepper.rule.row_adam:
            if self.host is not None:  # made on the host: the table may not fit the device
                zeros = lambda: jax.tree.map(np.zeros_like, variables["rows"])  # noqa: E731
                rows = RowAdamState(np.zeros(self.problem.total_size, np.int32), zeros(), zeros())
            else:
                rows = row_adam_init(variables["rows"], self.problem.total_size)
        return OptState(self.optimizer.init(variables["dense"]), rows, extra)

    def update(self, variables, opt_state, batch, indices, key, step, shared_values, active=True):
        """One step on one minibatch (``klqp.steps``): the local step on the batch's rows,
        then the global step on the same batch. Locals are gathered to the batch rows, so
        their work is O(b), not O(N). ``active=False`` (traced) computes the step but
        keeps the state."""
        problem, st = self.problem, self.stepper
        n = problem.total_size
        w = _weights_at(problem, step, shared_values)
        b = indices.shape[0]
        s = objective.cost_scale(n, b, problem.scale_cost_to_minibatch)
        local_names = {v.name for v in problem.model.latents if v.role == "local"}
        noise = {k: self.rows.batch(z) if k in local_names else z
                 for k, z in draw_noise(problem, key, b).items()}
        dense_state, row_state, global_state = opt_state
        dense = variables["dense"]
        rows = old_rows = jax.tree.map(lambda a: self.rows.take(a, indices), variables["rows"])
        gain = jnp.zeros(())
        if st.layout is not None:
            new_rows, gain_rows = st.local_update(_as_params(dense), _as_params(rows), batch, w)
            rows = {k: {"loc": r["loc"], "raw_scale": softplus_inverse(r["scale"])}
                    for k, r in new_rows.items()}
            gain = n / b * gain_rows.sum()
        stl = st.rule.stl

        def loss_of(dense, rows):
            t = st.training_terms(_as_params({**dense, **rows}), batch, noise, stl=stl)
            return objective.loss(t, cost_scale=s, **w), (t.loglik, t.kl_global, t.kl_local)

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
        figures = {"loss": loss, "loglik": t.loglik, "kl_global": t.kl_global,
                   "kl_local": t.kl_local}
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
                  "local_gain": gain, "skipped": jnp.logical_and(active, ~ok), **w}
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
            sample, column = (st.global_curvature(params, batch, noise, w, probe=probe,
                                                  column=step % st.global_size) if st.dense
                              else (st.global_curvature(params, batch, noise, w, probe=probe),
                                    None))
            loc, raw = ({k: p[part] for k, p in dense.items() if k in new_globals}
                        for part in ("loc", "raw_scale"))
            fallback = {part: {k: adam_dense[k][part] for k in new_globals}
                        for part in ("loc", "raw_scale")}
            new_loc, new_scale, running, matrix = rule.global_update(
                jnp, gs, step, gs.step_size(step, xp=jnp), flat(loc),
                flat(jax.tree.map(jax.nn.softplus, raw)),
                ascent=flat({k: -g_dense[k]["loc"] / s for k in new_globals}),
                sample=flat(sample), running=flat(curvature["diagonal"]),
                beta_global=w["beta_global"], fallback_loc=flat(fallback["loc"]),
                fallback_scale=flat(jax.tree.map(jax.nn.softplus, fallback["raw_scale"])),
                matrix=curvature.get("matrix"), column=column)
            out["curvature"] = {"diagonal": unflat(running)}
            if st.dense:
                out["curvature"]["matrix"] = matrix
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
        """The in-memory columns on the device (moved once per trainer)."""
        if self.host is not None:
            return self.problem.data  # on the host: each chunk moves its rows
        if getattr(self, "_data", None) is None:
            place = self.place.table if self.place is not None else jnp.asarray
            self._data = {k: place(v) for k, v in self.problem.data.items()}
        return self._data

    # -- what a fit reports ---------------------------------------------------------------
    def reported_params(self, variables, opt_state, data, step: int, shared_values) -> dict:
        """q as the fit reports it (``klqp.steps``): the globals' averaged iterates, the
        locals after the final pass at those globals (in-memory data only)."""
        st = self.stepper
        host_rows = lambda a: self.to_host(a, rows=True)
        params = {**_as_params(variables["dense"], self.to_host),
                  **(_as_params(variables["rows"], host_rows) if self.host is None
                     else _host_params(variables["rows"]))}
        global_state = opt_state.global_step
        if st.average:
            for k in global_state["loc"]:
                params[k] = {"loc": np.asarray(global_state["loc"][k], dtype=float),
                             "scale": np.asarray(global_state["scale"][k], dtype=float)}
        if st.layout is not None and data is not None and self.rows_rule.final_pass:
            dense = {k: jax.tree.map(jnp.asarray, p) for k, p in params.items()
                     if k not in st.layout.names}
            at = jnp.asarray(max(step - 1, 0))
            final = (self._final(dense, variables["rows"], data, at, shared_values)
                     if self.host is None else
                     self._final_on_host(dense, variables["rows"], data, at, shared_values))
            for k, p in final.items():
                params[k] = {q: self.to_host(a, rows=True) for q, a in p.items()}
        return params

    def _final_on_host(self, dense_params, table, data, step, shared_values,
                       block_batches: int = 64) -> dict:
        """The final pass of a host-resident table: blocks of rows moved to the device
        (one block size, so one compile), their new q written to host arrays."""
        n, b = self.problem.total_size, self.problem.batch_size
        block = min(n, b * block_batches)
        out = None
        for lo in range(0, n, block):
            idx = np.minimum(np.arange(lo, lo + block), n - 1)
            new = self._final(dense_params, HostTable.gather(table, idx),
                              {k: jnp.asarray(np.asarray(v[idx])) for k, v in data.items()},
                              step, shared_values)
            if out is None:
                out = jax.tree.map(lambda a: np.empty((n,) + a.shape[1:]), new)
            hi = min(lo + block, n)
            jax.tree.map(lambda full, a: full.__setitem__(slice(lo, hi), np.asarray(a)[:hi - lo]),
                         out, new)
        return out

    # -- where the state lives ------------------------------------------------------------
    def to_host(self, a, rows: bool = False) -> np.ndarray:
        """A device array as float host NumPy (gathered from every process when sharded);
        ``rows``: an N-row table, its padding cut."""
        a = self.place.to_host(a) if self.place is not None else np.asarray(a)
        a = a[:self.problem.total_size] if rows else a
        return a.astype(float) if np.issubdtype(a.dtype, np.floating) else a

    def place_state(self, variables, opt_state):
        """(variables, optimizer state) on the mesh: row tables row-sharded, the rest
        replicated. One device: as they are."""
        if self.host is not None:
            dense_state, row_state, extra = opt_state
            return ({"dense": variables["dense"], "rows": self.host.adopt(variables["rows"])},
                    OptState(dense_state, None if row_state is None else
                             self.host.adopt(row_state), extra))
        if self.place is None:
            return variables, opt_state
        tables, one = self.place.table, self.place.replicate
        dense_state, row_state, extra = opt_state
        placed = {"dense": jax.tree.map(one, variables["dense"]),
                  "rows": jax.tree.map(tables, variables["rows"])}
        return placed, OptState(jax.tree.map(one, dense_state),
                                None if row_state is None else jax.tree.map(tables, row_state),
                                jax.tree.map(one, extra))

    def state_arrays(self, variables, opt_state) -> dict:
        """The state as named host arrays ({"q/dense/theta/loc": ..., "adam/mu/...": ...})
        with N-row tables (the same on any number of devices, so a checkpoint resumes on
        another)."""
        if self.place is None:  # copies: a host table's memmaps go on changing
            return named_state(variables, opt_state, np.array)
        dense_state, row_state, extra = opt_state
        host = lambda t, rows=False: jax.tree.map(lambda a: self.place.to_host(a)[
            :self.problem.total_size] if rows else self.place.to_host(a), t)
        return named_state({"dense": host(variables["dense"]), "rows": host(variables["rows"], True)},
                           OptState(host(dense_state), None if row_state is None else
                                    host(row_state, True), host(extra)), np.asarray)

    def _final_pass(self, dense_params, table, data, step, shared_values):
        """The local step over all N rows, b at a time, at the reported globals."""
        self.trace_counts["final_pass"] += 1
        problem, st = self.problem, self.stepper
        n, b = next(iter(data.values())).shape[0], problem.batch_size  # all rows, or a block
        w = _weights_at(problem, step, shared_values)
        chunks = -(-n // b)
        order = jnp.minimum(jnp.arange(chunks * b), n - 1).reshape(chunks, b)  # last row repeated
        table = _as_params(table)

        def chunk(idx):
            columns = {k: self.rows.take(v, idx) for k, v in data.items()}
            rows = jax.tree.map(lambda a: self.rows.take(a, idx), table)
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

    def _run_chunk(self, carry, data, key, step0, n_active, shared_values, batch_rows, *, length):
        """``length`` steps as one lax.scan; step step0+i takes the rows ``batch_rows[i]``
        (from ``chunk_rows``). ``carry`` also counts the non-finite steps in a row; at
        ``max_nonfinite`` the rest of the chunk applies nothing."""
        self.trace_counts["chunk"] += 1
        noise_key = jax.random.split(key)[1]

        def body(carry, i):
            variables, opt_state, in_row = carry
            step = step0 + i
            idx = batch_rows[i]
            batch = {k: self.rows.take(v, idx) for k, v in data.items()}
            # Steps past the end of the run leave the state as it was.
            active = jnp.logical_and(i < n_active, in_row < self.max_nonfinite)
            new_vars, new_state, record = self.update(
                variables, opt_state, batch, idx, jax.random.fold_in(noise_key, step), step,
                shared_values, active=active)
            in_row = jnp.where(active, jnp.where(record["skipped"] > 0, in_row + 1, 0), in_row)
            return (new_vars, new_state, in_row), record

        return lax.scan(body, carry, jnp.arange(length))

    def chunk_arguments(self, run, key, n_active: int, length: int) -> tuple:
        """The arguments of ``_chunk`` for the run's next chunk (also what
        ``compiled_chunk`` lowers)."""
        rows = self.chunk_rows(run.config.seed, run.step, length)
        if self.host is not None:
            return self._host_chunk_arguments(run, key, n_active, rows)
        rows = self.place.replicate(rows) if self.place is not None else jnp.asarray(rows)
        return ((run.variables, run.opt_state, jnp.asarray(run.in_row)), self.device_data(),
                key, jnp.asarray(run.step), jnp.asarray(n_active),
                _shared_values(self.problem), rows)

    def _host_chunk_arguments(self, run, key, n_active: int, rows: np.ndarray) -> tuple:
        """A host-resident table's chunk: the rows it touches, gathered into a compact
        table of fixed size, and its row numbers renumbered into it."""
        unique, count, at = compact_rows(rows, min(rows.size, self.problem.total_size))
        self._moved = (unique, count)
        dense_state, row_state, extra = run.opt_state
        variables = {"dense": run.variables["dense"],
                     "rows": HostTable.gather(run.variables["rows"], unique)}
        row_state = None if row_state is None else HostTable.gather(row_state, unique)
        data = {k: jnp.asarray(np.asarray(v[unique])) for k, v in self.problem.data.items()}
        return ((variables, OptState(dense_state, row_state, extra), jnp.asarray(run.in_row)),
                data, key, jnp.asarray(run.step), jnp.asarray(n_active),
                _shared_values(self.problem), jnp.asarray(at))

    def chunk_result(self, run, variables, opt_state) -> tuple:
        """(variables, optimizer state) after a chunk: a host-resident table gets its
        compact rows written back."""
        if self.host is None:
            return variables, opt_state
        unique, count = self._moved
        dense_state, row_state, extra = opt_state
        HostTable.write_back(run.variables["rows"], unique, count, variables["rows"])
        if row_state is not None:
            HostTable.write_back(run.opt_state.row_adam, unique, count, row_state)
        return ({"dense": variables["dense"], "rows": run.variables["rows"]},
                OptState(dense_state, run.opt_state.row_adam, extra))

    def compiled_chunk(self, run, key, length: int):
        """The chunk of ``length`` steps as XLA compiled it (``.as_text()`` is its HLO):
        what a test reads to see which collectives a sharded fit runs."""
        return self._chunk.lower(*self.chunk_arguments(run, key, length, length),
                                 length=length).compile()

    # -- streamed batches: one jitted step per batch ------------------------------------
    def _stream_step(self, variables, opt_state, batch, indices, key, step, shared_values):
        self.trace_counts["stream_step"] += 1
        return self.update(variables, opt_state, batch, indices, key, step, shared_values)


def _to_variables(problem: Problem, params: dict, rows_array=jnp.asarray) -> dict:
    """Parameters -> what the optimizer moves, in two groups: "dense" (globals' q and
    point params, plain Adam) and "rows" (free locals' q, row-wise Adam). A q scale is
    moved as raw_scale, scale = softplus(raw_scale)."""
    def as_var(p, array=jnp.asarray):
        if "value" in p:
            return {"value": array(p["value"])}
        return {"loc": array(p["loc"]), "raw_scale": array(transforms.softplus_inverse(np.asarray(p["scale"])))}
    model = problem.model
    dense = [v for v in model.vars.values() if v.role in ("global", "param")]
    return {"dense": {v.name: as_var(params[v.name]) for v in dense},
            "rows": {v.name: as_var(params[v.name], rows_array) for v in model.free_locals}}


def _host_params(group: dict) -> dict:
    """A host-resident table's variables as params, computed on the host."""
    return {k: {"loc": np.array(p["loc"], dtype=float),
                "scale": np.logaddexp(0.0, np.asarray(p["raw_scale"], dtype=float))}
            for k, p in group.items()}


def _as_params(group: dict, to_array=lambda a: a) -> dict:
    """Optimizer variables -> the params structure of the objective (scale, not raw)."""
    return {k: ({"value": to_array(p["value"])} if "value" in p else
                {"loc": to_array(p["loc"]), "scale": to_array(jax.nn.softplus(p["raw_scale"]))})
            for k, p in group.items()}


#: Compiled trainers kept across fits (``klqp.cache``): a second fit of a model of the
#: same structure and shapes starts without compiling.
TRAINERS = backend_cache()


def trainer_key(problem: Problem, config: FitConfig):
    """Everything a compiled trainer reads as a constant: the model's structure, N, b,
    the weights (schedules by value, a kq.Shared by identity: its value is an argument),
    the data's shapes and dtypes, the step rule, the learning rate and JAX's float
    dtype. None: not cached (a model that JSON cannot hold)."""
    structure = structure_key(problem.model)
    if structure is None:
        return None
    columns = (None if problem.data is None else
               tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in problem.data.items()))
    return (structure, jnp.result_type(float).name, problem.total_size, problem.batch_size,
            problem.weights, problem.scale_cost_to_minibatch, columns, config.learning_rate,
            config.local_step, config.global_step, config.max_nonfinite)


class Program:
    """One fit's compiled trainer and its state (``klqp.loop.Program``): the core's loop
    (``klqp.loop.run``) calls it chunk by chunk."""

    backend = _NAME

    def __init__(self, problem: Problem, config: FitConfig, trainer: Trainer, key=None):
        self.problem, self.config, self.trainer = problem, config, trainer
        self.cache_key = key  # where the trainer goes back to (klqp.cache), or None
        self.counts_before = collections.Counter(trainer.trace_counts)  # a reused trainer's
        on_host = trainer.host is not None  # the row table must not pass through the device
        host_array = lambda a: np.asarray(a, dtype=jnp.result_type(float))  # noqa: E731 JAX's
        self.variables = _to_variables(problem, init_params(problem, config.seed, config.init_scale),
                                       rows_array=host_array if on_host else jnp.asarray)
        self.opt_state = trainer.init_state(self.variables)
        self.step, self.in_row = 0, 0
        if config.resume is not None:  # the saved arrays, by name, in this state's places
            prev = config.resume
            tree = {"q": self.variables, **self.opt_state._asdict()}
            names = state_names(self.variables, self.opt_state)
            saved = loop.resume_arrays(prev.state.optimizer, dict(zip(names, (
                np.shape(a) for a in jax.tree.leaves(tree)))), _NAME)
            tree = jax.tree.unflatten(jax.tree.structure(tree), [
                np.array(saved[k]) if on_host else jnp.array(saved[k]) for k in names])
            self.variables = tree.pop("q")
            self.opt_state = OptState(**tree)
            self.step = prev.state.step
        self.variables, self.opt_state = trainer.place_state(self.variables, self.opt_state)
        self.key = jax.random.PRNGKey(config.seed)
        self.noise_key = jax.random.split(self.key)[1]

    def run_steps(self, step: int, count: int, length: int, in_row: int, stop) -> dict:
        """``count`` steps as one compiled chunk of ``length`` (a chunk is never cut)."""
        self.step, self.in_row = step, in_row
        trainer = self.trainer
        (variables, opt_state, _), figures = trainer._chunk(
            *trainer.chunk_arguments(self, self.key, count, length), length=length)
        self.variables, self.opt_state = trainer.chunk_result(self, variables, opt_state)
        return figures

    def run_batch(self, step: int, columns: dict, rows, size: int) -> dict:
        place = self.trainer.place
        indices = rows if rows is not None else np.arange(size)
        if place is None:
            indices, columns = jnp.asarray(indices), {k: jnp.asarray(v) for k, v in columns.items()}
        else:
            indices, columns = place.stream_batch(indices, columns, step=step)
        self.variables, self.opt_state, figures = self.trainer._step(
            self.variables, self.opt_state, columns, indices,
            jax.random.fold_in(self.noise_key, step), jnp.asarray(step),
            _shared_values(self.problem))
        return figures

    def state(self) -> list:
        return self.trainer.state_arrays(self.variables, self.opt_state)

    def report(self, step: int) -> dict:
        data = None if self.problem.data is None else self.trainer.device_data()
        return self.trainer.reported_params(self.variables, self.opt_state, data, step,
                                            _shared_values(self.problem))

    def info(self) -> dict:
        counts = self.trainer.trace_counts - self.counts_before  # this fit's compiles
        return {"compiles": counts["chunk"] + counts["stream_step"],
                "dtype": jnp.result_type(float).name, "trace_counts": dict(counts)}

    def close(self) -> None:
        if self.cache_key is not None:
            TRAINERS.give_back(self.cache_key, self.trainer.release())
            self.cache_key = None


def fit(problem: Problem, config: FitConfig, trainer: Trainer | None = None,
        place=None, host=None) -> FitResult:
    """``place``: a ``klqp_numpyro.sharding.Placement`` (several devices), or None;
    ``host``: a ``klqp_numpyro.host_table.HostTable`` (the row table in host memory).
    One device and a device table: the trainer compiled by an earlier fit of the same
    structure is reused (``TRAINERS``)."""
    key = trainer_key(problem, config) if trainer is None and place is None and host is None \
        else None
    cached = None if key is None else TRAINERS.take(key)
    trainer = trainer or (cached.adopt(problem) if cached is not None else
                          Trainer(problem, config, place, host))
    return loop.run(problem, config, Program(problem, config, trainer, key))
