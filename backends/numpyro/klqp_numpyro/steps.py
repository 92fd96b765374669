"""``klqp.steps`` in JAX: what the shared step rule needs from this backend.

The rule (the local step's Newton candidates and guard, the global step's curvature
average, natural-gradient step and scale, the averaging) is ``klqp.steps``'; this module
supplies each row's log joint at the quadrature nodes with its gradient and diagonal
curvature (``jax.vjp`` / ``jax.jvp``: rows are independent given the globals, so one
Hessian-vector product per local number gives every row's diagonal at once), the
training estimator (quadrature nodes as weighted virtual rows, an antithetic pair of
global draws) and the global curvature: Hessian-vector products (``jax.jvp`` of
``jax.grad``) for the Hutchinson probe and the dense block's column, ``jax.hessian``'s
diagonal only where ``CompiledObjective.global_curvature`` asks for the exact one.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from klqp import steps as rule, transforms
from klqp.objective import Terms, weighted_global, weighted_rows
from klqp.problem import Problem

from .lowering import build_row_densities, build_terms, q_location


def softplus_inverse(x):
    """The raw parameter whose softplus is the scale ``x`` (> 0)."""
    return transforms.softplus_inverse(x, jnp)


def tile_rows(tree, copies: int):
    """Every leaf's rows repeated ``copies`` times, row-major: copy p of row i sits at
    i * P + p (the layout of a batch's quadrature nodes as virtual rows). Row-major keeps
    a row's nodes together, so a batch split across devices splits its virtual rows the
    same way (no gather of the batch)."""
    return jax.tree.map(lambda a: jnp.repeat(a, copies, axis=0), tree)


def average_terms(a: Terms, b: Terms) -> Terms:
    return Terms(*(0.5 * (x + y) for x, y in zip(a.values(), b.values())))


class Stepper:
    """The step rule of one problem in JAX (see ``klqp.steps``)."""

    def __init__(self, problem: Problem, local_step: Optional[rule.LocalStep],
                 global_step: Optional[rule.GlobalStep]):
        model = problem.model
        self.problem, self.model = problem, model
        self.local_step, self.global_step = local_step, global_step
        self.layout = rule.local_layout(model, local_step)
        self.densities = build_row_densities(problem)
        self.terms = build_terms(problem)
        self.rule = rule.Rule.of(model, local_step, global_step)
        self.global_size = self.rule.global_size
        # which parts of the rule run (klqp.steps.Rule, as on every backend)
        self.curvature, self.dense = self.rule.curvature, self.rule.dense
        self.antithetic, self.average = self.rule.antithetic, self.rule.average
        if self.layout is not None:
            self.nodes = jnp.asarray(self.layout.nodes)
            self.node_weights = jnp.asarray(self.layout.weights)

    # -- a row's coordinates, flat --------------------------------------------------------
    def flat(self, parts: dict):
        """{free local: (R, *shape)} -> (R, K) in the layout's order."""
        rows = parts[self.layout.names[0]].shape[0]
        return jnp.concatenate([parts[n].reshape((rows, -1)) for n in self.layout.names], -1)

    def unflat(self, flat) -> dict:
        rows = flat.shape[0]
        return {n: flat[:, self.layout.block(n)].reshape((rows,) + s)
                for n, s in zip(self.layout.names, self.layout.shapes)}

    # -- the local step ------------------------------------------------------------------
    def _fixed_values(self, params: dict, columns: dict) -> dict:
        """Latents the local step holds fixed, at their q location: globals, and any
        amortized local (its encoder's mean on the rows)."""
        q = q_location(self.problem, params, columns)
        return {v.name: q[v.name][0] for v in self.model.latents
                if v.role == "global" or v.amortized}

    def row_log_joint(self, flat_u, fixed: dict, columns: dict, point: dict, weights: dict):
        """l(u) = T log p(y | .) + f + beta_local (log p(z | .) + log|J|) for each of the
        rows of ``flat_u`` (R', K), with ``columns``/``fixed`` locals aligned to them."""
        u = {**fixed, **self.unflat(flat_u)}
        return weighted_rows(self.densities(u, columns, point), weights)

    def _node_values(self, loc, log_scale):
        """u at every node of every row: (R * P, K), row-major."""
        u = loc[:, None] + jnp.exp(log_scale)[:, None] * self.nodes[None, :, :]
        return u.reshape((-1, loc.shape[1]))

    def _tiled(self, fixed: dict, columns: dict):
        p = self.layout.num_nodes
        fixed = {k: (tile_rows(a, p) if self.model[k].role == "local" else a)
                 for k, a in fixed.items()}
        return fixed, tile_rows(columns, p)

    def expectations(self, loc, log_scale, fixed: dict, columns: dict, point: dict, weights: dict):
        """E[l], E[l'] and the diagonal of E[l''] over each row's q by the layout's
        quadrature: (R,), (R, K), (R, K)."""
        p, rows, k = self.layout.num_nodes, loc.shape[0], loc.shape[1]
        fixed_t, columns_t = self._tiled(fixed, columns)
        f = lambda u: self.row_log_joint(u, fixed_t, columns_t, point, weights)
        u = self._node_values(loc, log_scale)
        values, pullback = jax.vjp(f, u)
        ones = jnp.ones_like(values)
        grad = pullback(ones)[0]
        grad_of = lambda v: jax.vjp(f, v)[1](ones)[0]
        hess = jnp.stack([jax.jvp(grad_of, (u,), (jnp.zeros_like(u).at[:, j].set(1.0),))[1][:, j]
                          for j in range(k)], axis=-1)
        w = self.node_weights
        return (jnp.einsum("p,rp->r", w, values.reshape(rows, p)),
                jnp.einsum("p,rpk->rk", w, grad.reshape(rows, p, k)),
                jnp.einsum("p,rpk->rk", w, hess.reshape(rows, p, k)))

    def row_objective(self, loc, log_scale, fixed_t, columns_t, point, weights):
        values = self.row_log_joint(self._node_values(loc, log_scale), fixed_t, columns_t, point,
                                    weights)
        return rule.row_objective(jnp, values.reshape(-1, self.layout.num_nodes).T,
                                  self.node_weights, log_scale, weights["beta_local"])

    def newton(self, loc, log_scale, fixed: dict, columns: dict, point: dict, weights: dict,
               iterations: int):
        """``iterations`` guarded Newton iterations on rows (loc, log_scale) (R, K);
        returns the new (loc, log_scale) and each row's gain in its objective f."""
        fixed_t, columns_t = self._tiled(fixed, columns)
        beta = weights["beta_local"]

        def one(_, state):
            loc, log_scale, f_now = state
            _, grad, hess = self.expectations(loc, log_scale, fixed, columns, point, weights)
            best = (loc, log_scale, f_now)
            for cand in rule.newton_candidates(jnp, loc, log_scale, grad, hess, beta,
                                               self.local_step.max_change):
                f = self.row_objective(*cand, fixed_t, columns_t, point, weights)
                best = rule.keep_better(jnp, best, (*cand, f))
            return best

        f0 = self.row_objective(loc, log_scale, fixed_t, columns_t, point, weights)
        loc, log_scale, f1 = jax.lax.fori_loop(0, iterations, one, (loc, log_scale, f0))
        return loc, log_scale, f1 - f0

    def local_update(self, params: dict, rows: dict, columns: dict, weights: dict,
                     iterations: Optional[int] = None):
        """The local step on a batch: ``rows`` = {free local: {"loc", "scale"}} of the
        batch rows, ``params`` the rest (globals' q, point values). Returns the rows' new
        {"loc", "scale"} and each row's gain."""
        point = {v.name: params[v.name]["value"] for v in self.model.params}
        fixed = self._fixed_values({**params, **rows}, columns)
        loc = self.flat({n: rows[n]["loc"] for n in self.layout.names})
        log_scale = jnp.log(self.flat({n: rows[n]["scale"] for n in self.layout.names}))
        loc, log_scale, gain = self.newton(loc, log_scale, fixed, columns, point, weights,
                                           iterations or self.local_step.iterations)
        locs, scales = self.unflat(loc), self.unflat(jnp.exp(log_scale))
        return {n: {"loc": locs[n], "scale": scales[n]} for n in self.layout.names}, gain

    # -- the estimator of a training step ----------------------------------------------------
    def _virtual(self, params: dict, batch: dict, noise: dict):
        """(params, batch, noise, row_weights) of the estimator: with a local step, each
        row's quadrature nodes as weighted virtual rows (free locals' noise = the nodes);
        without, the batch itself."""
        if self.layout is None:
            return params, batch, noise, None
        p, b = self.layout.num_nodes, batch[self.model.row_column].shape[0]
        free = set(self.layout.names)
        params = {k: (tile_rows(a, p) if k in free else a) for k, a in params.items()}
        node_noise = self.unflat(jnp.tile(self.nodes, (b, 1)))
        noise = {**node_noise, **{k: (tile_rows(a, p) if self.model[k].role == "local" else a)
                                  for k, a in noise.items() if k not in free}}
        return params, tile_rows(batch, p), noise, jnp.tile(self.node_weights, b)

    def training_terms(self, params: dict, batch: dict, noise: dict, stl: bool = False) -> Terms:
        """The step's estimate of the three terms: the locals integrated by quadrature
        (with a local step) and the antithetic pair of global draws (when set)."""
        params, batch, noise, row_weights = self._virtual(params, batch, noise)
        t = self.terms(params, batch, noise, row_weights, stl)
        if not self.antithetic:
            return t
        flipped = {k: (-a if self.model[k].role == "global" else a) for k, a in noise.items()}
        return average_terms(t, self.terms(params, batch, flipped, row_weights, stl))

    # -- the global step's curvature -----------------------------------------------------------
    def flat_globals(self, tree: dict):
        """{global: array of its shape} -> (D,), model order (the PyMC backend's too)."""
        return jnp.concatenate([jnp.reshape(jnp.broadcast_to(tree[v.name], v.shape), (-1,))
                                for v in self.model.globals])

    def unflat_globals(self, flat) -> dict:
        out, offset = {}, 0
        for v in self.model.globals:
            k = int(np.prod(v.shape, dtype=int))
            out[v.name] = flat[offset:offset + k].reshape(tuple(v.shape))
            offset += k
        return out

    def global_curvature(self, params: dict, batch: dict, noise: dict, weights: dict,
                         probe=None, column=None, line=False):
        """The global step's curvature sample, from Hessian-vector products of H = d^2 J /
        d theta^2 at the global draw theta = m + s * eps (averaged with m - s * eps under
        the antithetic pair), J the weighted full-data log joint estimated from the batch:
        (N/b) sum_rows (T log p(y|.) + f + beta_local log p(z|.)) + beta_global log p(theta)
        + f_global (``klqp.objective.weighted_rows`` / ``weighted_global``), locals as in
        the estimator.

        ``probe`` (r, as {global: array of its shape}): the scaled Hutchinson estimate of
        the diagonal, -(r / s) * H (s * r) ({global: array}). ``column`` (an index j,
        traced): the exact column -H e_j, flat (D,) in model order. Both: the pair.
        Neither: the exact diagonal -diag H (D products: for tests and inspection, not
        for training). ``line``: also (last) the function u -> u^T (-H) u at the first
        draw, for the diagonal step's line search (``klqp.steps.line_step_size``)."""
        model, n = self.model, self.problem.total_size
        params_v, batch_v, noise_v, row_weights = self._virtual(params, batch, noise)
        rows = batch_v[model.row_column].shape[0]
        row_weights = jnp.ones(rows) if row_weights is None else row_weights
        point = {v.name: params[v.name]["value"] for v in model.params}
        q = q_location(self.problem, params_v, batch_v)
        local_u = {v.name: jax.lax.stop_gradient(q[v.name][0] + q[v.name][1] * noise_v[v.name])
                   for v in model.locals}
        loc = jax.lax.stop_gradient(self.flat_globals({v.name: params[v.name]["loc"]
                                                       for v in model.globals}))
        scale = jax.lax.stop_gradient(self.flat_globals({v.name: params[v.name]["scale"]
                                                         for v in model.globals}))
        eps = self.flat_globals({v.name: noise[v.name] for v in model.globals})

        def joint(theta_flat):
            u = {**self.unflat_globals(theta_flat), **local_u}
            d = self.densities(u, batch_v, point)
            return (n / row_weights.sum()) * jnp.sum(row_weights * weighted_rows(d, weights)) + \
                weighted_global(d, weights)

        draws = [loc + scale * eps] + ([loc - scale * eps] if self.antithetic else [])
        grad = jax.grad(joint)
        # H v for several v at once (one batched forward-over-reverse pass per draw)
        hvp = lambda vs: sum(jax.vmap(lambda v: jax.jvp(grad, (theta,), (v,))[1])(vs)
                             for theta in draws) / len(draws)
        if probe is None and column is None:
            diag = sum(-jnp.diag(jax.hessian(joint)(theta)) for theta in draws) / len(draws)
            return self.unflat_globals(diag)
        tangents = []
        if probe is not None:
            probe = self.flat_globals(probe)
            tangents.append(scale * probe)
        if column is not None:
            tangents.append(jnp.zeros_like(loc).at[column].set(1.0))
        products = hvp(jnp.stack(tangents))
        out = []
        if probe is not None:
            out.append(self.unflat_globals(rule.probe_curvature(jnp, products[0], probe, scale)))
        if column is not None:
            out.append(-products[-1])
        if line:
            # at the first draw only: a cap on the step needs no antithetic average
            out.append(lambda u: -jnp.sum(u * jax.jvp(grad, (draws[0],),
                                                      (jax.lax.stop_gradient(u),))[1]))
        return out[0] if len(out) == 1 else tuple(out)
