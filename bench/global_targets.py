"""The global step's targets: q against each model's mean-field optimum, kq.fit defaults.

Each case fits a model with ``kq.fit``'s defaults on both backends and reports how far
q is from the model's mean-field optimum, in optimum standard deviations (means) and as
sd ratios, with the reference computed here (closed form where the model is conjugate,
else L-BFGS on the ELBO with fixed common random numbers). Where a hand-written NumPyro
program is a fair comparison (AutoNormal, Adam 0.01, the same steps), its q is measured
the same way. No timings: bench/run.py has steps/s against hand-written programs.

    .venv/bin/python bench/global_targets.py             # every case (~10 min, 2 cores)
    .venv/bin/python bench/global_targets.py --quick     # smoke run (~1 min)
    .venv/bin/python bench/global_targets.py --cases eight_schools,regression --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

import klqp as kq  # noqa: E402

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


def crn_optimum(log_joint, dim: int, draws: int = 2000, seed: int = 1, init=None):
    """The mean-field Gaussian optimum (loc, sd) of ``log_joint`` (jnp, (S, dim) -> (S,))
    by L-BFGS on the ELBO with ``draws`` fixed antithetic pairs."""
    eps = np.random.default_rng(seed).standard_normal((draws, dim))
    eps = jnp.asarray(np.concatenate([eps, -eps]))

    def neg_elbo(p):
        m, log_s = p[:dim], p[dim:]
        return -(jnp.mean(log_joint(m + jnp.exp(log_s) * eps)) + jnp.sum(log_s))

    f = jax.jit(jax.value_and_grad(neg_elbo))
    x0 = np.concatenate([np.zeros(dim), -np.ones(dim)]) if init is None else init
    res = minimize(lambda p: [np.asarray(a, dtype=float) for a in f(jnp.asarray(p))], x0,
                   jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-8})
    return res.x[:dim], np.exp(res.x[dim:])


def q_flat(result, names):
    q = [result.q(k) for k in names]
    return (np.concatenate([np.ravel(p["loc"]) for p in q]),
            np.concatenate([np.ravel(p["scale"]) for p in q]))


def errors(loc, scale, opt_mean, opt_sd) -> dict:
    return {"max_mean_err_sd": float(np.max(np.abs(loc - opt_mean) / opt_sd)),
            "sd_ratio_min": float(np.min(scale / opt_sd)),
            "sd_ratio_max": float(np.max(scale / opt_sd))}


def tracked_fit(model, data, names, opt_mean, opt_sd, every, **kw):
    """kq.fit with a callback every ``every`` steps recording the errors of the reported q."""
    trace = []

    def record(step, result):
        trace.append((step, errors(*q_flat(result, names), opt_mean, opt_sd)))

    start = time.perf_counter()
    result = kq.fit(model, data, progress=False, callbacks=[record], chunk_size=every, **kw)
    return result, trace, time.perf_counter() - start


def settled_at(trace, mean_tol, sd_low, sd_high):
    """The first recorded step from which q stays within the tolerances to the end."""
    ok = [e["max_mean_err_sd"] <= mean_tol and sd_low <= e["sd_ratio_min"]
          and e["sd_ratio_max"] <= sd_high for _, e in trace]
    for i in range(len(ok)):
        if all(ok[i:]):
            return trace[i][0]
    return None


# -- 1. eight schools ----------------------------------------------------------------------

Y8 = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
SIGMA8 = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools_model(way):
    with kq.Model(f"eight_schools_{way}") as model:
        sigma = kq.Data("sigma", shape=())
        mu = kq.Global("mu", kq.Normal(0.0, 5.0))
        tau = kq.Global("tau", kq.HalfNormal(5.0))
        if way == "local":
            theta = kq.Local("theta_trans", kq.Normal(0.0, 1.0))
        else:
            school = kq.Data("school", shape=(), dtype="int")
            theta = kq.Global("theta_trans", kq.Normal(0.0, 1.0), shape=(8,))[school]
        kq.Observed("y", kq.Normal(mu + tau * theta, sigma))
    data = {"sigma": SIGMA8, "y": Y8}
    if way == "global":
        data["school"] = np.arange(8)
    return model, data


def eight_schools_log_joint(z):
    mu, u, th = z[:, 0], z[:, 1], z[:, 2:]
    tau = jnp.exp(u)
    r = (Y8 - mu[:, None] - tau[:, None] * th) / SIGMA8
    return (-0.5 * (mu / 5) ** 2 - 0.5 * (tau / 5) ** 2 + u - 0.5 * jnp.sum(th ** 2, 1)
            - 0.5 * jnp.sum(r ** 2, 1))


def numpyro_eight_schools(steps, seed):
    """What a NumPyro user writes: AutoNormal, Adam 0.01, Trace_ELBO."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfNormal(5.0))
        with numpyro.plate("J", 8):
            th = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(mu + tau * th, SIGMA8), obs=Y8)

    guide = AutoNormal(model)
    svi = SVI(model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(seed), steps, progress_bar=False)
    p = result.params
    loc = np.concatenate([np.ravel(p[f"{k}_auto_loc"]) for k in ("mu", "tau", "theta_trans")])
    scale = np.concatenate([np.ravel(p[f"{k}_auto_scale"]) for k in ("mu", "tau", "theta_trans")])
    return loc, scale


