"""Time to a converged answer: klqp's defaults against klqp without its local step and
against hand-written NumPyro, on targets whose optimum is known exactly.

    .venv/bin/python bench/convergence.py                 # the full run (~25 min, 2 CPU cores)
    .venv/bin/python bench/convergence.py --quick         # a smoke run (~2 min)
    .venv/bin/python bench/convergence.py --plot docs/figures/convergence.png --json out.json
    .venv/bin/python bench/convergence.py --from-json out.json --plot fig.png   # replot

Targets (each checked after every epoch on the q the method would report then):

1. flagship (examples/hierarchical.py, N = 100,000, b = 2000, y noise sd 0.5 and 1.0):
   RMS(q mean of z - optimum) <= 0.03 optimum sd, theta's and log sigma's q means within
   one optimum sd of the optimum, their q sds within 0.8-1.25x the optimum's; the
   optimum is the exact mean-field optimum (the example's ``mean_field_optimum``).
   error = the largest of RMS / 0.03 sd*, |mean - mean*| / sd*, |log(sd / sd*)| / log 1.25:
   the target holds when error <= 1.
2. poisson (Poisson counts with a log-normal per-row effect, 3 weights and tau global,
   N = 50,000, b = 1000): the full-data ELBO of q within 0.01 nats/row of the maximum over
   q's family (bench/optima.py: closed-form expectations, full-batch Newton/L-BFGS).
   error = gap / 0.01.
3. normal_mean (globals only, N = 1000, prior N(0, 10), b = 100, 2000 steps): q's mean
   within half a posterior sd, its sd within 10 % of the exact posterior's.

Methods: klqp-numpyro and klqp-pymc with kq.fit's defaults; klqp-numpyro with
``local_step=kq.RowAdam()`` (the gradient step for locals, with sticking-the-landing and
the sqrt(N/b) step) and with klqp 0.1's rule (``local_step=None, global_step=None``,
Adam 1e-2); numpyro-hand: the hand-written NumPyro program of bench/cases.py (dense Adam
1e-2 over the N-row table of q's local parameters, rows from a per-epoch permutation).
klqp runs up to ``--epochs`` epochs; the others until ``--budget`` seconds or
``--max-epochs`` epochs. Seconds count from the call (compiles included) to the end of
an epoch's steps plus the result a fit returns there (klqp's averaging and final pass);
the evaluation of the error is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")  # float64 everywhere, as bench/run.py
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import klqp as kq  # noqa: E402
import klqp.cache  # noqa: E402
from cases import (_load_example, hierarchical_numpyro, poisson_data, poisson_klqp,  # noqa: E402
                   poisson_numpyro)
from optima import poisson_elbo, reference  # noqa: E402

LOG_125 = np.log(1.25)


# -- the cases -------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    title: str
    rows: int
    batch: int
    data: dict
    model: object          # () -> kq.Model
    program: object        # () -> (model, guide, args): the hand-written NumPyro program
    error: object          # params -> dict with "score" (target holds when <= 1) and details
    target: str
    info: dict = field(default_factory=dict)


def flagship_case(rows: int, batch: int, noise: float, seed: int = 0) -> Case:
    example = _load_example("hierarchical")
    data, _ = example.make_data(rows, seed, sigma=noise)
    opt = example.mean_field_optimum(data)
    (t_mean, t_sd), (s_mean, s_sd), (z_mean, z_sd) = opt["theta"], opt["log_sigma"], opt["z"]

    def error(params):
        rms = float(np.sqrt(np.mean((params["z"]["loc"] - z_mean) ** 2)) / z_sd)
        parts = {"z_rms/sd*": rms,
                 "|theta-theta*|/sd*": abs(float(params["theta"]["loc"]) - t_mean) / t_sd,
                 "|logsig-logsig*|/sd*": abs(float(params["sigma"]["loc"]) - s_mean) / s_sd,
                 "theta sd/sd*": float(params["theta"]["scale"]) / t_sd,
                 "logsig sd/sd*": float(params["sigma"]["scale"]) / s_sd}
        score = max(rms / 0.03, parts["|theta-theta*|/sd*"], parts["|logsig-logsig*|/sd*"],
                    abs(np.log(parts["theta sd/sd*"])) / LOG_125,
                    abs(np.log(parts["logsig sd/sd*"])) / LOG_125)
        return {"score": float(score), **parts}

    return Case(f"flagship_{noise:g}", f"flagship, y noise sd {noise:g}: N={rows:,}, b={batch}",
                rows, batch, data, example.build_model,
                lambda: hierarchical_numpyro(data, batch), error,
                "z RMS <= 0.03 sd*, global means within 1 sd*, sds within 0.8-1.25x",
                {"optimum": {"theta": [t_mean, t_sd], "log_sigma": [s_mean, s_sd],
                             "z_sd": float(z_sd)}})


def poisson_case(rows: int, batch: int, seed: int = 0) -> Case:
    data = poisson_data(rows, seed)
    start = time.perf_counter()
    ref = reference(data)
    seconds = time.perf_counter() - start

    def error(params):
        elbo = poisson_elbo(data, params["w"]["loc"], params["w"]["scale"],
                            float(params["tau"]["loc"]), float(params["tau"]["scale"]),
                            params["u"]["loc"], params["u"]["scale"]) / rows
        gap = ref["elbo_per_row"] - elbo
        return {"score": float(gap / 0.01), "gap nats/row": float(gap)}

    return Case("poisson", f"Poisson log-normal: N={rows:,}, b={batch}", rows, batch, data,
                poisson_klqp, lambda: poisson_numpyro(data, batch), error,
                "ELBO within 0.01 nats/row of the full-batch optimum",
                {"reference_elbo_per_row": ref["elbo_per_row"],
                 "reference_grad_norm": ref["grad_norm"], "reference_seconds": seconds})


# -- the methods -------------------------------------------------------------------------------

def run_klqp(case: Case, backend: str, epochs: int, seed: int, budget: float = float("inf"),
             **fit_kwargs) -> list:
    """kq.fit with a callback after every epoch: (epoch, seconds, error). The fit stops
    after ``epochs`` epochs, or at the first epoch past ``budget`` seconds."""
    per_epoch = case.rows // case.batch
    trace, evaluating = [], [0.0]
    # every run compiles, as the hand-written program does: no program kept by an earlier
    # fit of the same structure (bench/compile_once.py times that reuse)
    klqp.cache.clear()
    start = time.perf_counter()

    def after_epoch(step, result):
        t0 = time.perf_counter()
        trace.append((step / per_epoch, t0 - start - evaluating[0], case.error(result.params)))
        evaluating[0] += time.perf_counter() - t0
        if trace[-1][1] > budget:
            raise StopIteration

    kq.fit(case.model(), case.data, backend=backend, steps=epochs * per_epoch,
           batch_size=case.batch, seed=seed, chunk_size=per_epoch, progress=False,
           callbacks=[after_epoch], **fit_kwargs)
    return trace


def run_numpyro_hand(case: Case, max_epochs: int, budget: float, seed: int,
                     learning_rate: float = 1e-2) -> list:
    """The hand-written program, one lax.scan per epoch of svi.update on rows from that
    epoch's permutation (bench/runners.py's numpyro-hand-epochs)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from jax import lax
    from numpyro.infer import SVI, Trace_ELBO

    from runners import epoch_batches

    per_epoch = case.rows // case.batch
    trace, evaluating = [], 0.0
    start = time.perf_counter()
    model, guide, args = case.program()
    svi = SVI(model, guide, numpyro.optim.Adam(step_size=learning_rate), Trace_ELBO())

    @jax.jit
    def epoch(state, indices, *args):
        return lax.scan(lambda s, idx: svi.update(s, *args, idx=idx), state, indices)

    state = svi.init(jax.random.PRNGKey(seed), *args)
    for e in range(max_epochs):
        state, losses = epoch(state, jnp.asarray(epoch_batches(case.rows, case.batch,
                                                               e * per_epoch, per_epoch, seed)),
                              *args)
        losses.block_until_ready()
        t0 = time.perf_counter()
        p = svi.get_params(state)
        names = sorted({k.rsplit("_", 1)[0] for k in p})
        params = {n: {"loc": np.asarray(p[f"{n}_loc"]), "scale": np.asarray(p[f"{n}_scale"])}
                  for n in names}
        trace.append((e + 1, t0 - start - evaluating, case.error(params)))
        evaluating += time.perf_counter() - t0
        if trace[-1][1] > budget:
            break
    return trace


