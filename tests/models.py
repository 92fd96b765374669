"""Models and data shared by the tests: together they use every distribution, every
transform, global and local latents, vector latents, data columns and integer indexing."""

from __future__ import annotations

import numpy as np

import klqp as kq


def hierarchical(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    z = 1.5 * x + 0.7 * rng.normal(size=n)
    y = z + 0.5 * rng.normal(size=n)
    with kq.Model("hierarchical") as model:
        xd = kq.Data("x", shape=())
        theta = kq.Global("theta", kq.Normal(0.0, 1.0), shape=())
        sigma = kq.Global("sigma", kq.HalfNormal(1.0))
        zl = kq.Local("z", kq.Normal(theta * xd, 0.7))
        kq.Observed("y", kq.Normal(zl, sigma))
    return model, {"x": x, "y": y}


def logistic(n=300, d=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w_true = np.array([1.0, -2.0, 0.5])[:d]
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w_true - 0.3)))).astype(float)
    with kq.Model("logistic") as model:
        xd = kq.Data("x", shape=(d,))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(d,))
        b0 = kq.Global("b0", kq.StudentT(4.0, 0.0, 2.0))
        kq.Observed("y", kq.Bernoulli(logits=xd @ w + b0))
    return model, {"x": x, "y": y}


def counts(n=250, groups=4, seed=2):
    """Integer indexing of a global by a data column; Poisson, Binomial, Gamma, Beta,
    Exponential, Bernoulli(probs)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, size=n)
    rate = np.exp(np.linspace(-0.5, 1.0, groups))[g]
    with kq.Model("counts") as model:
        gd = kq.Data("g", dtype="int")
        tau = kq.Global("tau", kq.Gamma(2.0, 2.0))
        mu = kq.Global("mu", kq.Normal(0.0, 1.0 / tau), shape=(groups,))
        p = kq.Global("p", kq.Beta(2.0, 3.0))
        lam = kq.Global("lam", kq.Exponential(1.0))
        kq.Observed("k", kq.Poisson(kq.exp(mu[gd])))
        kq.Observed("m", kq.Binomial(5, probs=p))
        kq.Observed("c", kq.Bernoulli(probs=lam / (1.0 + lam)))
    data = {"g": g, "k": rng.poisson(rate), "m": rng.binomial(5, 0.4, size=n),
            "c": (rng.random(n) < 0.6).astype(float)}
    return model, data


def vector_locals(n=150, seed=3):
    """Vector-valued locals on (0, inf) and (0, 1); StudentT, Categorical, LogNormal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    with kq.Model("vector_locals") as model:
        xd = kq.Data("x", shape=(2,))
        scale = kq.Global("scale", kq.LogNormal(0.0, 0.5))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(2, 3))
        u = kq.Local("u", kq.LogNormal(0.0, scale), shape=(2,))
        frac = kq.Local("frac", kq.Beta(2.0, 2.0))
        kq.Observed("t", kq.StudentT(5.0, kq.sum(u * xd, -1) * frac, scale))
        kq.Observed("cls", kq.Categorical(logits=(xd * u) @ w))
    data = {"x": x, "t": rng.standard_t(5, size=n), "cls": rng.integers(0, 3, size=n)}
    return model, data


def vae(n=60, pixels=6, latent=2, seed=4):
    """Amortized locals with an MLP encoder, an MLP decoder of point parameters, a
    continuous-Bernoulli likelihood and a Normal one with a learnable (Param) scale."""
    rng = np.random.default_rng(seed)
    with kq.Model("vae") as model:
        enc = kq.nn.MLP("enc", [pixels, 5, 2 * latent], activation="tanh")
        z = kq.Local("z", kq.Normal(0.0, 1.0), shape=(latent,),
                     encoder=kq.nn.amortize(enc, "image"))
        dec = kq.nn.MLP("dec", [latent, 5, pixels], activation="softplus")
        log_sd = kq.Param("log_sd", (), init=-0.5)
        kq.Observed("image", kq.ContinuousBernoulli(logits=dec(z)))
        kq.Observed("feature", kq.Normal(kq.sum(z, -1), kq.exp(log_sd)))
    data = {"image": rng.random((n, pixels)), "feature": rng.normal(size=n)}
    return model, data


def bnn(n=80, d=3, classes=3, seed=5):
    """A Bayesian neural network: Dense layers whose weights are Global latents."""
    rng = np.random.default_rng(seed)
    with kq.Model("bnn") as model:
        x = kq.Data("x", shape=(d,))
        net = kq.nn.MLP("net", [d, 4, classes], activation="relu", prior=kq.Normal(0.0, 1.0))
        kq.Observed("label", kq.Categorical(logits=net(x)))
    data = {"x": rng.normal(size=(n, d)), "label": rng.integers(0, classes, size=n)}
    return model, data


