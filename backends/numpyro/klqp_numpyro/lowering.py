"""Lowering a klqp spec to a NumPyro model and guide, and the objective's terms.

The model is an ordinary NumPyro program: globals are sample sites outside any plate,
locals and observations sit in ``plate("rows", N, subsample_size=b)`` so NumPyro puts
N/b on them, and (when weights are given) ``handlers.scale`` puts s, beta_global,
beta_local and T on their sites. The guide is mean-field Normal in each latent's
unconstrained space; a local's loc/scale arrays have N rows and the guide reads the
minibatch rows.

The training loss does not call ``Trace_ELBO``: ``build_row_densities`` evaluates the
spec's NumPyro distributions at given latent values, one value per row, and
``build_terms`` groups them into klqp's three terms (``klqp.objective.terms_from_rows``)
for ``klqp.objective.loss``. That keeps the terms apart for the history, makes the loss a
function of the noise (which the cross-backend tests fix), and gives the local step each
row's log joint.
"""

from __future__ import annotations

from contextlib import ExitStack

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

from klqp.expr import evaluate
from klqp.objective import RowDensities, Terms, terms_from_rows
from klqp.problem import Problem

from .families import JaxOps, site_distribution, transform, value_of

ROWS = "rows"  # the plate's name, also the key its subsample indices are substituted under

def build_model(problem: Problem):
    """``model(batch, weights=None)``: the NumPyro program of the spec for one minibatch.

    ``batch`` holds this step's rows of every column; the caller substitutes the plate's
    indices under ``"rows"``. ``weights`` (optional) maps cost_scale, beta_global,
    beta_local and likelihood_weight to (traced) numbers applied with handlers.scale.
    """
    model = problem.model
    n = problem.total_size

    def numpyro_model(batch, weights=None):
        b = next(iter(batch.values())).shape[0]
        rows = numpyro.plate(ROWS, n, subsample_size=b)
        scale = (lambda k: handlers.scale(scale=weights[k])) if weights is not None else None
        env = {v.name: batch[v.name] for v in model.data_vars}
        with ExitStack() as outer:
            if scale:
                outer.enter_context(scale("cost_scale"))
            for v in model.vars.values():
                if v.role == "data":
                    continue
                if v.role == "param":  # point parameters: substituted by the caller
                    env[v.name] = numpyro.param(v.name, jnp.zeros(v.shape))
                    continue
                with ExitStack() as stack:
                    if v.role != "global":
                        stack.enter_context(rows)
                    if scale:
                        stack.enter_context(scale({"global": "beta_global", "local": "beta_local",
                                                   "observed": "likelihood_weight"}[v.role]))
                    if v.role == "observed":
                        obs = batch[v.name]
                        numpyro.sample(v.name, site_distribution(v, env, obs.shape), obs=obs)
                    else:
                        shape = ((b,) if v.role == "local" else ()) + tuple(v.shape)
                        env[v.name] = value_of(v, numpyro.sample(v.name,
                                                                 site_distribution(v, env, shape)))
            for v in model.potentials:  # weight 1 (klqp.objective), per-row ones in the plate
                value = evaluate(v.expr, env, JaxOps)
                with ExitStack() as stack:
                    if v.per_row:
                        stack.enter_context(rows)
                        value = value.reshape((b, -1)).sum(-1)
                    numpyro.factor(v.name, value if v.per_row else value.sum())

    return numpyro_model


def build_guide(problem: Problem, init: dict):
    """``guide(batch, weights=None)``: mean-field Normal q in unconstrained space, with
    param sites ``<latent>_loc`` / ``<latent>_scale`` initialised from ``init``."""
    model = problem.model
    n = problem.total_size

    def numpyro_guide(batch, weights=None):
        b = next(iter(batch.values())).shape[0]
        rows = numpyro.plate(ROWS, n, subsample_size=b)
        with ExitStack() as outer:
            if weights is not None:
                outer.enter_context(handlers.scale(scale=weights["cost_scale"]))
            env = dict(batch)
            env.update({v.name: numpyro.param(v.name, jnp.asarray(init[v.name]["value"]))
                        for v in model.params})
            for v in model.latents:
                if v.amortized:
                    loc, sd = (evaluate(e, env, JaxOps) for e in v.encoder)
                else:
                    loc = numpyro.param(f"{v.name}_loc", jnp.asarray(init[v.name]["loc"]))
                    sd = numpyro.param(f"{v.name}_scale", jnp.asarray(init[v.name]["scale"]),
                                       constraint=constraints.softplus_positive)
                with ExitStack() as stack:
                    if v.role == "local":
                        idx = stack.enter_context(rows)
                        if not v.amortized:
                            loc, sd = loc[idx], sd[idx]
                    if weights is not None:
                        stack.enter_context(handlers.scale(scale=weights[f"beta_{v.role}"]))
                    base = dist.Normal(loc, sd).to_event(len(v.shape))
                    numpyro.sample(v.name, dist.TransformedDistribution(base, transform(v.support)))

    return numpyro_guide


