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
from klqp.problem import FitConfig, Problem, init_params

from .lowering import build_guide, build_model, build_terms
from .train import _shared_values, _weights_at, fit as _fit

__all__ = ["NumPyroBackend", "NumPyroObjective"]


class NumPyroObjective:
    """The compiled objective of one problem: loss, gradient and terms as functions of q's
    parameters for a given minibatch (``indices``) and noise. Every call is jitted once;
    weights enter as traced arguments."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.terms_fn = build_terms(problem)
        self.trace_counts = collections.Counter()
        self.model = build_model(problem)      # the plain NumPyro program, for users
        self._locals = {v.name for v in problem.model.free_locals}
        self._data = {k: jnp.asarray(v) for k, v in problem.data.items()}
        self._eval = jax.jit(self._evaluate)
        self._grad = jax.jit(jax.grad(lambda *a: self._evaluate(*a)["loss"]))

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
        t = self.terms_fn(params, batch, indices, noise)
        s = objective.cost_scale(self.problem.total_size, indices.shape[0],
                                 self.problem.scale_cost_to_minibatch)
        return {"loss": objective.loss(t, cost_scale=s, **weights), "elbo": objective.elbo(t),
                "loglik": t.loglik, "kl_global": jnp.asarray(t.kl_global),
                "kl_local": jnp.asarray(t.kl_local)}

    def _args(self, params, indices, noise, step):
        latents = [v.name for v in self.problem.model.latents]
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


class NumPyroBackend:
    name = "numpyro"

    def compile(self, problem: Problem) -> NumPyroObjective:
        if problem.data is None:
            raise ValueError("kq.compile needs in-memory data (a dict of arrays)")
        return NumPyroObjective(problem)

    def fit(self, problem: Problem, config: FitConfig):
        return _fit(problem, config)