def methods(quick: bool) -> list:
    """(label, kind, options): the contenders, in the order the tables list them."""
    out = [("klqp-numpyro", "klqp", dict(backend="numpyro")),
           ("klqp-pymc", "klqp", dict(backend="pymc")),
           ("klqp-numpyro, local_step=kq.RowAdam()", "klqp-long",
            dict(backend="numpyro", local_step=kq.RowAdam())),
           ("klqp-numpyro, klqp 0.1 rule", "klqp-long",
            dict(backend="numpyro", local_step=None, global_step=None, learning_rate=1e-2)),
           ("numpyro-hand (dense Adam 1e-2)", "hand", {})]
    return out


def reached(trace: list) -> tuple:
    """(epoch, seconds) from which the target holds at every later evaluation, or None."""
    hit = None
    for epoch, seconds, err in trace:
        if err["score"] <= 1.0:
            hit = hit or (epoch, seconds)
        else:
            hit = None
    return hit


# -- the run -------------------------------------------------------------------------------

def run_case(case: Case, args) -> dict:
    per_epoch = case.rows // case.batch
    print(f"\n{case.title}; {per_epoch} steps/epoch; target: {case.target}", flush=True)
    rows = {}
    for label, kind, options in methods(args.quick):
        runs = []
        for seed in (range(args.seeds) if kind == "klqp" else [0]):
            if kind == "hand":
                trace = run_numpyro_hand(case, args.max_epochs, args.budget, seed)
            else:
                opts = dict(options)
                backend = opts.pop("backend")
                if kind == "klqp":
                    trace = run_klqp(case, backend, args.epochs, seed, **opts)
                else:  # as long as the hand-written program: until the budget, in one fit
                    trace = run_klqp(case, backend, args.max_epochs, seed, budget=args.budget,
                                     **opts)
            runs.append(trace)
            hit = reached(trace)
            last = trace[-1]
            print(f"  {label:<40} seed {seed}: "
                  + (f"target from epoch {hit[0]:g} at {hit[1]:.1f} s" if hit else
                     "target not reached")
                  + f"; after {last[0]:g} epochs ({last[1]:.1f} s) error {last[2]['score']:.3g} "
                  + "(" + ", ".join(f"{k} {v:.3g}" for k, v in last[2].items() if k != "score")
                  + ")", flush=True)
        rows[label] = [[(float(e), float(s), err) for e, s, err in t] for t in runs]
    return {"title": case.title, "target": case.target, "info": case.info, "traces": rows}


