"""``klqp.steps`` in PyTensor: what the shared step rule needs from this backend.

The rule (the local step's Newton candidates and guard, the global step's curvature
average, natural-gradient step and scale, the averaging) is ``klqp.steps``'; this module
supplies each row's log joint at the quadrature nodes, its gradient and diagonal
curvature (``pytensor.grad``: rows are independent given the globals, so the gradient of
a column sum of the gradient is every row's diagonal), and the diagonal of the global
block's curvature by Hessian-vector products (``pytensor.grad`` of a gradient's inner
product with the probe).

The row log-densities are the PyMC model's own: the spec is built as a ``pm.Model``
without ``total_size`` for R rows and ``pm_model.logp(jacobian=True, sum=False)`` is taken
with the latents' value variables replaced by given unconstrained values.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import disconnected_grad
from pytensor.graph.replace import graph_replace

from klqp import steps as rule
from klqp.expr import evaluate
from klqp.objective import RowDensities, weighted_global, weighted_rows
from klqp.problem import Problem

from .lowering import build_pm_model
from .tensors import Batch, PytensorOps, as_float, float_dtype

__all__ = ["RowModel", "LocalSolver", "tile_rows", "global_curvature", "split_flat", "amortized_q"]


def tile_rows(x, copies: int):
    """``x``'s rows repeated ``copies`` times, node-major: row i of copy p at p * R + i."""
    return pt.tile(x, (copies,) + (1,) * (x.ndim - 1))


def split_flat(problem: Problem, flat) -> dict:
    """A flat vector over the globals (model order, as the global group's mu) per global
    (None, for a model without globals: {})."""
    out, offset = {}, 0
    if flat is None:
        return out
    for v in problem.model.globals:
        k = int(np.prod(v.shape, dtype=int))
        out[v.name] = flat[offset:offset + k].reshape(tuple(v.shape))
        offset += k
    return out


class RowModel:
    """The spec's unscaled log-densities for ``rows`` rows of ``columns``, as PyTensor
    graphs of the latents' unconstrained values (see ``densities``)."""

    def __init__(self, problem: Problem, columns: dict, point: dict, rows: int):
        spec = problem.model
        self.rows = rows
        self.pm_model, self.rvs = build_pm_model(problem, Batch(None, columns, rows), point,
                                                 scaled=False)
        names = [v.name for v in spec.vars.values() if v.role in ("global", "local", "observed")]
        names += [v.name for v in spec.potentials]
        logps = self.pm_model.logp(vars=[self.rvs[k] for k in names], jacobian=True, sum=False)
        self.logp = {k: pt.cast(lp, float_dtype()) for k, lp in zip(names, logps)}
        self.values = {v.name: self.pm_model.rvs_to_values[self.rvs[v.name]] for v in spec.latents}
        self.spec = spec

    def densities(self, u: dict) -> RowDensities:
        """``klqp.objective.RowDensities`` at the unconstrained values ``u`` (globals: their
        own shape; locals: (R, *shape)); log p of a latent includes log|J| (PyMC's
        value-variable log-density)."""
        # the value variables' static shapes: their symbolic shape would keep them in the graph
        replace = {self.values[k]: pt.cast(a, self.values[k].dtype).reshape(self.values[k].type.shape)
                   for k, a in u.items()}
        r, spec = self.rows, self.spec
        row_sums = lambda x: x if x.ndim == 1 else x.reshape((r, -1)).sum(axis=1)
        global_logp = pt.as_tensor(as_float(0.0))
        loglik_rows = pt.zeros((r,), dtype=float_dtype())
        local_logp_rows = pt.zeros((r,), dtype=float_dtype())
        for v in spec.vars.values():
            if v.role in ("data", "param"):
                continue
            lp = graph_replace(self.logp[v.name], replace, strict=False)
            if v.role == "observed":
                loglik_rows = loglik_rows + row_sums(lp)
            elif v.role == "local":
                local_logp_rows = local_logp_rows + row_sums(lp)
            else:
                global_logp = global_logp + lp.sum()
        potential_rows = pt.zeros((r,), dtype=float_dtype())
        potential_global = pt.as_tensor(as_float(0.0))
        for v in spec.potentials:
            lp = graph_replace(self.logp[v.name], replace, strict=False)
            if v.per_row:
                potential_rows = potential_rows + row_sums(lp)
            else:
                potential_global = potential_global + lp.sum()
        return RowDensities(global_logp, loglik_rows, local_logp_rows, potential_rows,
                            potential_global)