def case_eight_schools(quick):
    opt_mean, opt_sd = crn_optimum(eight_schools_log_joint, 10, draws=4000)
    seeds, steps, rows = (2 if quick else 20), (800 if quick else 2000), []
    names = ("mu", "tau", "theta_trans")
    for backend in BACKENDS:
        for way in ("local", "global"):
            failures, settle, worst = 0, [], []
            for seed in range(seeds):
                model, data = eight_schools_model(way)
                try:
                    result, trace, _ = tracked_fit(model, data, names, opt_mean, opt_sd, 50,
                                                   backend=backend, steps=steps, batch_size=8,
                                                   seed=seed)
                except Exception as e:  # noqa: BLE001 - a failure is a figure here
                    failures += 1
                    print(f"    {backend} {way} seed {seed}: {type(e).__name__}: {e}"[:300])
                    continue
                if result.info.get("skipped_steps"):
                    failures += 1
                settle.append(settled_at(trace, 0.2, 0.8, 1.25))
                worst.append(trace[-1][1])
            done = [s for s in settle if s is not None]
            rows.append({"case": "eight_schools", "runner": f"klqp-{backend}", "variant": way,
                         "seeds": seeds, "failures": failures,
                         "settled_seeds": len(done),
                         "settled_step_max": max(done) if done else None,
                         "end_max_mean_err_sd": max(e["max_mean_err_sd"] for e in worst),
                         "end_sd_ratio": [min(e["sd_ratio_min"] for e in worst),
                                          max(e["sd_ratio_max"] for e in worst)]})
    loc, scale = numpyro_eight_schools(steps, 0)
    e = errors(loc, scale, opt_mean, opt_sd)
    rows.append({"case": "eight_schools", "runner": "numpyro-hand AutoNormal Adam(0.01)",
                 "variant": "plate", "seeds": 1, "end_max_mean_err_sd": e["max_mean_err_sd"],
                 "end_sd_ratio": [e["sd_ratio_min"], e["sd_ratio_max"]]})
    return rows


# -- 2. varying intercepts, known noise (exact optimum) ---------------------------------------

def intercepts_case(groups, n, b, seed=0):
    rng = np.random.default_rng(seed)
    k = 4
    g = rng.integers(0, groups, n)
    x = rng.normal(size=(n, k))
    y = rng.normal(size=groups)[g] + x @ rng.normal(size=k) + rng.normal(size=n)
    precision = np.eye(groups + k)
    precision[:groups, :groups] += np.diag(np.bincount(g, minlength=groups))
    np.add.at(precision[:groups, groups:], g, x)
    precision[groups:, :groups] = precision[:groups, groups:].T
    precision[groups:, groups:] += x.T @ x
    rhs = np.concatenate([np.bincount(g, weights=y, minlength=groups), x.T @ y])
    with kq.Model(f"intercepts_{groups}") as model:
        group, xd = kq.Data("g", shape=(), dtype="int"), kq.Data("x", shape=(k,))
        a = kq.Global("a", kq.Normal(0.0, 1.0), shape=(groups,))
        beta = kq.Global("beta", kq.Normal(0.0, 1.0), shape=(k,))
        kq.Observed("y", kq.Normal(a[group] + xd @ beta, 1.0))
    return (model, {"g": g, "x": x, "y": y}, np.linalg.solve(precision, rhs),
            1 / np.sqrt(np.diag(precision)))


