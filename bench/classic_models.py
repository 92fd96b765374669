"""Classic models from the PyMC, NumPyro and Stan tutorials, with real data that a package
ships where there is some, fitted by kq.fit's defaults on both backends against NUTS.

None of these models was designed with klqp in mind; each is written once in klqp and once
in NumPyro with the same priors, fitted by ``kq.fit`` with every default (full batch:
these data sets are small) and by NumPyro's NUTS (500 warm-up draws, 1,000 draws), and
compared number by number in each parameter's own space (as examples/tutorial_models.py
does): |q mean - NUTS mean| / NUTS sd, and q sd / NUTS sd against what an exact
mean-field q would give for a Gaussian posterior with NUTS's covariance.

- cancer: logistic regression on scikit-learn's breast cancer data (569 rows, 30
  standardized features: strongly correlated), N(0, 2.5) priors;
- diabetes: linear regression on scikit-learn's diabetes data (442 rows, 10 features),
  unknown noise sd;
- rats: Gelman et al.'s rat tumours (BDA3 ch. 5; Stan's and PyMC's hierarchical binomial
  example), 71 experiments, logit theta_j = mu + tau z_j (non-centred);
- robust: Student-t regression with unknown degrees of freedom nu ~ Gamma(2, 0.1)
  (Stan's / PyMC's robust regression), 500 simulated rows with t(3) noise;
- volatility: a stochastic-volatility model (NumPyro's / Stan's tutorial), log-variance
  h = mu + sigma * cumsum(z) a Gaussian random walk over 200 days of simulated returns
  (202 global numbers, a curvature coupled along the whole walk).

    .venv/bin/python bench/classic_models.py                 # ~3 min on 2 cores
    .venv/bin/python bench/classic_models.py --models rats,robust --backends numpyro
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")  # NUTS in float64, as the other benchmarks

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import klqp as kq  # noqa: E402
from cases import _load_example  # noqa: E402


def nuts(model, data, seed=0, warmup=500, draws=1000) -> dict:
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), **data)
    return {k: np.asarray(v) for k, v in mcmc.get_samples().items()}


def _standardized(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


# Each case: (klqp model, its data, the NumPyro model, NUTS's data).

def case_cancer():
    features, labels = load_breast_cancer(return_X_y=True)
    features = _standardized(features)
    dim = features.shape[1]

    def numpyro_model(x, y):
        b0 = numpyro.sample("b0", dist.Normal(0.0, 2.5))
        w = numpyro.sample("w", dist.Normal(0.0, 2.5).expand([dim]))
        numpyro.sample("y", dist.Bernoulli(logits=b0 + x @ w), obs=y)

    with kq.Model("cancer") as model:
        x = kq.Data("x", shape=(dim,))
        b0 = kq.Global("b0", kq.Normal(0.0, 2.5))
        w = kq.Global("w", kq.Normal(0.0, 2.5), shape=(dim,))
        kq.Observed("y", kq.Bernoulli(logits=b0 + x @ w))
    data = {"x": features, "y": labels.astype(float)}
    return model, data, numpyro_model, {"x": features, "y": labels}


def case_diabetes():
    features, target = load_diabetes(return_X_y=True)
    features, target = _standardized(features), _standardized(target)
    dim = features.shape[1]

    def numpyro_model(x, y):
        b0 = numpyro.sample("b0", dist.Normal(0.0, 1.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([dim]))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(b0 + x @ w, sigma), obs=y)

    with kq.Model("diabetes") as model:
        x = kq.Data("x", shape=(dim,))
        b0 = kq.Global("b0", kq.Normal(0.0, 1.0))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(dim,))
        sigma = kq.Global("sigma", kq.HalfNormal(1.0))
        kq.Observed("y", kq.Normal(b0 + x @ w, sigma))
    data = {"x": features, "y": target}
    return model, data, numpyro_model, data


# Gelman et al., Bayesian Data Analysis (3rd ed.), table 5.1: tumours / rats, 71 experiments
RAT_TUMOURS = np.array([
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 3, 2, 2, 2, 2, 2, 2, 2,
    2, 1, 5, 2, 5, 3, 2, 7, 7, 3, 3, 2, 9, 10, 4, 4, 4, 4, 4, 4, 4, 10, 4, 4, 4, 5, 11, 12, 5,
    5, 6, 5, 6, 6, 6, 6, 16, 15, 15, 9, 4])
RATS = np.array([
    20, 20, 20, 20, 20, 20, 20, 19, 19, 19, 19, 18, 18, 17, 20, 20, 20, 20, 19, 19, 18, 18,
    25, 24, 23, 20, 20, 20, 20, 20, 20, 10, 49, 19, 46, 27, 17, 49, 47, 20, 20, 13, 48, 50,
    20, 20, 20, 20, 20, 20, 20, 48, 19, 19, 19, 22, 46, 49, 20, 20, 23, 19, 22, 20, 20, 20,
    52, 46, 47, 24, 14])


def case_rats():
    groups = len(RATS)

    def numpyro_model(n, y):
        mu = numpyro.sample("mu", dist.Normal(-1.0, 2.0))
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([groups]))
        numpyro.sample("y", dist.Binomial(n, logits=mu + tau * z), obs=y)

    with kq.Model("rats") as model:
        experiment = kq.Data("experiment", shape=(), dtype="int")
        n = kq.Data("n", shape=(), dtype="int")
        mu = kq.Global("mu", kq.Normal(-1.0, 2.0))
        tau = kq.Global("tau", kq.HalfNormal(1.0))
        z = kq.Global("z", kq.Normal(0.0, 1.0), shape=(groups,))
        kq.Observed("y", kq.Binomial(n, logits=mu + tau * z[experiment]))
    data = {"experiment": np.arange(groups), "n": RATS, "y": RAT_TUMOURS.astype(float)}
    return model, data, numpyro_model, {"n": RATS, "y": RAT_TUMOURS}


def case_robust():
    rng = np.random.default_rng(1)
    x_obs = rng.normal(size=500)
    y_obs = 1.0 + 2.0 * x_obs + 0.5 * rng.standard_t(3, size=500)

    def numpyro_model(x, y):
        a = numpyro.sample("a", dist.Normal(0.0, 5.0))
        b = numpyro.sample("b", dist.Normal(0.0, 5.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
        numpyro.sample("y", dist.StudentT(nu, a + b * x, sigma), obs=y)

    with kq.Model("robust") as model:
        x = kq.Data("x", shape=())
        a = kq.Global("a", kq.Normal(0.0, 5.0))
        b = kq.Global("b", kq.Normal(0.0, 5.0))
        sigma = kq.Global("sigma", kq.HalfNormal(2.0))
        nu = kq.Global("nu", kq.Gamma(2.0, 0.1))
        kq.Observed("y", kq.StudentT(nu, a + b * x, sigma))
    data = {"x": x_obs, "y": y_obs}
    return model, data, numpyro_model, data


def case_volatility():
    rng = np.random.default_rng(2)
    days = 200
    log_variance = np.cumsum(0.2 * rng.normal(size=days)) - 1.0
    returns = np.exp(log_variance / 2) * rng.normal(size=days)

    def numpyro_model(t, y):
        mu = numpyro.sample("mu", dist.Normal(-1.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([days]))
        h = mu + sigma * jnp.cumsum(z)
        numpyro.sample("y", dist.Normal(0.0, jnp.exp(h[t] / 2)), obs=y)

    with kq.Model("volatility") as model:
        t = kq.Data("t", shape=(), dtype="int")
        mu = kq.Global("mu", kq.Normal(-1.0, 2.0))
        sigma = kq.Global("sigma", kq.HalfNormal(0.5))
        z = kq.Global("z", kq.Normal(0.0, 1.0), shape=(days,))
        h = mu + sigma * kq.cumsum(z)
        kq.Observed("y", kq.Normal(0.0, kq.exp(h[t] / 2)))
    data = {"t": np.arange(days), "y": returns}
    return model, data, numpyro_model, data


CASES = {"cancer": case_cancer, "diabetes": case_diabetes, "rats": case_rats,
         "robust": case_robust, "volatility": case_volatility}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--backends", default=",".join(kq.backends.available()))
    parser.add_argument("--steps", type=int, default=1000, help="kq.fit's default")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    tutorial = _load_example("tutorial_models")
    print("|q mean - NUTS mean| / NUTS sd: the largest over a model's numbers (and which);"
          " q sd / NUTS sd over the mean-field ratio: its range (1 = the exact mean-field)")
    rows = []
    for name in args.models.split(","):
        model, data, nuts_model, nuts_data = CASES[name]()
        start = time.perf_counter()
        draws = nuts(nuts_model, nuts_data)
        nuts_s = time.perf_counter() - start
        for backend in args.backends.split(","):
            start = time.perf_counter()
            result = kq.fit(model, data, backend=backend, steps=args.steps, seed=0,
                            progress=False)
            fit_s = time.perf_counter() - start
            table = tutorial.compare(result, {v.name: draws[v.name] for v in model.globals})
            worst = max(table, key=lambda r: r["z"])
            rel = [r["sd_ratio"] / r["mean_field_ratio"] for r in table]
            row = {"model": name, "backend": backend, "numbers": len(table),
                   "max_z": worst["z"], "worst": worst["param"],
                   "sd_vs_mean_field": [min(rel), max(rel)],
                   "skipped_steps": int(result.info.get("skipped_steps", 0)),
                   "fit_s": fit_s, "nuts_s": nuts_s}
            rows.append(row)
            print(f"{name:<11} {backend:<8} {len(table):>4} numbers  max |z| {worst['z']:5.2f} "
                  f"({worst['param']})  sd/mean-field {min(rel):4.2f}-{max(rel):4.2f}  "
                  f"skipped {row['skipped_steps']}  fit {fit_s:5.1f} s  NUTS {nuts_s:5.1f} s",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