def array_ops(n=90, d=3, seed=6):
    """Every array operation in one likelihood: a two-component log-sum-exp, stack,
    cumsum, expand_dims (x[..., None]), maximum/minimum, lgamma, sqrt, abs, log1p, where
    and the comparisons, reshape, NumPy-style tuple indexing; and kq.Potential terms, one
    per row and one global."""
    rng = np.random.default_rng(seed)
    with kq.Model("array_ops") as model:
        x = kq.Data("x", shape=(d,))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(d,))
        mus = kq.Global("mus", kq.Normal(0.0, 2.0), shape=(2,))
        s = kq.Global("s", kq.HalfNormal(1.0))
        z = kq.Local("z", kq.Normal(0.0, 1.0))
        lin = kq.sum(w * x, -1)
        mixed = kq.logsumexp(kq.stack([lin + mus[0], 0.5 * lin + z], -1), -1)
        spread = kq.sum(kq.sum(x[..., None] * mus, -1), -1) + 0.1 * kq.sum(kq.cumsum(x, -1), -1)
        mu = (mixed + 0.3 * spread + kq.maximum(z, -0.5) - kq.minimum(lin, 0.5)
              + 0.1 * kq.lgamma(1.5 + kq.abs(z)))
        grid = kq.reshape(kq.concat([x, x], -1), (2, d))          # (rows, 2, d)
        mu = mu + 0.2 * kq.where(x[:, 0] > 0.0, grid[..., 1, :][..., 0], -grid[:, 0, 1])
        mu = mu + 0.1 * kq.where(x[..., 1] <= mus[1], 1.0, 0.0) - 0.1 * (x[..., 2] < 0.5) \
            + 0.1 * (x[..., 2] >= z)
        kq.Observed("y", kq.Normal(mu, kq.sqrt(s) + 0.2 + kq.log1p(s)))
        kq.Potential("smooth", -0.5 * (z - 0.3 * lin) ** 2)      # per row: (N/b) * batch sum
        kq.Potential("shrink", -kq.sum(w ** 2, -1) - 0.1 * (mus[0] > mus[1]))  # global
    data = {"x": rng.normal(size=(n, d)), "y": rng.normal(size=n)}
    return model, data


_CHOL = np.linalg.cholesky(np.array([[1.0, 0.6, 0.2], [0.6, 1.5, -0.3], [0.2, -0.3, 0.8]]))


