"""An independent NumPy/SciPy evaluation of docs/objective.md's loss, for the agreement tests.

It shares nothing with the backends but klqp's expression evaluator: densities come
from scipy.stats, transforms are written out here.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from klqp.expr import NumpyOps, evaluate


def _forward(support, u):
    """x = T(u) and log |T'(u)| entry by entry (written out, not klqp.transforms')."""
    if support == "real":
        return u, np.zeros_like(u)
    if support == "positive":
        return np.exp(u), u
    if support in ("simplex", "corr_cholesky"):  # u is the site's value itself (below)
        return u, np.zeros_like(u)
    if support == "ordered":  # x_0 = u_0, x_k = x_{k-1} + exp(u_k)
        steps = np.concatenate([u[..., :1], np.exp(u[..., 1:])], axis=-1)
        return np.cumsum(steps, axis=-1), np.concatenate([0.0 * u[..., :1], u[..., 1:]], -1)
    x = special.expit(u)
    if support.startswith("interval("):  # "interval(lower, upper)": lower + width * expit(u)
        lower, upper = (float(v) for v in support[9:-1].split(","))
        return lower + (upper - lower) * x, np.log(upper - lower) + np.log(x) + np.log1p(-x)
    return x, np.log(x) + np.log1p(-x)


def logpdf(family: str, x, p: dict, component: str = ""):
    if family == "Mixture":  # log sum_k w_k p_k(x), by scipy's logsumexp
        parts: dict = {}
        for key, value in p.items():
            if key != "w":
                name, k = key.rsplit("_", 1)
                parts.setdefault(int(k), {})[name] = value
        logps = np.stack([logpdf(component, x, parts[k]) for k in sorted(parts)], axis=-1)
        return special.logsumexp(logps, axis=-1, b=np.asarray(p["w"], float))
    if family == "Normal":
        return stats.norm.logpdf(x, p["mu"], p["sigma"])
    if family == "HalfNormal":
        return stats.halfnorm.logpdf(x, scale=p["sigma"])
    if family == "LogNormal":
        return stats.lognorm.logpdf(x, s=p["sigma"], scale=np.exp(p["mu"]))
    if family == "Exponential":
        return stats.expon.logpdf(x, scale=1.0 / p["lam"])
    if family == "Gamma":
        return stats.gamma.logpdf(x, a=p["alpha"], scale=1.0 / p["beta"])
    if family == "Beta":
        return stats.beta.logpdf(x, p["alpha"], p["beta"])
    if family == "StudentT":
        return stats.t.logpdf(x, df=p["nu"], loc=p["mu"], scale=p["sigma"])
    if family == "Bernoulli":
        logits = p["logits"] if "logits" in p else special.logit(p["probs"])
        return x * logits - np.logaddexp(0.0, logits)
    if family == "Binomial":
        prob = p["probs"] if "probs" in p else special.expit(p["logits"])
        return stats.binom.logpmf(x, p["n"], prob)
    if family == "Poisson":
        return stats.poisson.logpmf(x, p["mu"])
    if family == "ContinuousBernoulli":
        lam = special.expit(p["logits"]) if "logits" in p else p["probs"]
        lam = np.broadcast_to(lam, np.shape(x))
        near = np.abs(lam - 0.5) < 1e-4
        safe = np.where(near, 0.25, lam)
        log_c = np.where(near, np.log(2.0) + 4.0 / 3.0 * (lam - 0.5) ** 2,
                         np.log(2.0 * np.arctanh(1 - 2 * safe) / (1 - 2 * safe)))
        return x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c
    if family == "HalfCauchy":
        return stats.halfcauchy.logpdf(x, scale=p["beta"])
    if family == "HalfStudentT":  # scipy has none: twice the t density on x >= 0
        return np.where(np.asarray(x) >= 0, stats.t.logpdf(x, df=p["nu"], scale=p["sigma"])
                        + np.log(2.0), -np.inf)
    if family == "Cauchy":
        return stats.cauchy.logpdf(x, loc=p["alpha"], scale=p["beta"])
    if family == "Laplace":
        return stats.laplace.logpdf(x, loc=p["mu"], scale=p["b"])
    if family == "Uniform":
        return stats.uniform.logpdf(x, loc=p["lower"], scale=p["upper"] - p["lower"])
    if family == "Dirichlet":  # one draw per last axis
        x = np.asarray(x, float)
        alpha = np.broadcast_to(p["alpha"], x.shape)
        flat = [stats.dirichlet.logpdf(xi, ai) for xi, ai in
                zip(x.reshape(-1, x.shape[-1]), alpha.reshape(-1, x.shape[-1]))]
        return np.asarray(flat).reshape(x.shape[:-1])
    if family == "LKJCholesky":  # Lewandowski, Kurowicka & Joe (2009): C = L L^T has
        # density det(C)^(eta - 1) / c_K, c_K = prod_k 2^((2 eta - 2 + K - k)(K - k))
        # B(b_k, b_k)^(K - k), b_k = eta + (K - k - 1) / 2; L -> C has Jacobian
        # prod_i L_ii^(K - i)
        x = np.asarray(x, float)
        size, eta = x.shape[-1], float(p["eta"])
        log_diag = np.log(np.diagonal(x, axis1=-2, axis2=-1))
        k = np.arange(1, size)
        log_c = np.sum((2 * eta - 2 + size - k) * (size - k) * np.log(2.0)
                       + (size - k) * special.betaln(eta + (size - k - 1) / 2,
                                                     eta + (size - k - 1) / 2))
        return (2 * (eta - 1) * log_diag.sum(-1)
                + ((size - np.arange(1, size + 1)) * log_diag).sum(-1) - log_c)
    if family == "MvNormal":  # one draw per last axis: scipy's, draw by draw
        x = np.asarray(x, float)
        mu = np.broadcast_to(p["mu"], x.shape)
        chol = np.broadcast_to(p["chol"], x.shape + x.shape[-1:])
        flat = [stats.multivariate_normal.logpdf(xi, mi, ci @ ci.T) for xi, mi, ci in
                zip(x.reshape(-1, x.shape[-1]), mu.reshape(-1, x.shape[-1]),
                    chol.reshape(-1, x.shape[-1], x.shape[-1]))]
        return np.asarray(flat).reshape(x.shape[:-1])
    if family == "Weibull":
        return stats.weibull_min.logpdf(x, c=p["alpha"], scale=p["beta"])
    if family == "NegativeBinomial":
        return stats.nbinom.logpmf(x, n=p["alpha"], p=p["alpha"] / (p["alpha"] + p["mu"]))
    if family == "ZeroInflatedPoisson":  # psi: the Poisson's weight, 1 - psi: an extra zero
        poisson = np.log(p["psi"]) + stats.poisson.logpmf(x, p["mu"])
        return np.where(np.asarray(x) == 0, np.log((1 - p["psi"]) + p["psi"] * np.exp(-p["mu"])),
                        poisson)
    if family == "Categorical":
        logp = p["logits"] - special.logsumexp(p["logits"], axis=-1, keepdims=True)
        logp = np.broadcast_to(logp, np.shape(x) + logp.shape[-1:])
        return np.take_along_axis(logp, np.asarray(x, int)[..., None], axis=-1)[..., 0]
    if family == "ZeroInflatedNegativeBinomial":  # psi: the NegativeBinomial's weight
        q = p["alpha"] / (p["alpha"] + p["mu"])
        nb = np.log(p["psi"]) + stats.nbinom.logpmf(x, n=p["alpha"], p=q)
        return np.where(np.asarray(x) == 0,
                        np.log((1 - p["psi"]) + p["psi"] * stats.nbinom.pmf(0, n=p["alpha"], p=q)),
                        nb)
    if family == "OrderedLogistic":  # P(y = k) = F(c_k - eta) - F(c_{k-1} - eta), F = expit
        c = np.asarray(p["cutpoints"], float)
        cdf = special.expit(c - np.asarray(p["eta"], float)[..., None])
        cdf = np.concatenate([np.zeros(cdf.shape[:-1] + (1,)), cdf,
                              np.ones(cdf.shape[:-1] + (1,))], axis=-1)
        probs = np.diff(cdf, axis=-1)
        probs = np.broadcast_to(probs, np.broadcast_shapes(np.shape(x), probs.shape[:-1])
                                + probs.shape[-1:])
        x = np.broadcast_to(np.asarray(x, int), probs.shape[:-1])
        return np.log(np.take_along_axis(probs, x[..., None], axis=-1)[..., 0])
    raise NotImplementedError(family)


def _per_entry(family, logp, shape):
    """A density's values broadcast to the value's entries; an MvNormal has one per draw."""
    events = {"MvNormal": 1, "Dirichlet": 1, "LKJCholesky": 2}.get(family, 0)
    return np.broadcast_to(logp, shape[:len(shape) - events])


def corr_cholesky(u):
    """An LKJCholesky Global's L from its (K, K) numbers u, row by row (written out, not
    klqp.transforms'), and log |dL/du| over u's strictly lower triangle: z = tanh(u),
    L_ij = z_ij sqrt(1 - sum_{k<j} L_ik^2), L_ii = sqrt(1 - sum_{k<i} L_ik^2)."""
    size = u.shape[-1]
    chol, log_jac = np.zeros_like(u), 0.0
    for i in range(size):
        left = 1.0
        for j in range(i):
            z = np.tanh(u[i, j])
            chol[i, j] = z * np.sqrt(left)
            log_jac += np.log1p(-z * z) + 0.5 * np.log(left)  # dz/du, then d L_ij / dz
            left -= chol[i, j] ** 2
        chol[i, i] = np.sqrt(left)
    return chol, log_jac


def reference_terms(problem, params, indices, noise, *, step=0):
    """docs/objective.md's loss and terms, computed with NumPy in float64."""
    model, n = problem.model, problem.total_size
    b = len(indices)
    ratio = n / b
    env = {v.name: problem.data[v.name][indices] for v in model.data_vars}
    env.update({v.name: np.asarray(params[v.name]["value"]) for v in model.params})
    columns = {k: a[indices] for k, a in problem.data.items()}
    loglik, kl_global, kl_local = 0.0, 0.0, 0.0
    for v in model.vars.values():
        if v.role in ("data", "param"):
            continue
        p = {k: np.asarray(evaluate(e, env, NumpyOps), float) for k, e in v.dist.params}
        if v.role == "observed":
            y = problem.data[v.name][indices]
            loglik += ratio * np.sum(_per_entry(v.dist.family, logpdf(v.dist.family, y, p,
                                                                       v.dist.component),
                                                     y.shape))
            continue
        if v.amortized:
            enc_env = {**columns, **{q.name: env[q.name] for q in model.params}}
            loc, scale = (np.asarray(evaluate(e, enc_env, NumpyOps), float) for e in v.encoder)
        else:
            loc, scale = np.asarray(params[v.name]["loc"]), np.asarray(params[v.name]["scale"])
            if v.role == "local":
                loc, scale = loc[indices], scale[indices]
        u = loc + scale * np.asarray(noise[v.name])
        x, log_jac = _forward(v.support, u)
        log_q = np.sum(stats.norm.logpdf(u, loc, scale))
        if v.dist.family == "Dirichlet":  # u = (x, a): p = softmax([x, 0]), a ~ N(0, 1)
            logits = np.concatenate([x[..., :-1], np.zeros_like(x[..., :1])], axis=-1)
            x = special.softmax(logits, axis=-1)
            log_p = (np.sum(stats.dirichlet.logpdf(x, np.asarray(p["alpha"], float)))
                     + np.sum(np.log(x)) + np.sum(stats.norm.logpdf(u[..., -1])))
        elif v.dist.family == "LKJCholesky":  # u's other entries: auxiliaries ~ N(0, 1)
            x, log_jac = corr_cholesky(u)
            aux = u[np.triu_indices(u.shape[-1])]
            log_p = logpdf("LKJCholesky", x, p) + log_jac + np.sum(stats.norm.logpdf(aux))
        else:
            log_p = np.sum(_per_entry(v.dist.family, logpdf(v.dist.family, x, p), u.shape)) \
                + np.sum(log_jac)
        if v.role == "global":
            kl_global += log_q - log_p
        else:
            kl_local += ratio * (log_q - log_p)
        env[v.name] = x
    potential = 0.0  # per-row potentials: (N/b) * the batch's sum; global ones: once
    for v in model.potentials:
        value = np.sum(np.asarray(evaluate(v.expr, env, NumpyOps), float))
        potential += ratio * value if v.per_row else value
    w = {k: float(val) for k, val in problem.weights.at(step).items()}
    s = b / n if problem.scale_cost_to_minibatch else 1.0
    loss = s * (-w["likelihood_weight"] * loglik - potential + w["beta_global"] * kl_global
                + w["beta_local"] * kl_local)
    return {"loss": loss, "elbo": loglik + potential - kl_global - kl_local, "loglik": loglik,
            "kl_global": kl_global, "kl_local": kl_local, "potential": potential}