def normal_mean_table(args) -> dict:
    """Target 3: kq.fit's defaults against klqp 0.1's rule, both backends, 2000 steps."""
    rng = np.random.default_rng(11)
    y = 1.3 + rng.normal(size=1000)
    with kq.Model("normal_mean") as model:
        mu = kq.Global("mu", kq.Normal(0.0, 10.0))
        kq.Observed("y", kq.Normal(mu, 1.0))
    precision = 1 / 100 + len(y)
    mean, sd = y.sum() / precision, precision**-0.5
    print("\nnormal mean, N=1000, prior N(0, 10), b=100, 2000 steps: q against the exact "
          "posterior (target: |mean - exact| <= 0.5 sd, q sd within 10 %)")
    out = []
    for backend in ("numpyro", "pymc"):
        for label, rule in (("defaults", {}),
                            ("klqp 0.1 rule", dict(local_step=None, global_step=None))):
            start = time.perf_counter()
            r = kq.fit(model, {"y": y}, backend=backend, steps=2000, batch_size=100, seed=0,
                       progress=False, **rule)
            seconds = time.perf_counter() - start
            row = {"backend": backend, "rule": label, "mean_error_sd": abs(float(r.mean("mu")) - mean) / sd,
                   "sd_ratio": float(r.std("mu")) / sd, "seconds": seconds}
            out.append(row)
            print(f"  {backend:<8} {label:<14} |mean - exact| / sd {row['mean_error_sd']:.3f}   "
                  f"q sd / exact sd {row['sd_ratio']:.3f}   {seconds:.1f} s", flush=True)
    return {"exact": [mean, sd], "rows": out}


