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
import jax.scipy.special
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from klqp.densities import continuous_bernoulli_log_norm
from klqp.distributions import interval_bounds, split_mixture
from klqp.expr import ArrayOps, evaluate
from klqp.transforms import ON_U, corr_cholesky_inverse, log_prior_on_u, value_on_u
from klqp.objective import RowDensities, Terms, terms_from_rows
from klqp.problem import Problem

ROWS = "rows"  # the plate's name, also the key its subsample indices are substituted under

_SUPPORT = {"real": constraints.real, "positive": constraints.positive,
            "unit_interval": constraints.unit_interval, "ordered": constraints.ordered_vector,
            # an ON_U Global's site holds u itself (PriorOnU)
            "simplex": constraints.real_vector, "corr_cholesky": constraints.real_matrix}


#: klqp.expr's array namespace for JAX.
JaxOps = ArrayOps(jnp, lgamma=jax.scipy.special.gammaln, sigmoid=jax.nn.sigmoid,
                  softplus=jax.nn.softplus,
                  log_sigmoid=jax.nn.log_sigmoid, relu=jax.nn.relu)


class ContinuousBernoulli(dist.Distribution):
    """Loaiza-Ganem & Cunningham (2019); NumPyro has none. With l the logits,
    log p(x) = x l - softplus(l) + log C, C = l / tanh(l / 2) (-> 2 as l -> 0)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval

    def __init__(self, logits, *, validate_args=None):
        self.logits = logits
        super().__init__(batch_shape=jnp.shape(logits), validate_args=validate_args)

    def log_prob(self, value):
        return (value * self.logits - jax.nn.softplus(self.logits)
                + continuous_bernoulli_log_norm(self.logits, jnp))


class HalfStudentT(dist.Distribution):
    """|StudentT(nu, 0, sigma)| on (0, inf); NumPyro has none. log p(x) is the
    StudentT's plus log 2 (PyMC's HalfStudentT)."""

    arg_constraints = {"nu": constraints.positive, "sigma": constraints.positive}
    support = constraints.positive

    def __init__(self, nu, sigma=1.0, *, validate_args=None):
        self.nu, self.sigma = nu, sigma
        self._student_t = dist.StudentT(nu, 0.0, sigma)
        super().__init__(batch_shape=self._student_t.batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        return jnp.abs(self._student_t.expand(self.batch_shape).sample(key, sample_shape))

    def log_prob(self, value):
        return self._student_t.log_prob(value) + jnp.log(2.0)


class NegativeBinomial(dist.Distribution):
    """Mean ``mu``, variance mu + mu^2 / alpha: NumPyro's NegativeBinomial2, with log p
    written with gammaln. NegativeBinomial2's (a GammaPoisson's) reads
    jax.scipy.special.betaln, which is ~1e-7 off in float64 (betaln(2.3, 10.0))."""

    arg_constraints = {"mu": constraints.positive, "alpha": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mu, alpha, *, validate_args=None):
        self.mu, self.alpha = mu, alpha
        super().__init__(batch_shape=jnp.broadcast_shapes(jnp.shape(mu), jnp.shape(alpha)),
                         validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        return dist.NegativeBinomial2(self.mu, self.alpha).expand(self.batch_shape).sample(
            key, sample_shape)

    def log_prob(self, value):
        mu, alpha = self.mu, self.alpha
        log_total = jnp.log(alpha + mu)
        return (gammaln(value + alpha) - gammaln(value + 1.0) - gammaln(alpha)
                + alpha * (jnp.log(alpha) - log_total) + value * (jnp.log(mu) - log_total))


class ZeroInflatedNegativeBinomial(dist.Distribution):
    """NegativeBinomial(mu, alpha) (the gammaln one above) with probability ``psi``, else
    an extra zero (PyMC's psi; NumPyro's ZeroInflatedNegativeBinomial2 has gate = 1 - psi
    and NegativeBinomial2's betaln): log p(0) = logaddexp(log1p(-psi), log psi + NB(0))."""

    arg_constraints = {"psi": constraints.unit_interval, "mu": constraints.positive,
                       "alpha": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, psi, mu, alpha, *, validate_args=None):
        self.psi, self.mu, self.alpha = psi, mu, alpha  # the pytree's fields: no others
        super().__init__(batch_shape=jnp.broadcast_shapes(jnp.shape(psi), jnp.shape(mu),
                                                          jnp.shape(alpha)),
                         validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        key_nb, key_keep = jax.random.split(key)
        nb = NegativeBinomial(self.mu, self.alpha).expand(self.batch_shape)
        counts = nb.sample(key_nb, sample_shape)
        keep = jax.random.bernoulli(key_keep, self.psi, sample_shape + self.batch_shape)
        return jnp.where(keep, counts, 0)

    def log_prob(self, value):
        nonzero = jnp.log(self.psi) + NegativeBinomial(self.mu, self.alpha).log_prob(value)
        return jnp.where(value == 0, jnp.logaddexp(jnp.log1p(-self.psi), nonzero), nonzero)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, stably at both ends (Maechler 2012)."""
    return jnp.where(x > -jnp.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


class PriorOnU(dist.Distribution):
    """The prior of a Global whose density klqp writes on its unconstrained numbers u
    (klqp.transforms.ON_U): a Dirichlet's u = (x, a), an LKJCholesky's (K, K) numbers;
    klqp.transforms.log_prior_on_u, one value per draw."""

    def __init__(self, family: str, params: dict, value_shape=(), *, validate_args=None):
        self.family, self.params = family, params
        if family == "Dirichlet":
            alpha = jnp.asarray(params["alpha"])
            batch, event = alpha.shape[:-1], alpha.shape[-1:]
        else:  # LKJCholesky: its (K, K), from the spec (params may be traced)
            batch, event = (), tuple(value_shape)
        super().__init__(batch_shape=batch, event_shape=event, validate_args=validate_args)

    @property
    def support(self):
        return constraints.real_vector if len(self.event_shape) == 1 else constraints.real_matrix

    def sample(self, key, sample_shape=()):
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape + self.event_shape
        aux = jax.random.normal(k2, shape)
        if self.family == "Dirichlet":
            p = dist.Dirichlet(self.params["alpha"]).sample(k1, sample_shape)
            x = jnp.log(p[..., :-1]) - jnp.log(p[..., -1:])
            return jnp.concatenate([x, aux[..., -1:]], axis=-1)
        size = self.event_shape[-1]
        chol = dist.LKJCholesky(size, self.params["eta"]).sample(k1, sample_shape)
        lower = jnp.tril(jnp.ones((size, size)), -1)
        return corr_cholesky_inverse(chol, jnp) + aux * (1.0 - lower)

    def log_prob(self, value):
        return log_prior_on_u(self.family, value, self.params, jnp, gammaln)


class OrderedLogistic(dist.Distribution):
    """PyMC's pm.OrderedLogistic(eta, cutpoints): labels 0..K-1, the K-1 cutpoints on the
    last axis. NumPyro's dist.OrderedLogistic takes log(probs) of differences of
    sigmoids (-inf, and NaN gradients, once a probability underflows); here log P(y = k) =
    log_sigmoid(eta - c_{k-1}) + log_sigmoid(c_k - eta) + log1mexp(c_{k-1} - c_k), each
    term left out at an end. Its draws are NumPyro's."""

    arg_constraints = {"eta": constraints.real, "cutpoints": constraints.ordered_vector}
    support = constraints.nonnegative_integer

    def __init__(self, eta, cutpoints, *, validate_args=None):
        self.eta, self.cutpoints = jnp.asarray(eta), jnp.asarray(cutpoints)
        batch = jnp.broadcast_shapes(jnp.shape(eta), jnp.shape(cutpoints)[:-1])
        super().__init__(batch_shape=batch, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eta = jnp.broadcast_to(self.eta, self.batch_shape)
        return dist.OrderedLogistic(eta, self.cutpoints).expand(self.batch_shape).sample(
            key, sample_shape)

    def log_prob(self, value):
        c, last = self.cutpoints, self.cutpoints.shape[-1]  # K - 1
        y = jnp.asarray(value)[..., None]
        at = jnp.arange(last)
        lo = jnp.sum(jnp.where(at == y - 1, c, 0.0), -1)  # c_{y-1} (0 where y = 0)
        hi = jnp.sum(jnp.where(at == y, c, 0.0), -1)      # c_y (0 where y = K-1)
        has_lo, has_hi = value > 0, value < last
        inner = has_lo & has_hi
        return (jnp.where(has_lo, jax.nn.log_sigmoid(self.eta - lo), 0.0)
                + jnp.where(has_hi, jax.nn.log_sigmoid(hi - self.eta), 0.0)
                + jnp.where(inner, _log1mexp(jnp.where(inner, lo - hi, -1.0)), 0.0))


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
    if family == "HalfCauchy":
        return dist.HalfCauchy(p["beta"])
    if family == "HalfStudentT":
        return HalfStudentT(p["nu"], p["sigma"])
    if family == "Cauchy":
        return dist.Cauchy(p["alpha"], p["beta"])
    if family == "Laplace":
        return dist.Laplace(p["mu"], p["b"])
    if family == "Uniform":
        return dist.Uniform(p["lower"], p["upper"])
    if family == "MvNormal":
        return dist.MultivariateNormal(p["mu"], scale_tril=p["chol"])
    if family == "Dirichlet":
        return dist.Dirichlet(p["alpha"])
    if family == "Weibull":  # NumPyro: Weibull(scale, concentration)
        return dist.Weibull(p["beta"], p["alpha"])
    if family == "NegativeBinomial":  # variance mu + mu^2 / alpha
        return NegativeBinomial(p["mu"], p["alpha"])
    if family == "ZeroInflatedPoisson":  # NumPyro's gate: the extra zero's probability
        return dist.ZeroInflatedPoisson(1.0 - p["psi"], p["mu"])
    if family == "ZeroInflatedNegativeBinomial":  # psi: the NegativeBinomial's weight
        return ZeroInflatedNegativeBinomial(p["psi"], p["mu"], p["alpha"])
    if family == "OrderedLogistic":
        return OrderedLogistic(p["eta"], p["cutpoints"])
    raise NotImplementedError(f"the numpyro backend has no lowering for {family!r}")


class Mixture(dist.Distribution):
    """A finite mixture of one family (kq.Mixture): log p(y) = logsumexp_k(log w_k +
    log p_k(y)), the weights on w's last axis. Only its log density is needed (it is a
    likelihood); NumPyro's MixtureGeneral would also do, with its own broadcasting rules."""

    arg_constraints = {}

    def __init__(self, weights, components, *, validate_args=None):
        self.weights, self.components = weights, components
        batch = jax.lax.broadcast_shapes(jnp.shape(weights)[:-1],
                                         *(c.batch_shape for c in components))
        super().__init__(batch_shape=batch, validate_args=validate_args)

    @property
    def support(self):
        return self.components[0].support

    def log_prob(self, value):
        logps = jnp.stack([c.log_prob(value) for c in self.components], axis=-1)
        return jax.scipy.special.logsumexp(jnp.log(self.weights) + logps, axis=-1)


def _mixture(dist_spec, params: dict) -> Mixture:
    w, parts = split_mixture(params)
    return Mixture(w, [_family(dist_spec.component, p) for p in parts])


def site_distribution(spec, env: dict, shape: tuple):
    """The NumPyro distribution of a variable, with batch shape ``shape`` made an event
    except for a leading row axis (the plate's dim) when ``shape`` has one more axis."""
    params = {k: evaluate(e, env, JaxOps) for k, e in spec.dist.params}
    if spec.dist.family in ON_U and spec.role != "observed":
        d = PriorOnU(spec.dist.family, params, spec.dist.value_shape)  # its site holds u
    else:
        d = (_mixture(spec.dist, params) if spec.dist.components
             else _family(spec.dist.family, params))
    own = len(shape) - len(d.event_shape)  # an MvNormal's draws span the last axis
    if d.batch_shape != shape[:own]:
        d = d.expand(shape[:own])
    event = (len(spec.shape) if spec.role != "observed" else len(shape) - 1) - len(d.event_shape)
    return d.to_event(event) if event else d


def value_of(spec, x):
    """A latent's value as the model's expressions read it: an ON_U Global's (a
    Dirichlet's p, an LKJCholesky's L) from its site's u, any other latent's x itself."""
    if spec.dist.family in ON_U:
        return value_on_u(spec.dist.family, x, jnp)
    return x


def transform(support: str):
    """The bijection from the real line onto ``support`` (klqp.distributions'), NumPyro's
    biject_to: exp, sigmoid, lower + (upper - lower) sigmoid, the ordered vector's."""
    bounds = interval_bounds(support)
    return biject_to(constraints.interval(*bounds) if bounds else _SUPPORT[support])


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
