"""klqp's NumPyro backend (entry point ``numpyro`` in the ``klqp.backends`` group).

>>> import klqp as kq
>>> kq.backends.get("numpyro").name
'numpyro'
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np

from klqp import objective
from klqp.steps import RowAdam
from klqp.problem import FitConfig, Problem, init_params

from .lowering import build_guide, build_model, build_terms
from .steps import Stepper
from .host_table import host_table
from .sharding import placement
from .train import _shared_values, _weights_at, fit as _fit

__all__ = ["NumPyroBackend", "NumPyroObjective"]


class NumPyroObjective:
    """The compiled objective of one problem: loss, gradient and terms as functions of q's
    parameters for a given minibatch (``indices``) and noise. Every call is jitted once;
    weights enter as traced arguments."""

    def __init__(self, problem: Problem, local_step=None):
        self.problem = problem
        self.terms_fn = build_terms(problem)
        self.trace_counts = collections.Counter()
        self.model = build_model(problem)      # the plain NumPyro program, for users
        self._locals = {v.name for v in problem.model.free_locals}
        self._data = {k: jnp.asarray(v) for k, v in problem.data.items()}
        self._eval = jax.jit(self._evaluate)
        self._grad = jax.jit(jax.grad(lambda *a: self._evaluate(*a)["loss"]))
        self.stepper = Stepper(problem, local_step, None)
        # kq.RowAdam(stl=True): the gradient that rule trains free locals with
        self.stl = isinstance(local_step, RowAdam) and local_step.stl
        self._local = jax.jit(self._local_step)
        self._expect = jax.jit(self._expectations)
        self._curv = jax.jit(self._curvature)

    @property
    def dtype(self) -> str:
        """The float dtype the objective computes in: JAX's, "float64" when x64 is enabled
        (``JAX_ENABLE_X64=1`` or ``jax.config.update("jax_enable_x64", True)``), else
        "float32"."""
        return jnp.result_type(float).name

    def guide(self, params: dict | None = None):
        """The NumPyro guide (mean-field Normal q), its params initialised from ``params``."""
        return build_guide(self.problem, params or self.init_params())

    def init_params(self, seed: int = 0, init_scale: float = 0.1) -> dict:
        return init_params(self.problem, seed, init_scale)

    def _evaluate(self, params, indices, noise, weights):
        self.trace_counts["objective"] += 1
        batch = {k: jnp.take(v, indices, axis=0) for k, v in self._data.items()}
        params = {k: (jax.tree.map(lambda a: a[indices], p) if k in self._locals else p)
                  for k, p in params.items()}
        t = self.terms_fn(params, batch, noise, stl=self.stl)
        s = objective.cost_scale(self.problem.total_size, indices.shape[0],
                                 self.problem.scale_cost_to_minibatch)
        return {"loss": objective.loss(t, cost_scale=s, **weights), "elbo": objective.elbo(t),
                "loglik": t.loglik, "kl_global": jnp.asarray(t.kl_global),
                "kl_local": jnp.asarray(t.kl_local)}

    def _args(self, params, indices, noise, step):
        latents = [v.name for v in self.problem.model.latents if v.name in noise]
        tree = jax.tree.map(jnp.asarray, (params, {k: noise[k] for k in latents}))
        weights = _weights_at(self.problem, jnp.asarray(step), _shared_values(self.problem))
        return tree[0], jnp.asarray(indices), tree[1], weights

    def terms(self, params, *, indices, noise, step: int = 0) -> dict:
        """loss, elbo, loglik, kl_global, kl_local for this minibatch and noise."""
        out = self._eval(*self._args(params, indices, noise, step))
        return {k: float(v) for k, v in out.items()}

    def loss(self, params, *, indices, noise, step: int = 0) -> float:
        return self.terms(params, indices=indices, noise=noise, step=step)["loss"]

    def grad(self, params, *, indices, noise, step: int = 0) -> dict:
        """d loss / d params, with the structure of ``params`` (scale in its own space)."""
        g = self._grad(*self._args(params, indices, noise, step))
        return jax.tree.map(lambda a: np.asarray(a, dtype=float), g)

    # -- the step rule's pieces (klqp.steps), deterministic for given rows ---------------------
    def _batch_and_rows(self, params, indices):
        batch = {k: jnp.take(v, indices, axis=0) for k, v in self._data.items()}
        rows = {k: jax.tree.map(lambda a: a[indices], params[k]) for k in self._locals}
        return batch, rows

    def _local_step(self, params, indices, weights):
        batch, rows = self._batch_and_rows(params, indices)
        new, gain = self.stepper.local_update(params, rows, batch, weights)
        return new, gain

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

    def _need_local_step(self):
        if self.stepper.layout is None:
            raise ValueError("this objective has no local step: the model has no free local "
                             "latent, or kq.compile(..., local_step=None) turned it off")

    def local_step(self, params, *, indices, step: int = 0) -> dict:
        """``params`` with the rows ``indices`` of every free local moved by one local step
        (``klqp.steps``; the globals held at their q location). No randomness."""
        self._need_local_step()
        p, idx, _, weights = self._args(params, indices, {}, step)
        new, _ = self._local(p, idx, weights)
        out = jax.tree.map(lambda a: np.array(a, dtype=float), params)
        for k, q in new.items():
            for name, a in q.items():
                out[k][name][np.asarray(indices)] = np.asarray(a, dtype=float)
        return out

    def local_expectations(self, params, *, indices, step: int = 0) -> dict:
        """What the local step reads for each row of ``indices``: ``value`` = E[l] (b,),
        ``grad`` = E[l'] and ``hess`` = the diagonal of E[l''] ({free local: (b, *shape)}),
        l the row's weighted log joint, E over q(z_i) by the step's quadrature."""
        self._need_local_step()
        p, idx, _, weights = self._args(params, indices, {}, step)
        value, grad, hess = self._expect(p, idx, weights)
        as_np = lambda t: jax.tree.map(lambda a: np.asarray(a, dtype=float), t)
        return {"value": as_np(value), "grad": as_np(grad), "hess": as_np(hess)}

    def global_curvature(self, params, *, indices, noise, probe=None, step: int = 0) -> dict:
        """The global step's curvature sample for each global ({name: array}): with
        ``probe`` ({global: array of +-1}, the step's Rademacher probe r), -(r / s) * H (s
        * r); without, the exact -diag H. H = d^2 J / d theta^2 at the global draw theta =
        m + s * eps (eps: ``noise``'s globals), J the weighted full-data log joint the
        global step estimates from the rows ``indices`` (after the local step, when
        there is one). One draw: training averages it over an antithetic pair."""
        p, idx, nz, weights = self._args(params, indices, noise, step)
        if probe is not None:
            probe = {v.name: jnp.asarray(probe[v.name], dtype=jnp.result_type(float))
                     for v in self.problem.model.globals}
        c = self._curv(p, idx, nz, weights, probe)
        return jax.tree.map(lambda a: np.asarray(a, dtype=float), c)


class NumPyroBackend:
    name = "numpyro"

    def compile(self, problem: Problem, local_step=None, devices=None) -> NumPyroObjective:
        if not (devices is None or devices == 1 or (isinstance(devices, (list, tuple))
                                                     and len(devices) == 1)):
            raise ValueError(f"backend_options['devices']={devices!r}: kq.compile evaluates the "
                             "objective on one device; several devices are for kq.fit")
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