def build_row_densities(problem: Problem):
    """``densities(u, columns, point) -> klqp.objective.RowDensities``: the spec's
    log-densities, unscaled, one value per row.

    u: each latent's UNCONSTRAINED value (globals: their own shape; locals: (R, *shape));
    columns: R rows of every Data/Observed column; point: each kq.Param's value.
    loglik_rows (R,): sum over a row's observations of log p(y_i | .); local_logp_rows
    (R,): sum over a row's locals of log p(z_i | .) + log|J|; global_logp: sum over the
    globals of log p(theta) + log|J|; potential_rows (R,) and potential_global: the
    kq.Potential terms, per row and global. R is any number of rows: a batch, or a batch whose
    rows are repeated once per quadrature node. Every term of the objective, and the
    local step's row log joint, is built from these.
    """
    model = problem.model

    def densities(u: dict, columns: dict, point: dict):
        env = {v.name: columns[v.name] for v in model.data_vars}
        env.update(point)
        rows = columns[model.row_column].shape[0]
        global_logp = jnp.zeros(())
        loglik_rows = jnp.zeros(rows)
        local_logp_rows = jnp.zeros(rows)
        for v in model.vars.values():
            if v.role in ("data", "param"):
                continue
            if v.role == "observed":
                obs = columns[v.name]
                loglik_rows = loglik_rows + site_distribution(v, env, obs.shape).log_prob(obs)
                continue
            t = transform(v.support)
            x = t(u[v.name])
            local = v.role == "local"
            d = site_distribution(v, env, ((rows,) if local else ()) + tuple(v.shape))
            jac = t.log_abs_det_jacobian(u[v.name], x)
            if local:
                local_logp_rows = local_logp_rows + d.log_prob(x) + jac.reshape((rows, -1)).sum(-1)
            else:
                global_logp = global_logp + d.log_prob(x) + jac.sum()
            env[v.name] = value_of(v, x)
        potential_rows, potential_global = jnp.zeros(rows), jnp.zeros(())
        for v in model.potentials:
            value = evaluate(v.expr, env, JaxOps)
            if v.per_row:
                potential_rows = potential_rows + value.reshape((rows, -1)).sum(-1)
            else:
                potential_global = potential_global + value.sum()
        return RowDensities(global_logp, loglik_rows, local_logp_rows, potential_rows,
                            potential_global)

    return densities


def q_location(problem: Problem, params: dict, columns: dict) -> dict:
    """Each latent's q (loc, scale): a free latent's own parameters (locals: the rows
    given, aligned with ``columns``), an amortized local's encoder on ``columns``."""
    model = problem.model
    env = {**columns, **{v.name: params[v.name]["value"] for v in model.params}}
    out = {}
    for v in model.latents:
        if v.amortized:
            out[v.name] = tuple(evaluate(e, env, JaxOps) for e in v.encoder)
        else:
            out[v.name] = (params[v.name]["loc"], params[v.name]["scale"])
    return out


def build_terms(problem: Problem):
    """``terms(params, batch, noise, row_weights=None, stl=False) -> Terms`` (full-data
    nats, no weights).

    params: {latent: {"loc", "scale"}}, where a free local's arrays hold only the rows of
    ``batch`` (the caller gathers them, so gradients and optimizer updates touch b rows,
    not N), and {param: {"value"}}. An amortized local's loc and scale come from its
    encoder on the batch. noise: standard normal draws, locals with one row per batch
    row. Each latent's value is u = loc + scale * noise; log-densities of latents are in
    unconstrained space: log p(T(u)) + log|T'(u)| against log N(u; loc, scale).
    row_weights: see ``klqp.objective.terms_from_rows`` (default: 1 per row).
    stl: "sticking the landing" for free locals: their log q is taken with loc and scale
    held constant, so it adds no score term to the gradient (Roeder et al. 2017).
    """
    model = problem.model
    densities = build_row_densities(problem)

    def terms(params, batch, noise, row_weights=None, stl=False) -> Terms:
        point = {v.name: params[v.name]["value"] for v in model.params}
        q = q_location(problem, params, batch)
        rows = batch[model.row_column].shape[0]
        u, log_q_global, log_q_rows = {}, jnp.zeros(()), jnp.zeros(rows)
        for v in model.latents:
            loc, sd = q[v.name]
            u[v.name] = loc + sd * noise[v.name]
            if stl and v.role == "local" and not v.amortized:
                loc, sd = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(sd)
            log_q = dist.Normal(loc, sd).log_prob(u[v.name])
            if v.role == "local":
                log_q_rows = log_q_rows + log_q.reshape((rows, -1)).sum(-1)
            else:
                log_q_global = log_q_global + log_q.sum()
        d = densities(u, batch, point)
        weights = jnp.ones(rows) if row_weights is None else row_weights
        return terms_from_rows(total_size=problem.total_size, row_weights=weights,
                               loglik_rows=d.loglik_rows,
                               local_kl_rows=log_q_rows - d.local_logp_rows,
                               kl_global=log_q_global - d.global_logp,
                               potential_rows=d.potential_rows,
                               potential_global=d.potential_global, xp=jnp)

    return terms
