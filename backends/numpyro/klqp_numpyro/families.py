"""klqp's families as NumPyro distributions, and what the lowering needs of a variable:
its site's distribution (``site_distribution``), the value the model reads from its
site (``value_of``) and its support's bijection (``transform``).

NumPyro's own classes serve where they are PyMC's parametrization; the others are
written here (ContinuousBernoulli, HalfStudentT, NegativeBinomial in mean-dispersion,
ZeroInflatedNegativeBinomial, OrderedLogistic on log-sigmoids, Mixture), and PriorOnU
carries the prior of a Global whose density klqp writes on its unconstrained numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from klqp.densities import continuous_bernoulli_logp, ordered_logistic_logp
from klqp.distributions import interval_bounds, split_mixture
from klqp.expr import ArrayOps, evaluate
from klqp.transforms import ON_U, corr_cholesky_inverse, log_prior_on_u, value_on_u

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
        return continuous_bernoulli_logp(value, self.logits, jnp)


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


class PriorOnU(dist.Distribution):
    """The prior of a Global whose density klqp writes on its unconstrained numbers u
    (klqp.transforms.ON_U): a Dirichlet's u = (x, a), an LKJCholesky's (K, K) numbers;
    klqp.transforms.log_prior_on_u, one value per draw."""

    # kept when JAX flattens and rebuilds the distribution (it has no arg_constraints)
    pytree_data_fields = ("params",)
    pytree_aux_fields = ("family",)

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
    last axis, log P on log-sigmoids (``klqp.densities.ordered_logistic_logp``: NumPyro's
    dist.OrderedLogistic takes log(probs) of differences of sigmoids). Its draws are
    NumPyro's."""

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
        return ordered_logistic_logp(value, self.eta, self.cutpoints, jnp)


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
