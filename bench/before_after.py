"""Every example and the closed-form optimum tests, fitted with klqp 0.1's rule and with
today's defaults, at equal wall-clock.

    .venv/bin/python bench/before_after.py                 # ~25 min on 2 CPU cores
    .venv/bin/python bench/before_after.py --only tempered_posterior,optima --backend pymc

"after" runs each example as it ships (kq.fit's defaults: the local step, the global
step); "before" runs it with ``--local-step none --global-step none`` (row-wise Adam for
locals, Adam for globals, one draw: klqp 0.1), first at the example's steps, then with
its steps scaled so that it gets at least the wall-clock "after" took (so a better
"after" answer is not bought with more time). Each row prints the example's own measure
of a right answer, before and after, with both runs' seconds.

The flagship (examples/hierarchical.py) "before" is klqp 0.1's README run: 20,000 steps,
Adam from 0.1 to 0.01; bench/convergence.py times it in detail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import klqp as kq  # noqa: E402
from cases import _load_example  # noqa: E402
from klqp import schedules  # noqa: E402

BEFORE = ["--local-step", "none", "--global-step", "none"]


def quiet(fn, *args):
    """Run ``fn`` with its printing swallowed; (its value, seconds)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        out = fn(*args)
    return out, time.perf_counter() - start


def elbo_of(result, draws: int = 64) -> float:
    """The full-data ELBO (nats) of a fit's reported q, by the same 64 draws for every
    fit of a model (common random numbers): kq.compile's estimator over all N rows."""
    model, data = result.model, result.problem.data
    n = result.problem.total_size
    c = kq.compile(model, data, backend="numpyro", batch_size=n, local_step=None)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(draws):
        noise = {v.name: rng.standard_normal(((n,) if v.role == "local" else ()) + v.shape)
                 for v in model.latents}
        total += c.terms(result.params, indices=np.arange(n), noise=noise)["elbo"]
    return total / draws


# -- each example's measure of a right answer --------------------------------------------------

def tempered(out):
    rows = out
    return {"max |mean - exact| / sd": max(abs(q - m) / s for _, _, q, m, _, s in rows),
            "max |q sd / exact - 1|": max(abs(qs / s - 1) for _, _, _, _, qs, s in rows)}


def global_vs_local(out):
    results, (mf_mean, mf_sd) = out
    got = {}
    for way in ("in-graph", "streamed"):
        r = results[way]
        got[f"{way}: |mean - mf| / mf sd"] = abs(float(r.mean("mu")) - mf_mean) / mf_sd
        got[f"{way}: q sd / mf sd"] = float(r.std("mu")) / mf_sd
    got["naive: q sd / mf sd"] = float(results["naive"].std("mu")) / mf_sd
    return got


def logistic(out):
    results, _ = out
    return {f"ELBO (scale {'on' if k else 'off'})": elbo_of(r) for k, r in results.items()}


def bayes_by_backprop(out):
    rows, _ = out
    got = {}
    for way, accuracy, nll, ece in rows:
        got[f"{way}: accuracy"] = accuracy
        got[f"{way}: test NLL"] = nll
    return got