def case_intercepts(quick):
    rows = []
    sizes = [(100, 20_000, 500)] if quick else [(100, 100_000, 500), (1000, 100_000, 500)]
    epochs = 3 if quick else 10
    for groups, n, b in sizes:
        model, data, opt_mean, opt_sd = intercepts_case(groups, n, b)
        for backend in BACKENDS:
            _, trace, seconds = tracked_fit(model, data, ("a", "beta"), opt_mean, opt_sd, n // b,
                                            backend=backend, steps=epochs * n // b,
                                            batch_size=b, seed=0)
            settle = settled_at(trace, 1.0, 0.8, 1.25)
            rows.append({"case": f"intercepts G={groups}", "runner": f"klqp-{backend}",
                         "variant": f"N={n}, b={b}", "epochs": epochs,
                         "settled_epoch": None if settle is None else settle * b / n,
                         "end_max_mean_err_sd": trace[-1][1]["max_mean_err_sd"],
                         "end_sd_ratio": [trace[-1][1]["sd_ratio_min"],
                                          trace[-1][1]["sd_ratio_max"]],
                         "seconds": seconds})
    return rows


# -- 3. unknown group scale -----------------------------------------------------------------

def case_group_scale(quick):
    rows = []
    for groups in ([85] if quick else [85, 1000]):
        per, steps, b = 11, (1000 if quick else 4000), 128
        rng = np.random.default_rng(0)
        g = np.repeat(np.arange(groups), per)
        y = (0.5 + 0.4 * rng.normal(size=groups))[g] + rng.normal(size=g.size)
        cnt = np.bincount(g, minlength=groups)
        sy = np.bincount(g, weights=y, minlength=groups)
        syy = np.bincount(g, weights=y * y, minlength=groups)

        def log_joint(z):
            mu, u, a = z[:, 0], z[:, 1], z[:, 2:]
            sig = jnp.exp(u)
            prior_a = jnp.sum(-0.5 * ((a - mu[:, None]) / sig[:, None]) ** 2 - u[:, None], 1)
            lik = jnp.sum(-0.5 * (syy - 2 * a * sy + cnt * a ** 2), 1)
            return lik + prior_a - 0.5 * (mu / 5) ** 2 - 0.5 * (sig / 2) ** 2 + u

        init = np.concatenate([np.r_[0.5, np.log(0.4), sy / cnt], -2 * np.ones(groups + 2)])
        opt_mean, opt_sd = crn_optimum(log_joint, groups + 2, draws=1000, init=init)
        with kq.Model(f"group_scale_{groups}") as model:
            group = kq.Data("g", shape=(), dtype="int")
            mu = kq.Global("mu_a", kq.Normal(0.0, 5.0))
            sigma = kq.Global("sigma_a", kq.HalfNormal(2.0))
            a = kq.Global("a", kq.Normal(mu, sigma), shape=(groups,))
            kq.Observed("y", kq.Normal(a[group], 1.0))
        for backend in BACKENDS:
            result = kq.fit(model, {"g": g, "y": y}, backend=backend, steps=steps, batch_size=b,
                            seed=0, progress=False)
            loc, scale = q_flat(result, ("mu_a", "sigma_a", "a"))
            e = errors(loc, scale, opt_mean, opt_sd)
            rows.append({"case": f"group scale G={groups} (centred)", "runner": f"klqp-{backend}",
                         "variant": f"{per} rows a group, b={b}, {steps} steps",
                         "sigma_a_sd_ratio": float(scale[1] / opt_sd[1]),
                         "sigma_a_mean_err_sd": float(abs(loc[1] - opt_mean[1]) / opt_sd[1]),
                         "end_max_mean_err_sd": e["max_mean_err_sd"],
                         "end_sd_ratio": [e["sd_ratio_min"], e["sd_ratio_max"]]})
    return rows