def summary(results: dict) -> None:
    print("\nSummary: epochs and seconds until the target holds (median over seeds), and the "
          "error at the end")
    for name, res in results["cases"].items():
        print(f"\n{res['title']}  ({res['target']})")
        print(f"  {'method':<40} {'epochs':>7} {'seconds':>8}   {'end: epochs':>11} {'s':>7} "
              f"{'error':>8}")
        for label, traces in res["traces"].items():
            hits = [reached(t) for t in traces]
            got = [h for h in hits if h]
            epochs = f"{np.median([h[0] for h in got]):g}" if got else "-"
            secs = f"{np.median([h[1] for h in got]):.1f}" if got else "-"
            last = traces[0][-1]
            ok = f" ({len(got)}/{len(hits)} seeds)" if len(hits) > 1 else ""
            print(f"  {label:<40} {epochs:>7} {secs:>8}   {last[0]:>11g} {last[1]:>7.1f} "
                  f"{last[2]['score']:>8.3g}{ok}")


def plot(results: dict, path: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results["cases"].items())
    fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], cases):
        for label, traces in res["traces"].items():
            t = traces[0]
            ax.plot([s for _, s, _ in t], [max(err["score"], 1e-3) for _, _, err in t],
                    marker=".", label=label)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("seconds (compile included)")
        ax.set_ylabel("error (target: <= 1)")
        ax.set_title(res["title"], fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def machine() -> dict:
    import jax
    return {"date": time.strftime("%Y-%m-%d"), "platform": platform.platform(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "load": list(os.getloadavg()), "jax_backend": jax.default_backend(),
            "versions": {m: __import__(m).__version__ for m in
                         ("klqp", "numpyro", "jax", "pymc", "pytensor", "numpy")}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, short runs (smoke)")
    parser.add_argument("--cases", default="flagship_0.5,flagship_1,poisson,normal_mean")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the default runs")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the default runs")
    parser.add_argument("--max-epochs", type=int, default=400, help="cap of the other runs")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds the other runs get (compile included)")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--from-json", help="print the summary and plot of an earlier --json "
                        "run instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        summary(results)
        if args.plot:
            plot(results, args.plot)
        return results
    if args.quick:
        args.seeds, args.epochs, args.max_epochs, args.budget = 1, 4, 4, 30.0
    wanted = args.cases.split(",")
    results = {"machine": machine(), "settings": vars(args), "cases": {}}
    print(json.dumps(results["machine"]))
    scale = 10 if args.quick else 1
    for name in wanted:
        if name.startswith("flagship_"):
            case = flagship_case(100_000 // scale, 2000 // scale, float(name.split("_")[1]))
        elif name == "poisson":
            case = poisson_case(50_000 // scale, 1000 // scale)
        elif name == "normal_mean":
            results["normal_mean"] = normal_mean_table(args)
            continue
        else:
            raise SystemExit(f"unknown case {name!r}")
        results["cases"][case.name] = run_case(case, args)
    summary(results)
    if args.plot and results["cases"]:
        plot(results, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