def vae(out):
    return {f"{label}: ELBO/image (last 5%)":
            float(r.history["elbo"][-max(1, len(r.history["elbo"]) // 20):].mean()
                  / r.problem.total_size) for label, r in out.items()}


EXAMPLES = {  # name: (extra flags, measure, higher is better?)
    "tempered_posterior": ([], tempered),
    "global_vs_local": ([], global_vs_local),
    "minibatch_logistic": ([], logistic),
    "bayes_by_backprop": ([], bayes_by_backprop),
    "vae": ([], vae),
}


def run_example(name: str, backend: str) -> list:
    module = _load_example(name)
    flags, measure = EXAMPLES[name]
    base = ["--backend", backend] + flags
    parser_steps = _default_steps(module)
    after, t_after = quiet(module.main, base)
    before, t_before = quiet(module.main, base + BEFORE)
    rows = [("after (defaults)", parser_steps, t_after, measure(after)),
            ("before (klqp 0.1)", parser_steps, t_before, measure(before))]
    steps, seconds = parser_steps, t_before
    while seconds < t_after:  # give "before" at least the wall-clock "after" took
        # compiles do not grow with steps: scale by the time ratio, at least by 1.25
        steps = int(math.ceil(steps * max(1.25, t_after / seconds)))
        longer, seconds = quiet(module.main, base + BEFORE + ["--steps", str(steps)])
        if seconds >= t_after:
            rows.append(("before, equal time", steps, seconds, measure(longer)))
    return rows


def _default_steps(module) -> int:
    """The example's default --steps (its example_parser call's ``steps=``)."""
    import inspect
    import re
    match = re.search(r"example_parser\(__doc__, steps=([0-9_]+)", inspect.getsource(module.main))
    return int(match.group(1).replace("_", ""))


def flagship(backend: str) -> list:
    example = _load_example("hierarchical")
    data, _ = example.make_data(100_000, 0)
    opt = example.mean_field_optimum(data)

    def measure(r):
        (tm, ts), (sm, ss), (zm, zs) = opt["theta"], opt["log_sigma"], opt["z"]
        q = r.params
        return {"|theta - opt| / sd*": abs(float(q["theta"]["loc"]) - tm) / ts,
                "theta sd / sd*": float(q["theta"]["scale"]) / ts,
                "|log sigma - opt| / sd*": abs(float(q["sigma"]["loc"]) - sm) / ss,
                "log sigma sd / sd*": float(q["sigma"]["scale"]) / ss,
                "z RMS / sd*": float(np.sqrt(np.mean((r.mean("z") - zm) ** 2)) / zs)}

    settings = dict(batch_size=2000, beta=1.0, scale_cost_to_minibatch=True, seed=0,
                    progress=False)
    after, t_after = quiet(lambda: kq.fit(example.build_model(), data, backend=backend,
                                          steps=750, **settings))
    before, t_before = quiet(lambda: kq.fit(
        example.build_model(), data, backend=backend, steps=20_000, local_step=None,
        global_step=None, learning_rate=schedules.linear(0.1, 0.01, 20_000), **settings))
    return [("after (defaults)", 750, t_after, measure(after)),
            ("before: klqp 0.1's README run", 20_000, t_before, measure(before))]


def optima(backend: str) -> list:
    """tests/test_optima.py's two closed-form checks, each setting, before and after."""
    import test_optima as t
    rng = np.random.default_rng(0)
    n, prior_sd, noise_sd = 1000, 2.0, 1.5
    y = 0.7 + noise_sd * rng.normal(size=n)
    with kq.Model("conjugate") as model:
        mu = kq.Global("mu", kq.Normal(0.0, prior_sd))
        kq.Observed("y", kq.Normal(mu, noise_sd))

    def conjugate(rule):
        worst_mean, worst_sd = 0.0, 0.0
        for beta, T, scaled in [(1.0, 1.0, True), (4.0, 1.0, False), (1.0, 0.25, True),
                                (0.5, 2.0, False)]:
            power = T / beta
            precision = 1 / prior_sd**2 + power * n / noise_sd**2
            mean, sd = power * y.sum() / noise_sd**2 / precision, precision**-0.5
            r = kq.fit(model, {"y": y}, backend=backend, steps=t.STEPS, batch_size=100, beta=beta,
                       likelihood_weight=T, scale_cost_to_minibatch=scaled, learning_rate=t.DECAY,
                       seed=1, progress=False, **rule)
            worst_mean = max(worst_mean, abs(float(r.mean("mu")) - mean) / sd)
            worst_sd = max(worst_sd, abs(float(r.std("mu")) / sd - 1))
        return {"conjugate: max |mean - exact| / sd": worst_mean,
                "conjugate: max |sd / exact - 1|": worst_sd}

    def local(rule):
        rng = np.random.default_rng(3)
        n, prior_sd, local_sd, noise_sd = 200, 1.0, 0.8, 0.5
        z = 0.6 + local_sd * rng.normal(size=n)
        y = z + noise_sd * rng.normal(size=n)
        with kq.Model("local") as model:
            theta = kq.Global("theta", kq.Normal(0.0, prior_sd))
            zl = kq.Local("z", kq.Normal(theta, local_sd))
            kq.Observed("y", kq.Normal(zl, noise_sd))
        worst = {"local: max |theta - opt| / sd": 0.0, "local: max |theta sd / opt - 1|": 0.0,
                 "local: max worst-row |z - opt| / sd": 0.0, "local: max |z sd / opt - 1|": 0.0}
        for bg, bl, T in [(1.0, 1.0, 1.0), (1.0, 4.0, 1.0), (2.0, 0.5, 1.5)]:
            mu, sd, m, v_sd = t.mean_field_optimum(y, prior_sd=prior_sd, local_sd=local_sd,
                                                   noise_sd=noise_sd, beta_global=bg,
                                                   beta_local=bl, T=T)
            r = kq.fit(model, {"y": y}, backend=backend, steps=t.STEPS, batch_size=50,
                       beta_global=bg, beta_local=bl, likelihood_weight=T,
                       scale_cost_to_minibatch=True, learning_rate=t.DECAY, seed=2,
                       progress=False, **rule)
            for key, value in (("local: max |theta - opt| / sd", abs(float(r.mean("theta")) - mu) / sd),
                               ("local: max |theta sd / opt - 1|", abs(float(r.std("theta")) / sd - 1)),
                               ("local: max worst-row |z - opt| / sd", np.max(np.abs(r.mean("z") - m)) / v_sd),
                               ("local: max |z sd / opt - 1|", np.max(np.abs(r.std("z") / v_sd - 1)))):
                worst[key] = max(worst[key], float(value))
        return worst

    rows = []
    for label, rule in (("after (defaults)", {}),
                        ("before (klqp 0.1)", dict(local_step=None, global_step=None))):
        start = time.perf_counter()
        got = {**conjugate(rule), **local(rule)}
        rows.append((label, t.STEPS, time.perf_counter() - start, got))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpyro")
    parser.add_argument("--only", default=None, help="comma-separated: examples, flagship, optima")
    args = parser.parse_args(argv)
    names = ["flagship", "optima", *EXAMPLES]
    if args.only:
        names = args.only.split(",")
    print(f"before (klqp 0.1's rule) and after (today's defaults), backend {args.backend}; "
          "lower is better for errors and ratios' distance to 1, higher for ELBO and accuracy")
    out = {}
    for name in names:
        rows = (flagship(args.backend) if name == "flagship" else
                optima(args.backend) if name == "optima" else run_example(name, args.backend))
        out[name] = rows
        print(f"\n{name}")
        keys = list(rows[0][3])
        print(f"  {'run':<30} {'steps':>7} {'seconds':>8}   " + "   ".join(keys))
        for label, steps, seconds, measure in rows:
            print(f"  {label:<30} {steps:>7} {seconds:8.1f}   "
                  + "   ".join(f"{measure[k]:.4g}".rjust(len(k)) for k in keys), flush=True)
    return out


if __name__ == "__main__":
    main()