def case_noncentred(quick):
    """A known limit, not a target: group effects written non-centred, a = mu + tau eta[g]
    with 300 groups (Poisson counts, 20 rows a group), under minibatches. The diagonal
    step does not see tau's coupling to every eta_g, and ~1/t steps crawl along it. Each
    fit is scored against its own parameterization's full-batch fit (500 steps, where
    both have settled): tau's q mean and the ELBO gap (``result.elbo``, 20 draws)."""
    groups, per, b = (60, 20, 100) if quick else (300, 20, 500)
    n = groups * per
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(groups), per)
    x = rng.normal(size=n)
    y = rng.poisson(np.exp((0.5 + 0.4 * rng.normal(size=groups))[g] + 0.3 * x
                           + 0.5 * rng.normal(size=n)))
    data = {"g": g, "x": x, "y": y}

    def model(centred):
        with kq.Model("noncentred_groups") as m:
            group, xs = kq.Data("g", dtype="int"), kq.Data("x")
            mu, slope = kq.Global("mu", kq.Normal(0.0, 2.0)), kq.Global("b", kq.Normal(0.0, 1.0))
            tau = kq.Global("tau", kq.HalfNormal(1.0))
            if centred:
                a = kq.Global("a", kq.Normal(mu, tau), shape=(groups,))[group]
            else:
                a = mu + tau * kq.Global("eta", kq.Normal(0.0, 1.0), shape=(groups,))[group]
            kq.Observed("y", kq.Poisson(kq.exp(a + slope * xs)))
        return m

    rows = []
    for backend in BACKENDS:
        for centred in (False, True):
            fit = lambda bs, steps: kq.fit(model(centred), data, backend=backend,  # noqa: E731
                                           batch_size=bs, steps=steps, seed=0, progress=False)
            full = fit(n, 500)
            best = full.elbo(num_samples=20)["elbo"]
            for epochs in ((10,) if quick else (10, 40)):
                r = fit(b, epochs * n // b)
                rows.append({"case": f"groups G={groups} ({'centred' if centred else 'non-centred'})",
                             "runner": f"klqp-{backend}", "variant": f"b={b}, {epochs} epochs",
                             "tau": float(r.mean("tau")), "tau_full_batch": float(full.mean("tau")),
                             "elbo_gap_nats": float(best - r.elbo(num_samples=20)["elbo"])})
    return rows


# -- 4. correlated regressions ---------------------------------------------------------------

def case_regression(quick):
    rows = []
    n, d, b = (20_000 if quick else 100_000), 20, 256
    epochs = 3 if quick else 10
    rng = np.random.default_rng(0)
    corr = 0.5 * np.ones((d, d)) + 0.5 * np.eye(d)
    x = rng.normal(size=(n, d)) @ np.linalg.cholesky(corr).T
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ (0.5 * rng.normal(size=d)) + 0.3)))).astype(float)
    # at this N the posterior is close to Gaussian: the mean-field optimum is the mode and
    # 1 / sqrt(diag H) there to O(1/N)
    xa, prior = np.column_stack([x, np.ones(n)]), np.r_[np.ones(d), 1 / 25]
    theta = np.zeros(d + 1)
    for _ in range(50):
        p = 1 / (1 + np.exp(-xa @ theta))
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(prior)
        theta = theta + np.linalg.solve(hess, xa.T @ (y - p) - prior * theta)
    opt_mean, opt_sd = theta, 1 / np.sqrt(np.diag(hess))
    with kq.Model("logistic_correlated") as model:
        xd = kq.Data("x", shape=(d,))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(d,))
        b0 = kq.Global("b0", kq.Normal(0.0, 5.0))
        kq.Observed("y", kq.Bernoulli(logits=xd @ w + b0))
    for backend in BACKENDS:
        _, trace, seconds = tracked_fit(model, {"x": x, "y": y}, ("w", "b0"), opt_mean, opt_sd,
                                        n // b, backend=backend, steps=epochs * n // b,
                                        batch_size=b, seed=0)
        rows.append({"case": "logistic D=20, predictor corr 0.5", "runner": f"klqp-{backend}",
                     "variant": f"N={n}, b={b}",
                     "settled_epoch_1sd": _epoch(settled_at(trace, 1.0, 0.9, 1.1), b, n),
                     "settled_epoch_0.2sd": _epoch(settled_at(trace, 0.2, 0.9, 1.1), b, n),
                     "end_max_mean_err_sd": trace[-1][1]["max_mean_err_sd"],
                     "end_sd_ratio": [trace[-1][1]["sd_ratio_min"], trace[-1][1]["sd_ratio_max"]],
                     "seconds": seconds})
    # a linear regression with an uncentred predictor and an interaction, full batch
    rng = np.random.default_rng(0)
    m = 1000
    x1, x2 = 10 + rng.normal(size=m), rng.normal(size=m)
    xl = np.column_stack([np.ones(m), x1, x2, x1 * x2])
    yl = xl @ np.array([1.0, 0.5, -0.3, 0.2]) + rng.normal(size=m)
    precision = xl.T @ xl + np.eye(4) / 100
    opt_mean, opt_sd = np.linalg.solve(precision, xl.T @ yl), 1 / np.sqrt(np.diag(precision))
    cov = np.linalg.inv(precision)
    largest = np.max(np.abs(cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))) - np.eye(4)))
    with kq.Model("linear_correlated") as model:
        xd = kq.Data("x", shape=(4,))
        w = kq.Global("w", kq.Normal(0.0, 10.0), shape=(4,))
        kq.Observed("y", kq.Normal(xd @ w, 1.0))
    for backend in BACKENDS:
        for name, rule in (("default", "auto"), ("diagonal only", kq.GlobalStep(dense_max=0))):
            _, trace, _ = tracked_fit(model, {"x": xl, "y": yl}, ("w",), opt_mean, opt_sd, 50,
                                      backend=backend, steps=2000, batch_size=m, seed=0,
                                      global_step=rule)
            rows.append({"case": f"linear, posterior corr {largest:.4f}",
                         "runner": f"klqp-{backend}", "variant": f"{name}, full batch",
                         "settled_step_0.1sd": settled_at(trace, 0.1, 0.9, 1.1),
                         "end_max_mean_err_sd": trace[-1][1]["max_mean_err_sd"],
                         "end_sd_ratio": [trace[-1][1]["sd_ratio_min"],
                                          trace[-1][1]["sd_ratio_max"]]})
    return rows


