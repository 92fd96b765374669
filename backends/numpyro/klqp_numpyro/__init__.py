"""klqp's NumPyro backend (entry point ``numpyro`` in the ``klqp.backends`` group).

>>> import klqp as kq
>>> kq.backends.get("numpyro").name
'numpyro'
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp

from klqp import objective
from klqp.backends import check_one_device
from klqp.compiled import CompiledObjective
from klqp.problem import FitConfig, Problem

from .lowering import build_guide, build_model, build_terms
from .steps import Stepper
from .host_table import host_table
from .sharding import placement
from .program import fit as _fit
from .state import _runtime_weights, _weights_at

__all__ = ["NumPyroBackend", "NumPyroObjective"]


class NumPyroObjective(CompiledObjective):
    """The compiled objective on NumPyro (``klqp.compiled.CompiledObjective``): every call
    is jitted once; weights enter as traced arguments. ``model`` is the plain NumPyro
    program, ``guide(params)`` its guide; ``trace_counts`` counts the traces."""

    def __init__(self, problem: Problem, local_step=None):
        super().__init__(problem, local_step)
        self.terms_fn = build_terms(problem)
        self.trace_counts = collections.Counter()
        self.model = build_model(problem)      # the plain NumPyro program, for users
        self._locals = {v.name for v in problem.model.free_locals}
        self._data = {k: jnp.asarray(v) for k, v in problem.data.items()}
        self.stepper = Stepper(problem, local_step, None)
        self._jit_terms = jax.jit(self._evaluate)
        self._jit_grad = jax.jit(jax.grad(lambda *a: self._evaluate(*a)["loss"]))
        self._jit_local = jax.jit(self._local_update)
        self._jit_expect = jax.jit(self._expectations)
        self._jit_curv = jax.jit(self._curvature)

    def _float_dtype(self) -> str:
        return jnp.result_type(float).name

    def guide(self, params: dict | None = None):
        """The NumPyro guide (mean-field Normal q), its params initialised from ``params``."""
        return build_guide(self.problem, params or self.init_params())

    # -- the primitives (klqp.compiled), on checked NumPy arguments ---------------------------
    def _args(self, params, indices, noise, step):
        params, noise = jax.tree.map(jnp.asarray, (params, noise))
        weights = _weights_at(self.problem, jnp.asarray(step), _runtime_weights(self.problem))
        return params, jnp.asarray(indices), noise, weights

    def _terms(self, params, indices, noise, step):
        return self._jit_terms(*self._args(params, indices, noise, step))

    def _grad(self, params, indices, noise, step):
        return self._jit_grad(*self._args(params, indices, noise, step))

    def _local_step(self, params, indices, step):
        p, idx, _, weights = self._args(params, indices, {}, step)
        return self._jit_local(p, idx, weights)

    def _local_expectations(self, params, indices, step):
        p, idx, _, weights = self._args(params, indices, {}, step)
        return self._jit_expect(p, idx, weights)

    def _global_curvature(self, params, indices, noise, probe, step):
        p, idx, nz, weights = self._args(params, indices, noise, step)
        if probe is not None:
            probe = {k: jnp.asarray(a, dtype=jnp.result_type(float)) for k, a in probe.items()}
        return self._jit_curv(p, idx, nz, weights, probe)

    # -- the traced functions -------------------------------------------------------------
    def _evaluate(self, params, indices, noise, weights):
        self.trace_counts["objective"] += 1
        batch, rows = self._batch_and_rows(params, indices)
        t = self.terms_fn({**params, **rows}, batch, noise, stl=self.stl)
        s = objective.cost_scale(self.problem.total_size, indices.shape[0],
                                 self.problem.scale_cost_to_minibatch)
        return {"loss": objective.loss(t, cost_scale=s, **weights), "elbo": objective.elbo(t),
                "loglik": t.loglik, "kl_global": jnp.asarray(t.kl_global),
                "kl_local": jnp.asarray(t.kl_local), "potential": jnp.asarray(t.potential)}

    def _batch_and_rows(self, params, indices):
        batch = {k: jnp.take(v, indices, axis=0) for k, v in self._data.items()}
        rows = {k: jax.tree.map(lambda a: a[indices], params[k]) for k in self._locals}
        return batch, rows

    def _local_update(self, params, indices, weights):
        batch, rows = self._batch_and_rows(params, indices)
        return self.stepper.local_update(params, rows, batch, weights)[0]

    def _expectations(self, params, indices, weights):
        st = self.stepper
        batch, rows = self._batch_and_rows(params, indices)
        point = {v.name: params[v.name]["value"] for v in self.problem.model.params}
        fixed = st._fixed_values({**params, **rows}, batch)
        loc = st.flat({n: rows[n]["loc"] for n in st.layout.names})
        log_scale = jnp.log(st.flat({n: rows[n]["scale"] for n in st.layout.names}))
        value, grad, hess = st.expectations(loc, log_scale, fixed, batch, point, weights)
        return value, st.unflat(grad), st.unflat(hess)

    def _curvature(self, params, indices, noise, weights, probe):
        batch, rows = self._batch_and_rows(params, indices)
        if self.stepper.layout is not None:  # the step's new rows, as in training
            rows, _ = self.stepper.local_update(params, rows, batch, weights)
        return self.stepper.global_curvature({**params, **rows}, batch, noise, weights, probe)


class NumPyroBackend:
    name = "numpyro"

    def compile(self, problem: Problem, local_step=None, devices=None) -> NumPyroObjective:
        check_one_device(devices, "kq.compile evaluates the objective on one device; several "
                         "devices are for kq.fit")
        if problem.data is None:
            raise ValueError("kq.compile needs in-memory data (a dict of arrays)")
        return NumPyroObjective(problem, local_step)

    def fit(self, problem: Problem, config: FitConfig, devices=None, local_table=None,
            table_dir=None):
        """``devices``: run each compiled chunk as one SPMD program over that many JAX
        devices (or that list of devices), rows sharded (``klqp_numpyro.sharding``).
        ``local_table="host"``: keep the N-row local table and the data in host memory
        (memmap files in ``table_dir``), moving each chunk's rows
        (``klqp_numpyro.host_table``)."""
        host = host_table(local_table, table_dir, problem)
        place = placement(devices, problem.total_size, problem.batch_size)
        if host is not None and place is not None and place.size > 1:
            raise ValueError("backend_options: local_table='host' runs on one device; leave "
                             "out devices= (or give devices=1)")
        return _fit(problem, config, place=None if host is not None else place, host=host)