class LocalSolver:
    """The local step (``klqp.steps``) on the R rows of a batch: PyTensor graphs of the
    rows' new (loc, log_scale) and their gain, built from a RowModel over the batch's
    quadrature nodes (P * R virtual rows)."""

    def __init__(self, problem: Problem, local_step: rule.LocalStep, columns: dict, point: dict,
                 rows: int):
        self.problem, self.local_step = problem, local_step
        self.layout = layout = rule.local_layout(problem.model, local_step)
        self.rows = rows
        p = layout.num_nodes
        self.columns, self.columns_tiled = columns, {k: tile_rows(a, p) for k, a in columns.items()}
        self.row_model = RowModel(problem, self.columns_tiled, point, p * rows)
        self._models = {1: self.row_model}  # RowModels over C * P * R rows (row_objectives)
        self.nodes = pt.as_tensor(as_float(layout.nodes))
        self.node_weights = pt.as_tensor(as_float(layout.weights))
        self.point = point
        self.amortized_loc = {k: m for k, (m, _) in amortized_q(problem, columns, point).items()}

    # -- a row's coordinates, flat ------------------------------------------------------------
    def flat(self, parts: dict):
        r = self.rows
        return pt.concatenate([parts[n].reshape((r, -1)) for n in self.layout.names], axis=1)

    def unflat(self, flat, rows: int) -> dict:
        return {n: flat[:, self.layout.block(n)].reshape((rows,) + s)
                for n, s in zip(self.layout.names, self.layout.shapes)}

    def node_values(self, loc, log_scale):
        """u at every node of every row: (P * R, K), node-major."""
        u = loc[None] + pt.exp(log_scale)[None] * self.nodes[:, None, :]
        return u.reshape((self.layout.num_nodes * self.rows, self.layout.size))

    def fixed_values(self, global_loc: dict, amortized_loc: dict) -> dict:
        """Latents the step holds fixed: globals at their q location (own shape),
        amortized locals at their encoder's mean (R rows, tiled to the nodes)."""
        p = self.layout.num_nodes
        return {**global_loc, **{k: tile_rows(a, p) for k, a in amortized_loc.items()}}

    def log_joint(self, flat_u, fixed: dict, weights: dict):
        """l(u) = T log p(y | .) + f + beta_local (log p(z | .) + log|J|) per virtual row."""
        n_virtual = self.layout.num_nodes * self.rows
        u = {**fixed, **self.unflat(flat_u, n_virtual)}
        return weighted_rows(self.row_model.densities(u), weights)

    def expectations(self, loc, log_scale, fixed: dict, weights: dict):
        """(E[l] (R,), E[l'] (R, K), diagonal of E[l''] (R, K)) by the layout's quadrature."""
        p, r, k = self.layout.num_nodes, self.rows, self.layout.size
        u = pt.tensor("u_nodes", dtype=float_dtype(), shape=(p * r, k))
        values = self.log_joint(u, fixed, weights)
        grad = pytensor.grad(values.sum(), u)
        hess = pt.stack([pytensor.grad(grad[:, j].sum(), u)[:, j] for j in range(k)], axis=-1)
        at = {u: self.node_values(loc, log_scale)}
        values, grad, hess = graph_replace([values, grad, hess], at, strict=False)
        w = self.node_weights
        return ((values.reshape((p, r)) * w[:, None]).sum(axis=0),
                (grad.reshape((p, r, k)) * w[:, None, None]).sum(axis=0),
                (hess.reshape((p, r, k)) * w[:, None, None]).sum(axis=0))

    def row_objectives(self, candidates: list, fixed: dict, weights: dict) -> list:
        """The row objective of each (loc, log_scale) in ``candidates``, from ONE copy of
        the model's graph over C * P * R virtual rows (not a copy per candidate: the
        compiled step's graph, and its compile time, stay smaller)."""
        c, p, r = len(candidates), self.layout.num_nodes, self.rows
        if c not in self._models:
            columns = {k: tile_rows(a, c * p) for k, a in self.columns.items()}
            self._models[c] = RowModel(self.problem, columns, self.point, c * p * r)
        u = pt.concatenate([self.node_values(*cand) for cand in candidates], axis=0)
        tiled = {k: (tile_rows(a, c) if k in self.amortized_loc else a) for k, a in fixed.items()}
        values = weighted_rows(self._models[c].densities({**tiled, **self.unflat(u, c * p * r)}),
                               weights).reshape((c, p, r))
        return [rule.row_objective(pt, values[i], self.node_weights, cand[1],
                                   weights["beta_local"]) for i, cand in enumerate(candidates)]

    def newton(self, loc, log_scale, fixed: dict, weights: dict, iterations: Optional[int] = None):
        """``iterations`` guarded Newton iterations: (loc, log_scale, gain per row)."""
        beta = weights["beta_local"]
        f0 = self.row_objectives([(loc, log_scale)], fixed, weights)[0]
        best = (loc, log_scale, f0)
        for _ in range(iterations or self.local_step.iterations):
            _, grad, hess = self.expectations(best[0], best[1], fixed, weights)
            candidates = rule.newton_candidates(pt, best[0], best[1], grad, hess, beta,
                                                self.local_step.max_change)
            for cand, f in zip(candidates, self.row_objectives(candidates, fixed, weights)):
                best = rule.keep_better(pt, best, (*cand, f))
        return best[0], best[1], best[2] - f0

    def step(self, loc: dict, scale: dict, global_mu, weights: dict,
             iterations: Optional[int] = None) -> tuple:
        """The local step from the rows' q (``loc``, ``scale`` per free local), the globals
        held at ``global_mu`` (flat; None without globals) and amortized locals at their
        encoder means: ({name: new loc}, {name: new scale}, gain per row)."""
        fixed = self.fixed_values(split_flat(self.problem, global_mu), self.amortized_loc)
        new_loc, new_log_scale, gain = self.newton(self.flat(loc), pt.log(self.flat(scale)), fixed,
                                                   weights, iterations)
        return self.unflat(new_loc, self.rows), self.unflat(pt.exp(new_log_scale), self.rows), gain


