"""Lowering a klqp spec to a NumPyro model and guide, and the objective's terms.

The model is an ordinary NumPyro program: globals are sample sites outside any plate,
locals and observations sit in ``plate("rows", N, subsample_size=b)`` so NumPyro puts
N/b on them, and (when weights are given) ``handlers.scale`` puts s, beta_global,
beta_local and T on their sites. The guide is mean-field Normal in each latent's
unconstrained space; a local's loc/scale arrays have N rows and the guide reads the
minibatch rows.

The training loss does not call ``Trace_ELBO``: it substitutes the reparameterized
values into the model, reads each site's (plate-scaled) log-density from the trace,
groups them into klqp's three terms and hands them to ``klqp.objective.loss``. That
keeps the terms apart for the history and makes the loss a function of the noise,
which the cross-backend tests fix.
"""

from __future__ import annotations

from contextlib import ExitStack

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from klqp.expr import evaluate
from klqp.objective import Terms
from klqp.problem import Problem

ROWS = "rows"  # the plate's name, also the key its subsample indices are substituted under

_SUPPORT = {"real": constraints.real, "positive": constraints.positive,
            "unit_interval": constraints.unit_interval}


class JaxOps:
    """klqp.expr's array namespace for JAX."""

    exp, log, tanh = jnp.exp, jnp.log, jnp.tanh
    sigmoid, softplus = staticmethod(jax.nn.sigmoid), staticmethod(jax.nn.softplus)
    log_sigmoid, relu = staticmethod(jax.nn.log_sigmoid), staticmethod(jax.nn.relu)

    @staticmethod
    def sum(x, axis):
        return jnp.sum(x, axis=axis)

    @staticmethod
    def mean(x, axis):
        return jnp.mean(x, axis=axis)

    @staticmethod
    def const(value):
        return jnp.asarray(value)


class ContinuousBernoulli(dist.Distribution):
    """Loaiza-Ganem & Cunningham (2019); NumPyro has none. With l the logits,
    log p(x) = x l - softplus(l) + log C, C = l / tanh(l / 2) (-> 2 as l -> 0)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval

    def __init__(self, logits, *, validate_args=None):
        self.logits = logits
        super().__init__(batch_shape=jnp.shape(logits), validate_args=validate_args)

    def log_prob(self, value):
        a = jnp.abs(self.logits)
        small = a < 1e-3
        safe = jnp.where(small, 1.0, a)
        log_norm = jnp.where(small, jnp.log(2.0 + a * a / 6.0), jnp.log(safe / jnp.tanh(safe / 2)))
        return value * self.logits - jax.nn.softplus(self.logits) + log_norm


def _family(family: str, p: dict):
    if family == "Normal":
        return dist.Normal(p["mu"], p["sigma"])
    if family == "HalfNormal":
        return dist.HalfNormal(p["sigma"])
    if family == "LogNormal":
        return dist.LogNormal(p["mu"], p["sigma"])
    if family == "Exponential":
        return dist.Exponential(p["lam"])
    if family == "Gamma":
        return dist.Gamma(p["alpha"], p["beta"])
    if family == "Beta":
        return dist.Beta(p["alpha"], p["beta"])
    if family == "StudentT":
        return dist.StudentT(p["nu"], p["mu"], p["sigma"])
    if family == "Bernoulli":
        return dist.Bernoulli(probs=p.get("probs"), logits=p.get("logits"))
    if family == "Binomial":
        return dist.Binomial(total_count=p["n"], probs=p.get("probs"), logits=p.get("logits"))
    if family == "Poisson":
        return dist.Poisson(p["mu"])
    if family == "Categorical":
        return dist.Categorical(logits=p["logits"])
    if family == "ContinuousBernoulli":
        logits = p["logits"] if "logits" in p else jnp.log(p["probs"]) - jnp.log1p(-p["probs"])
        return ContinuousBernoulli(logits)
    raise NotImplementedError(f"the numpyro backend has no lowering for {family!r}")


def site_distribution(spec, env: dict, shape: tuple):
    """The NumPyro distribution of a variable, with batch shape ``shape`` made an event
    except for a leading row axis (the plate's dim) when ``shape`` has one more axis."""
    params = {k: evaluate(e, env, JaxOps) for k, e in spec.dist.params}
    d = _family(spec.dist.family, params)
    if d.batch_shape != shape:
        d = d.expand(shape)
    event = len(spec.shape) if spec.role != "observed" else len(shape) - 1
    return d.to_event(event) if event else d


def transform(support: str):
    return biject_to(_SUPPORT[support])


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
                        env[v.name] = numpyro.sample(v.name, site_distribution(v, env, shape))

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


def build_terms(problem: Problem):
    """``terms(params, batch, indices, noise) -> Terms`` (full-data nats, no weights).

    params: {latent: {"loc", "scale"}}, where a free local's arrays hold only this
    batch's rows (the caller gathers them, so gradients and optimizer updates touch b
    rows, not N), and {param: {"value"}}. An amortized local's loc and scale come from
    its encoder on the batch. noise: standard normal draws, locals with b rows. Log-densities of latents are in unconstrained
    space: log p(T(u)) + log|T'(u)| against log N(u; loc, scale).
    """
    model = problem.model
    numpyro_model = build_model(problem)

    def terms(params, batch, indices, noise) -> Terms:
        values, unconstrained, log_q = {}, {}, {}
        point = {v.name: params[v.name]["value"] for v in model.params}
        encoder_env = {**batch, **point}
        for v in model.latents:
            if v.amortized:
                loc, sd = (evaluate(e, encoder_env, JaxOps) for e in v.encoder)
            else:
                loc, sd = params[v.name]["loc"], params[v.name]["scale"]
            u = loc + sd * noise[v.name]
            unconstrained[v.name] = u
            values[v.name] = transform(v.support)(u)
            log_q[v.name] = dist.Normal(loc, sd).log_prob(u).sum()
        trace = handlers.trace(handlers.substitute(numpyro_model,
                                                   data={**values, **point, ROWS: indices}))
        sites = trace.get_trace(batch)
        loglik, kl = 0.0, {"global": 0.0, "local": 0.0}
        for v in model.vars.values():
            if v.role in ("data", "param"):
                continue
            site = sites[v.name]
            scale = 1.0 if site["scale"] is None else site["scale"]  # N/b inside the plate
            log_p = site["fn"].log_prob(site["value"]).sum()
            if v.role == "observed":
                loglik = loglik + scale * log_p
            else:
                u = unconstrained[v.name]
                log_p = log_p + transform(v.support).log_abs_det_jacobian(u, values[v.name]).sum()
                kl[v.role] = kl[v.role] + scale * (log_q[v.name] - log_p)
        return Terms(loglik=loglik, kl_global=kl["global"], kl_local=kl["local"])

    return terms