def _epoch(step, b, n):
    return None if step is None else round(step * b / n, 2)


# -- 7. probabilistic PCA on the digits --------------------------------------------------------

def case_ppca(quick):
    from sklearn.datasets import load_digits

    x = load_digits().data
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-3)
    n, d, k, b = x.shape[0], x.shape[1], 8, 128
    cov = x.T @ x / n
    lam, vecs = np.linalg.eigh(cov)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    sigma2 = lam[k:].mean()

    def loglik_per_row(w):  # x ~ N(0, W^T W + sigma^2 I), Tipping & Bishop (1999)
        c = w.T @ w + sigma2 * np.eye(d)
        return -0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(c)[1]
                       + np.trace(np.linalg.solve(c, cov)))

    best = loglik_per_row((vecs[:, :k] * np.sqrt(np.maximum(lam[:k] - sigma2, 0))).T)
    with kq.Model("ppca") as model:
        w = kq.Param("W", shape=(k, d))
        z = kq.Local("z", kq.Normal(0.0, 1.0), shape=(k,))
        kq.Observed("x", kq.Normal(z @ w, float(np.sqrt(sigma2))))
    epochs, rows = (10 if quick else 100), []
    for backend in BACKENDS:
        result = kq.fit(model, {"x": x}, backend=backend, steps=epochs * n // b, batch_size=b,
                        seed=0, progress=False)
        rows.append({"case": "probabilistic PCA, digits (W: kq.Param 8 x 64)",
                     "runner": f"klqp-{backend}", "variant": f"b={b}, {epochs} epochs",
                     "gap_nats_per_row": float(best - loglik_per_row(result.params["W"]["value"]))})
    return rows


CASES = {"eight_schools": case_eight_schools, "intercepts": case_intercepts,
         "group_scale": case_group_scale, "regression": case_regression, "ppca": case_ppca,
         "noncentred": case_noncentred}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few seeds")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: "
                        + ", ".join(CASES))
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"klqp {kq.__version__}, jax {jax.__version__}; backends {BACKENDS}")
    rows = []
    for name in args.cases.split(","):
        start = time.perf_counter()
        out = CASES[name](args.quick)
        print(f"\n== {name} ({time.perf_counter() - start:.0f} s)")
        for row in out:
            print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "case")
                  + f"  [{row['case']}]")
        rows += out
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


if __name__ == "__main__":
    main()
