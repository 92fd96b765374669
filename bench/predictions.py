"""Predictions' targets (issue 17): figures on both backends, each against a reference
computed here. No timings of the fits; the predictive calls' seconds are printed.

1. Linear-Gaussian regression: ``predict``'s mean and variance for new x against the
   predictive under q in closed form (10,000 draws).
2. Flagship model (examples/hierarchical.py, 100,000 rows, 10 % held out): the held-out
   rows' q(z_i) from ``fit_locals`` against the mean-field optimum given q(theta,
   sigma), and their log predictive density (z integrated out by importance sampling
   with q(z_i) as proposal) against z integrated in closed form at the same draws.
3. Poisson GLMM with a per-row log-normal effect: held-out ELPD with its Monte-Carlo
   error on both backends, with the locals fitted and drawn from their prior.
4. Digits VAE (examples/vae.py, continuous Bernoulli): held-out ELPD with the encoder's
   q and after the local step refines it.

    .venv/bin/python bench/predictions.py            # every target, both backends (~2 min)
    .venv/bin/python bench/predictions.py --quick    # smaller data (~40 s)
    .venv/bin/python bench/predictions.py --targets 2,4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402

import klqp as kq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


def _logmeanexp(a, axis=0):
    top = a.max(axis)
    return top + np.log(np.exp(a - top).mean(axis))


# -- 1 ------------------------------------------------------------------------------------
def linear_model():
    with kq.Model("linear") as model:
        x = kq.Data("x")
        a = kq.Global("a", kq.Normal(0.0, 5.0))
        b = kq.Global("b", kq.Normal(0.0, 5.0))
        s = kq.Global("s", kq.HalfNormal(2.0))
        mu = kq.Deterministic("mu", a + b * x)
        kq.Observed("y", kq.Normal(mu, s))
    return model


def target_linear(backend, quick, draws=10_000):
    rng = np.random.default_rng(0)
    n = 400 if quick else 4000
    x = rng.normal(size=n)
    data = {"x": x, "y": 1.0 + 2.0 * x + 0.5 * rng.normal(size=n)}
    r = kq.fit(linear_model(), data, backend=backend, steps=1500, batch_size=100, progress=False)
    x_new = np.linspace(-3.0, 3.0, 7)
    start = time.perf_counter()
    y = r.predict({"x": x_new}, num_samples=draws, seed=1)["y"]
    seconds = time.perf_counter() - start
    q = r.params
    mean = q["a"]["loc"] + q["b"]["loc"] * x_new
    var = (q["a"]["scale"] ** 2 + x_new ** 2 * q["b"]["scale"] ** 2
           + np.exp(2 * q["s"]["loc"] + 2 * q["s"]["scale"] ** 2))
    return {"target": 1, "backend": backend, "draws": draws,
            "max_mean_err_in_mc_se": float(np.max(np.abs(y.mean(0) - mean)
                                                  / np.sqrt(var / draws))),
            "max_var_rel_err": float(np.max(np.abs(y.var(0) / var - 1))),
            # a Normal sample variance's relative standard error is sqrt(2 / draws)
            "max_var_err_in_mc_se": float(np.max(np.abs(y.var(0) / var - 1))
                                          / np.sqrt(2 / draws)),
            "predict_seconds": round(seconds, 2)}


# -- 2 ------------------------------------------------------------------------------------
def target_flagship(backend, quick, draws=1000):
    from hierarchical import build_model, make_data

    rows = 20_000 if quick else 100_000
    data, _ = make_data(rows, 0)
    held = rows // 10
    train = {k: v[held:] for k, v in data.items()}
    test = {k: v[:held] for k, v in data.items()}
    r = kq.fit(build_model(), train, backend=backend, steps=750, batch_size=2000,
               scale_cost_to_minibatch=True, progress=False)
    start = time.perf_counter()
    q = r.fit_locals(test)
    fit_seconds = time.perf_counter() - start
    p = r.params
    inv = np.exp(-2 * p["sigma"]["loc"] + 2 * p["sigma"]["scale"] ** 2)
    var = 1.0 / (1.0 / 0.49 + inv)
    mean = var * (p["theta"]["loc"] * test["x"] / 0.49 + test["y"] * inv)
    start = time.perf_counter()
    lpd = r.log_predictive_density(test, num_samples=draws, seed=1)
    lpd_seconds = time.perf_counter() - start
    theta = r.sample("theta", draws, 1)[:, None]
    sigma2 = r.sample("sigma", draws, 1)[:, None] ** 2 + 0.49
    exact = _logmeanexp(-0.5 * (test["y"] - theta * test["x"]) ** 2 / sigma2
                        - 0.5 * np.log(2 * np.pi * sigma2))
    return {"target": 2, "backend": backend, "rows": rows, "held_out": held,
            "z_rms_in_opt_sd": float(np.sqrt(np.mean((q["z"]["loc"] - mean) ** 2))
                                     / np.sqrt(var)),
            "z_sd_ratio_max_err": float(np.max(np.abs(q["z"]["scale"] / np.sqrt(var) - 1))),
            "lpd_mean_abs_diff_nats_per_row": float(np.mean(np.abs(lpd.value - exact))),
            "lpd_mean_diff_nats_per_row": float(np.mean(lpd.value - exact)),
            "lpd_per_row": float(lpd.value.mean()), "lpd_exact_per_row": float(exact.mean()),
            "fit_locals_seconds": round(fit_seconds, 2), "lpd_seconds": round(lpd_seconds, 2)}


# -- 3 ------------------------------------------------------------------------------------
def glmm_model():
    with kq.Model("poisson_glmm") as model:
        x = kq.Data("x")
        b0 = kq.Global("b0", kq.Normal(0.0, 2.0))
        b1 = kq.Global("b1", kq.Normal(0.0, 2.0))
        tau = kq.Global("tau", kq.HalfNormal(1.0))
        e = kq.Local("e", kq.Normal(0.0, tau))
        kq.Observed("y", kq.Poisson(kq.exp(b0 + b1 * x + e)))
    return model


def glmm_data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return {"x": x, "y": rng.poisson(np.exp(0.3 + 0.6 * x + 0.5 * rng.normal(size=n)))}


def target_glmm(backend, quick, draws=2000):
    n_train, n_test = (2000, 500) if quick else (5000, 1000)
    data = glmm_data(n_train + n_test)
    train = {k: v[:n_train] for k, v in data.items()}
    test = {k: v[n_train:] for k, v in data.items()}
    r = kq.fit(glmm_model(), train, backend=backend, steps=1000, batch_size=500,
               progress=False, seed=1)
    fitted = r.elpd(test, num_samples=draws, seed=2)
    prior = r.elpd(test, num_samples=draws, seed=2, locals="prior")
    return {"target": 3, "backend": backend, "held_out": n_test,
            "elpd_fit": fitted.elpd, "elpd_fit_mc_se": fitted.mc_se, "elpd_fit_se": fitted.se,
            "elpd_prior": prior.elpd, "elpd_prior_mc_se": prior.mc_se,
            "per_row_fit": fitted.per_row_mean}


# -- 4 ------------------------------------------------------------------------------------
def target_vae(backend, quick, draws=500):
    from sklearn.datasets import load_digits
    from vae import build_model

    pixels = load_digits().data / 16.0
    order = np.random.default_rng(0).permutation(len(pixels))
    test, train = pixels[order[:180]], pixels[order[180:]]
    steps = 1000 if quick else 3000
    r = kq.fit(build_model("continuous_bernoulli"), {"image": train}, backend=backend,
               steps=steps, batch_size=128, scale_cost_to_minibatch=True, progress=False,
               learning_rate=kq.schedules.linear(3e-3, 3e-4, steps))
    encoder = r.elpd({"image": test}, num_samples=draws, seed=1, locals="encoder")
    start = time.perf_counter()
    refined = r.elpd({"image": test}, num_samples=draws, seed=1, locals="fit")
    return {"target": 4, "backend": backend, "held_out": 180, "steps": steps,
            "elpd_encoder_per_row": encoder.per_row_mean,
            "elpd_refined_per_row": refined.per_row_mean,
            "gain_nats_per_row": refined.per_row_mean - encoder.per_row_mean,
            "mc_se_encoder": encoder.mc_se, "mc_se_refined": refined.mc_se,
            "refine_and_score_seconds": round(time.perf_counter() - start, 2)}


def target_linear_many(backend, quick):
    """Target 1 at 20x the draws: what is left is bias, not Monte-Carlo error."""
    return {**target_linear(backend, quick, draws=200_000), "target": "1b"}


TARGETS = {1: target_linear, "1b": target_linear_many, 2: target_flagship, 3: target_glmm, 4: target_vae}


def run(targets, quick) -> list[dict]:
    rows = []
    for t in targets:
        for backend in BACKENDS:
            row = TARGETS[t](backend, quick)
            print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                              for k, v in row.items()}), flush=True)
            rows.append(row)
    glmm = [r for r in rows if r["target"] == 3]
    if len(glmm) == 2:
        a, b = glmm
        diff = a["elpd_fit"] - b["elpd_fit"]
        print(f"target 3: elpd {a['backend']} - {b['backend']} = {diff:.3f} nats "
              f"({abs(diff) / np.hypot(a['elpd_fit_mc_se'], b['elpd_fit_mc_se']):.2f} "
              "combined Monte-Carlo s.e.)")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--targets", default="1,1b,2,3,4")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = run([t if t == "1b" else int(t) for t in args.targets.split(",")], args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