def more_families(n=200, seed=7):
    """Heavy tails and overdispersed counts: Cauchy, HalfCauchy, HalfStudentT, Laplace and
    Weibull as priors (global and local) and likelihoods; NegativeBinomial,
    ZeroInflatedPoisson, ZeroInflatedNegativeBinomial and OrderedLogistic (learned
    cutpoints, c0 + cumsum(exp(gaps)), and a Global with transform="ordered")
    likelihoods; Uniform, MvNormal and Dirichlet as priors and likelihoods; an
    LKJCholesky prior on an MvNormal likelihood's correlation."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    with kq.Model("more_families") as model:
        xd = kq.Data("x", shape=())
        a = kq.Global("a", kq.Cauchy(0.0, 2.0))
        b = kq.Global("b", kq.Laplace(0.0, 1.0))
        s = kq.Global("s", kq.HalfCauchy(1.0))
        t = kq.Global("t", kq.HalfStudentT(3.0, 1.0))
        k = kq.Global("k", kq.Weibull(2.0, 1.5))
        v = kq.Local("v", kq.Weibull(k, 1.0))
        kq.Observed("y", kq.Cauchy(a + b * xd, s))
        kq.Observed("e", kq.Laplace(b * xd, t))
        kq.Observed("w", kq.Weibull(k, s))
        kq.Observed("h", kq.HalfCauchy(t))
        kq.Observed("ht", kq.HalfStudentT(4.0, s))
        kq.Observed("nb", kq.NegativeBinomial(v * kq.exp(b * xd), t))
        kq.Observed("zip", kq.ZeroInflatedPoisson(kq.sigmoid(a), kq.exp(0.3 + b * xd)))
        kq.Observed("zinb", kq.ZeroInflatedNegativeBinomial(kq.sigmoid(b + 1.0),
                                                            kq.exp(0.2 + a * xd), k))
        gaps = kq.Global("gaps", kq.Normal(0.0, 1.0), shape=(2,))
        kq.Observed("ord", kq.OrderedLogistic(a + b * xd, -0.5 + kq.cumsum(kq.exp(gaps), -1)))
        cut = kq.Global("cut", kq.Normal(0.0, 2.0), shape=(3,), transform="ordered")
        kq.Observed("ord2", kq.OrderedLogistic(b * xd, cut))
        r = kq.Global("r", kq.Uniform(0.1, 3.0))
        kq.Observed("un", kq.Uniform(-1.0, 5.0))
        kq.Observed("ur", kq.Normal(r * xd, r))
        f = kq.Global("f", kq.MvNormal(np.zeros(3), 2.0 * _CHOL))  # correlated coordinates
        g = kq.Local("g", kq.MvNormal(0.5 * f[:2], np.eye(2)))
        kq.Observed("mv", kq.MvNormal(f + b * xd[..., None] + kq.concat([g, g[..., :1]], -1),
                                      s * _CHOL))
        pw = kq.Global("pw", kq.Dirichlet(np.array([2.0, 1.0, 1.5])))
        kq.Observed("cat", kq.Categorical(logits=kq.log(pw)))
        kq.Observed("comp", kq.Dirichlet(5.0 * pw + 0.5 + 0.1 * kq.exp(b * xd)[..., None]))
        corr = kq.Global("corr", kq.LKJCholesky(3, eta=1.5))  # a covariance's factor
        kq.Observed("mvc", kq.MvNormal(b * xd[..., None], t * corr))
    mean = np.exp(0.5 + 0.4 * x)
    data = {"x": x, "y": 0.5 + x + 0.8 * rng.standard_cauchy(n),
            "e": x + rng.laplace(0.0, 0.7, n), "w": 1.2 * rng.weibull(1.8, n),
            "h": 0.8 * np.abs(rng.standard_cauchy(n)), "ht": 1.1 * np.abs(rng.standard_t(4, n)),
            "nb": rng.poisson(rng.gamma(2.0, mean / 2.0)),
            "zip": rng.poisson(np.exp(0.3 + 0.3 * x)) * (rng.random(n) < 0.7),
            "zinb": rng.poisson(rng.gamma(1.5, mean / 1.5)) * (rng.random(n) < 0.6),
            "ord": ((0.8 * x + rng.logistic(size=n))[:, None] > np.array([-0.5, 0.7])).sum(1),
            "ord2": ((0.8 * x + rng.logistic(size=n))[:, None] > np.array([-1.0, 0.0, 1.0])).sum(1),
            "un": rng.uniform(-1.0, 5.0, n), "ur": 1.3 * x + 1.3 * rng.normal(size=n),
            "mv": x[:, None] + rng.normal(size=(n, 3)) @ _CHOL.T,
            "cat": rng.choice(3, n, p=[0.5, 0.2, 0.3]), "comp": rng.dirichlet([2.0, 3.0, 4.0], n),
            "mvc": rng.normal(size=(n, 3)) @ np.linalg.cholesky(
                [[1.0, 0.5, 0.2], [0.5, 1.0, -0.3], [0.2, -0.3, 1.0]]).T}
    return model, data


def mixture(n=90, seed=8):
    """A three-component Gaussian mixture likelihood with a regression in each mean, and a
    Poisson mixture with per-row weights (kq.Mixture)."""
    rng = np.random.default_rng(seed)
    with kq.Model("mixture") as model:
        x = kq.Data("x")
        a = kq.Global("a", kq.Normal(0.0, 1.0), shape=(3,))
        mus = kq.Global("mus", kq.Normal(0.0, 3.0), shape=(3,))
        s = kq.Global("s", kq.HalfNormal(1.0))
        b = kq.Global("b", kq.Normal(0.0, 1.0))
        w = kq.exp(a - kq.logsumexp(a, -1)[..., None])  # a simplex from 3 free numbers
        kq.Observed("y", kq.Mixture(w, [kq.Normal(mus[k] + b * x, s) for k in range(3)]))
        rates = kq.exp(mus[0:2] * 0.3)
        row_w = kq.stack([kq.sigmoid(b * x), 1.0 - kq.sigmoid(b * x)], -1)
        kq.Observed("c", kq.Mixture(row_w, [kq.Poisson(rates[0]), kq.Poisson(rates[1] + 2.0)]))
    data = {"x": rng.normal(size=n), "y": rng.normal(size=n) * 2.0,
            "c": rng.poisson(2.0, size=n)}
    return model, data


ALL = {"hierarchical": hierarchical, "logistic": logistic, "counts": counts,
       "vector_locals": vector_locals, "vae": vae, "bnn": bnn, "array_ops": array_ops,
       "mixture": mixture,
       "more_families": more_families}


def draw_noise(model, n_rows, rng):
    return {v.name: rng.standard_normal(((n_rows,) if v.role == "local" else ()) + v.shape)
            for v in model.latents}


def random_params(model, total, rng):
    """Parameters away from the init, so the checks see non-trivial values."""
    out = {}
    for v in model.params:
        out[v.name] = {"value": 0.5 * rng.standard_normal(v.shape)}
    for v in model.latents:
        if v.amortized:
            continue
        shape = ((total,) if v.role == "local" else ()) + v.shape
        out[v.name] = {"loc": 0.5 * rng.standard_normal(shape),
                       "scale": np.exp(0.3 * rng.standard_normal(shape) - 0.5)}
    return out
