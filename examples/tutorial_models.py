"""Tutorial models in klqp, each checked against a NUTS posterior of the same model.

Does a minibatch klqp fit of a mixture, a zero-inflated count regression and an ordinal
regression land where the exact posterior is? Each model is written once in klqp and once
in NumPyro, with the same priors, on the same simulated data (2,000 rows); the klqp fit
(mean-field Gaussian q, kq.fit's default step rule, batches of 256 rows) is compared with
NumPyro's NUTS (500 warm-up draws, 1,000 draws), number by number, in each parameter's
own space:

- mixture: y ~ sum_k w_k Normal(mu_k, sigma_k), K = 2 (``--components 3`` for three),
  ordered means mu = m0 + [0, cumsum(exp(log_gaps))] (no label switching), weights
  w = softmax([0, a]) (K - 1 free numbers: identified), sigma_k ~ HalfNormal(2);
- zero_inflated: y ~ ZeroInflatedPoisson(psi, exp(b0 + b1 x)), psi ~ Beta(2, 2) the
  Poisson component's probability (PyMC's convention; NumPyro's gate is 1 - psi);
- ordinal: y in {0..4} ~ OrderedLogistic(x @ beta, cutpoints), P = 2 predictors,
  cutpoints = c0 + [0, cumsum(exp(log_gaps))].

For each number it prints q's mean, NUTS's mean and sd, |q mean - NUTS mean| / NUTS sd
and q sd / NUTS sd. Mean-field q has no correlations, so where the posterior has strong
ones (a mixture's lowest mean and its gap, a regression's intercept and slope) q's sds
are smaller than NUTS's, as mean-field VI's always are; its means are still close. The
last column, "mean-field", is the q sd / NUTS sd that the exact mean-field optimum would
have if the posterior were Gaussian with NUTS's covariance S (1 / sqrt((S^-1)_ii) over
sqrt(S_ii), in q's unconstrained space): where q's ratio matches it, the shortfall is
mean-field's, not the fit's.

    python examples/tutorial_models.py --backend pymc
    python examples/tutorial_models.py --model ordinal --steps 1000
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_ENABLE_X64", "1")  # NUTS in float64, as bench/ does; before jax

import time

import numpy as np

import klqp as kq
from klqp import transforms
from klqp.cli import example_parser, step_rule

TOTAL_SIZE = 2000  # rows each model's data set has; `klqp explain` reads it
MODELS = ("mixture", "zero_inflated", "ordinal")
MIXTURES = {  # components -> the weights, means and sds that make the mixture's data
    2: ((0.35, 0.65), (-1.5, 2.0), (0.8, 1.0)),
    3: ((0.3, 0.5, 0.2), (-2.0, 1.0, 4.0), (0.7, 0.5, 1.0)),
}
ORDINAL_BETA, ORDINAL_CUTPOINTS = (1.0, -0.5), (-1.5, -0.3, 0.6, 1.8)  # K = 5 categories


# --- data -----------------------------------------------------------------------------

def make_data(name: str, n: int = TOTAL_SIZE, seed: int = 0, components: int = 2) -> dict:
    rng = np.random.default_rng([seed, MODELS.index(name)])
    if name == "mixture":
        w, mu, sd = (np.array(v) for v in MIXTURES[components])
        k = rng.choice(components, size=n, p=w)
        return {"y": mu[k] + sd[k] * rng.normal(size=n)}
    if name == "zero_inflated":  # b0 = 0.5, b1 = 0.8, psi = 0.7
        x = rng.normal(size=n)
        counts = rng.poisson(np.exp(0.5 + 0.8 * x))
        return {"x": x, "y": np.where(rng.uniform(size=n) < 0.7, counts, 0)}
    if name == "ordinal":
        x = rng.normal(size=(n, 2))
        latent = x @ np.array(ORDINAL_BETA) + rng.logistic(size=n)
        return {"x": x, "y": (latent[:, None] > np.array(ORDINAL_CUTPOINTS)).sum(-1)}
    raise ValueError(f"unknown model {name!r}; one of {MODELS}")


# --- the models in klqp ---------------------------------------------------------------

def build_model(name: str = "mixture", components: int = 2) -> kq.Model:
    with kq.Model(name) as model:
        if name == "mixture":
            K = components
            m0 = kq.Global("m0", kq.Normal(0.0, 5.0))
            log_gaps = kq.Global("log_gaps", kq.Normal(0.0, 1.5), shape=(K - 1,))
            a = kq.Global("a", kq.Normal(0.0, 1.5), shape=(K - 1,))
            sigma = kq.Global("sigma", kq.HalfNormal(2.0), shape=(K,))
            mu = m0 + kq.concat([[0.0], kq.cumsum(kq.exp(log_gaps), -1)], -1)
            logits = kq.concat([[0.0], a], -1)
            w = kq.exp(logits - kq.logsumexp(logits, -1)[..., None])
            kq.Observed("y", kq.Mixture(w, [kq.Normal(mu[k], sigma[k]) for k in range(K)]))
        elif name == "zero_inflated":
            x = kq.Data("x")
            b0 = kq.Global("b0", kq.Normal(0.0, 2.0))
            b1 = kq.Global("b1", kq.Normal(0.0, 2.0))
            psi = kq.Global("psi", kq.Beta(2.0, 2.0))
            kq.Observed("y", kq.ZeroInflatedPoisson(psi, kq.exp(b0 + b1 * x)))
        elif name == "ordinal":
            K = len(ORDINAL_CUTPOINTS) + 1
            x = kq.Data("x", shape=(2,))
            beta = kq.Global("beta", kq.Normal(0.0, 2.0), shape=(2,))
            c0 = kq.Global("c0", kq.Normal(0.0, 5.0))
            log_gaps = kq.Global("log_gaps", kq.Normal(0.0, 1.5), shape=(K - 2,))
            cutpoints = c0 + kq.concat([[0.0], kq.cumsum(kq.exp(log_gaps), -1)], -1)
            kq.Observed("y", kq.OrderedLogistic(x @ beta, cutpoints))
        else:
            raise ValueError(f"unknown model {name!r}; one of {MODELS}")
    return model


# --- the same models in NumPyro, for NUTS ---------------------------------------------

def nuts_model(name: str, components: int = 2):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def ordered(c0, log_gaps):
        return c0 + jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.exp(log_gaps))])

    def mixture(y):
        K = components
        m0 = numpyro.sample("m0", dist.Normal(0.0, 5.0))
        log_gaps = numpyro.sample("log_gaps", dist.Normal(0.0, 1.5).expand([K - 1]))
        a = numpyro.sample("a", dist.Normal(0.0, 1.5).expand([K - 1]))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([K]))
        logits = jnp.concatenate([jnp.zeros(1), a])
        numpyro.sample("y", dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                                   dist.Normal(ordered(m0, log_gaps), sigma)),
                       obs=y)

    def zero_inflated(x, y):
        b0 = numpyro.sample("b0", dist.Normal(0.0, 2.0))
        b1 = numpyro.sample("b1", dist.Normal(0.0, 2.0))
        psi = numpyro.sample("psi", dist.Beta(2.0, 2.0))
        # NumPyro's gate is the probability of the EXTRA zero: 1 - psi
        numpyro.sample("y", dist.ZeroInflatedPoisson(1.0 - psi, jnp.exp(b0 + b1 * x)), obs=y)

    def ordinal(x, y):
        K = len(ORDINAL_CUTPOINTS) + 1
        beta = numpyro.sample("beta", dist.Normal(0.0, 2.0).expand([2]))
        c0 = numpyro.sample("c0", dist.Normal(0.0, 5.0))
        log_gaps = numpyro.sample("log_gaps", dist.Normal(0.0, 1.5).expand([K - 2]))
        numpyro.sample("y", dist.OrderedLogistic(x @ beta, ordered(c0, log_gaps)), obs=y)

    return {"mixture": mixture, "zero_inflated": zero_inflated, "ordinal": ordinal}[name]


_NUTS_DRAWS: dict = {}  # one NUTS run per model and data set in a process (the tests
                       # compare every backend's fit with the same draws)


def nuts_reference(name: str, data: dict, seed: int = 0, components: int = 2) -> dict:
    """NUTS draws {parameter: (1000, *shape)} of the NumPyro model on the same data."""
    key = (name, seed, components, tuple((k, np.asarray(v).tobytes()) for k, v in sorted(data.items())))
    if key not in _NUTS_DRAWS:
        _NUTS_DRAWS[key] = _run_nuts(name, data, seed, components)
    return _NUTS_DRAWS[key]


def _run_nuts(name: str, data: dict, seed: int, components: int) -> dict:
    import jax
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(nuts_model(name, components)), num_warmup=500, num_samples=1000,
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), **{k: np.asarray(v) for k, v in data.items()})
    return {k: np.asarray(v) for k, v in mcmc.get_samples().items()}


# --- the comparison -------------------------------------------------------------------

def mean_field_ratios(model, draws: dict) -> np.ndarray:
    """What q sd / NUTS sd an exact mean-field q would give if the posterior were Gaussian
    with NUTS's covariance S, in q's own (unconstrained) space: 1 / sqrt((S^-1)_ii) over
    sqrt(S_ii), one number per global number, in model order. It is 1 for a number the
    posterior does not correlate with the others, and smaller the more it does."""
    u = np.concatenate([transforms.inverse(v.support, draws[v.name]).reshape(len(draws[v.name]), -1)
                        for v in model.globals], axis=1)
    cov = np.atleast_2d(np.cov(u, rowvar=False))
    return 1.0 / np.sqrt(np.diag(np.linalg.inv(cov)) * np.diag(cov))


def compare(result, draws: dict) -> list[dict]:
    """One row per number of each global, in model order: q's mean and sd against NUTS's."""
    rows = []
    mf = iter(mean_field_ratios(result.model, draws))
    for v in result.model.globals:
        q_mean = np.atleast_1d(result.mean(v.name))
        q_sd = np.atleast_1d(result.std(v.name))
        n_mean = np.atleast_1d(draws[v.name].mean(0))
        n_sd = np.atleast_1d(draws[v.name].std(0))
        for i in range(len(n_mean)):
            rows.append({"param": v.name if draws[v.name].ndim == 1 else f"{v.name}[{i}]",
                         "q_mean": float(q_mean[i]), "q_sd": float(q_sd[i]),
                         "nuts_mean": float(n_mean[i]), "nuts_sd": float(n_sd[i]),
                         "z": float(abs(q_mean[i] - n_mean[i]) / n_sd[i]),
                         "sd_ratio": float(q_sd[i] / n_sd[i]),
                         "mean_field_ratio": float(next(mf))})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"  {'parameter':<12} {'q mean':>9} {'NUTS mean':>10} {'NUTS sd':>9} "
          f"{'|diff|/NUTS sd':>15} {'q sd/NUTS sd':>13} {'mean-field':>11}")
    for r in rows:
        print(f"  {r['param']:<12} {r['q_mean']:9.4f} {r['nuts_mean']:10.4f} {r['nuts_sd']:9.4f} "
              f"{r['z']:15.3f} {r['sd_ratio']:13.3f} {r['mean_field_ratio']:11.3f}")


def main(argv=None):
    parser = example_parser(__doc__, steps=3000, batch_size=256, rows=TOTAL_SIZE)
    parser.add_argument("--model", choices=MODELS + ("all",), default="all")
    parser.add_argument("--components", type=int, choices=sorted(MIXTURES), default=2,
                        help="the mixture's components")
    args = parser.parse_args(argv)

    out = {}
    for name in MODELS if args.model == "all" else (args.model,):
        data = make_data(name, args.rows, args.seed, args.components)
        model = build_model(name, args.components)
        start = time.perf_counter()
        result = kq.fit(model, data, backend=args.backend, steps=args.steps,
                        batch_size=args.batch_size, seed=args.seed, progress=False,
                        **step_rule(args))
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        draws = nuts_reference(name, data, args.seed, args.components)
        nuts_s = time.perf_counter() - start
        rows = compare(result, draws)
        epochs = args.steps * args.batch_size / args.rows
        print(f"\n{name}: {args.rows:,} rows; klqp on {args.backend}: {args.steps:,} steps of "
              f"{args.batch_size} rows ({epochs:g} epochs), {fit_s:.1f} s with its compile; "
              f"NUTS: {nuts_s:.1f} s")
        print_table(rows)
        out[name] = {"params": rows, "fit_seconds": fit_s, "nuts_seconds": nuts_s}
    return out


if __name__ == "__main__":
    main()