def amortized_q(problem: Problem, columns: dict, point: dict) -> dict:
    """Each amortized local's encoder (mean, scale), unconstrained, on ``columns``."""
    env = {**columns, **point}
    return {v.name: tuple(evaluate(e, env, PytensorOps) for e in v.encoder)
            for v in problem.model.locals if v.amortized}


def global_curvature(problem: Problem, row_model: RowModel, global_loc_flat, global_scale_flat,
                     global_eps_flat, probe, local_u: dict, row_weights, weights: dict,
                     antithetic: bool, column=None, line: bool = False):
    """The global step's curvature sample (``klqp.steps.probe_curvature``): -(r / s) * H v
    at v = s * r (r = ``probe``, flat (D,)), H = d^2 J / d theta^2 at the global draw theta
    = m + s * eps (and averaged with m - s * eps when ``antithetic``), J = (N/b) sum_rows
    w_r (T log p(y|.) + f + beta_local log p(z|.)) + beta_global log p(theta) + f_global
    (``klqp.objective.weighted_rows`` / ``weighted_global``), the locals held
    at ``local_u`` (per virtual row). Two Hessian-vector products (reverse over reverse),
    whatever D is. With ``column`` (an index j, symbolic): also the exact column -H e_j
    at the same draws, and the pair is returned. ``line``: also (last) the function
    u -> u^T (-H) u at the first draw (``klqp.steps.line_step_size``)."""
    d = int(global_loc_flat.type.shape[0])
    theta = pt.tensor("theta_flat", dtype=float_dtype(), shape=(d,))
    local_u = {k: disconnected_grad(a) for k, a in local_u.items()}
    dens = row_model.densities({**split_flat(problem, theta), **local_u})
    joint = ((problem.total_size / row_weights.sum()) * (row_weights * weighted_rows(dens, weights)).sum()
             + weighted_global(dens, weights))
    loc, scale = disconnected_grad(global_loc_flat), disconnected_grad(global_scale_flat)
    draws = [loc + scale * global_eps_flat] + ([loc - scale * global_eps_flat] if antithetic else [])
    gradient = pytensor.grad(joint, theta)

    def hessian_times(v):  # H v averaged over the draws
        hessian_v = pytensor.grad((gradient * disconnected_grad(v)).sum(), theta)
        return sum(graph_replace(hessian_v, {theta: draw}, strict=False) for draw in draws) / len(draws)

    out = [rule.probe_curvature(pt, hessian_times(scale * probe), probe, scale)]
    if column is not None:
        out.append(-hessian_times(pt.cast(pt.eq(pt.arange(d), column), float_dtype())))
    if line:  # at the first draw only: a cap on the step needs no antithetic average
        out.append(lambda u: -(u * graph_replace(pytensor.grad(
            (gradient * disconnected_grad(u)).sum(), theta), {theta: draws[0]},
            strict=False)).sum())
    return out[0] if len(out) == 1 else tuple(out)
