"""klqp's benchmark: klqp's fits against hand-written NumPyro and PyMC code, in one process.

    .venv/bin/python bench/run.py                      # the full run (a few minutes on 2 cores)
    .venv/bin/python bench/run.py --quick              # a smoke run (under a minute)
    .venv/bin/python bench/run.py --pymc-modes c,jax,numba --steps 5000 --json out.json

For each model it times kq.fit on each installed backend (PyMC once per --pymc-modes
mode); the NumPyro program a user would write for the same objective, run three ways
(a jitted svi.update in a Python loop; the same in a lax.scan; a lax.scan fed each
epoch's row permutation instead of the plate's own subsample draw); and PyMC's own
pm.Minibatch + total_size + pm.fit with ADVI where PyMC can express the model.
Everything runs in float64 (JAX_ENABLE_X64=1, PyTensor floatX=float64), with the same
batch size, the same number of steps and Adam at the same step size. It prints the
machine, first-call seconds and steady steps per second, and klqp's steps per second as
ratios of each hand-written baseline's. bench/README.md explains the columns.
"""

from __future__ import annotations

import os

# Same precision everywhere: JAX computes in float32 unless x64 is on before it is
# imported, PyTensor in float64 unless told otherwise (set again after its import).
os.environ["JAX_ENABLE_X64"] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402

import klqp as kq  # noqa: E402

import cases  # noqa: E402  (bench/ is sys.path[0] when this file is run)
import runners  # noqa: E402

MODELS = ("logistic", "hierarchical", "bnn")
DEFAULT_MODELS = ("logistic", "hierarchical")
PYMC_MODES = ("c", "jax", "numba")  # klqp_pymc.modes.MODES; pm.fit takes the same names
BASELINE_PREFIXES = ("numpyro-hand", "pymc-hand")


# -- command line ----------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run: few steps, small data, PyMC in JAX mode only "
                             "(unless --pymc-modes says otherwise)")
    parser.add_argument("--steps", type=int, help="optimizer steps per runner (default 5000; "
                                                  "--quick: 300)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--pymc-modes", help="comma-separated PyTensor modes for klqp's PyMC "
                                             "backend and pm.fit: c, jax, numba "
                                             "(default c,jax; --quick: jax; '' for none)")
    parser.add_argument("--global-steps", default="auto",
                        help="comma-separated kq.fit global_step= settings to time klqp "
                             f"with, from {', '.join(runners.GLOBAL_STEPS)} (default auto; "
                             "diagonal: kq.GlobalStep(dense_max=0), none: Adam steps): what "
                             "the curvature costs")
    parser.add_argument("--logistic-rows", type=int, help="N (default 100000; --quick: 10000)")
    parser.add_argument("--logistic-dim", type=int, default=20, help="D (default 20)")
    parser.add_argument("--logistic-batch", type=int, default=256, help="b (default 256)")
    # The example itself uses N=100,000 and b=2000; NumPyro's plate subsample costs
    # O(N b) per step on CPU, which at that size takes minutes for 5000 steps.
    parser.add_argument("--hierarchical-rows", type=int,
                        help="N (default 20000; --quick: 2000; the example's is 100000)")
    parser.add_argument("--hierarchical-batch", type=int,
                        help="b (default 500; --quick: 200; the example's is 2000)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every runner; figures are the median over rounds "
                             "(default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    _fill_defaults(args)
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown --models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    bad_steps = set(args.global_steps) - set(runners.GLOBAL_STEPS)
    if bad_steps or not args.global_steps:
        parser.error(f"unknown --global-steps {sorted(bad_steps)}; choose from "
                     f"{', '.join(runners.GLOBAL_STEPS)}")
    bad_modes = set(args.pymc_modes) - set(PYMC_MODES)
    if bad_modes:
        parser.error(f"unknown --pymc-modes {sorted(bad_modes)}; choose from {', '.join(PYMC_MODES)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.steps < 10:
        parser.error("--steps must be at least 10 (a warm-up, then the timed steps)")
    return args


def _fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on --quick."""
    quick = args.quick
    pick = lambda given, full, small: given if given is not None else (small if quick else full)
    args.steps = pick(args.steps, 5000, 300)
    args.logistic_rows = pick(args.logistic_rows, 100_000, 10_000)
    args.hierarchical_rows = pick(args.hierarchical_rows, 20_000, 2_000)
    args.hierarchical_batch = pick(args.hierarchical_batch, 500, 200)
    args.pymc_modes = [m for m in pick(args.pymc_modes, "c,jax", "jax").split(",") if m]
    args.models = [m for m in args.models.split(",") if m]
    args.global_steps = [g for g in args.global_steps.split(",") if g]
    # klqp's default chunk is 500 steps; the warm-up is one chunk, so the steady rate
    # leaves out every compile. The lax.scan baselines run whole chunks, so every runner
    # gets a whole number of chunks (the same number of steps).
    args.chunk = max(1, min(500, args.steps // 5))
    args.steps = -(-args.steps // args.chunk) * args.chunk


# -- the machine -----------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    """What the figures depend on: CPUs, JAX's devices, library versions, precision."""
    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {p: _version(p) for p in
                     ("klqp", "numpyro", "jax", "jaxlib", "optax", "pymc", "pytensor", "numpy")},
        "jax_backend": None, "jax_devices": [], "jax_enable_x64": None,
        "pytensor_floatX": None, "pytensor_blas_ldflags": None,
    }
    if installed("jax"):
        import jax
        info.update(jax_backend=jax.default_backend(), jax_devices=[str(d) for d in jax.devices()],
                    jax_enable_x64=bool(jax.config.jax_enable_x64))
    if installed("pytensor"):
        import pytensor
        pytensor.config.floatX = "float64"
        with warnings.catch_warnings():  # "could not link to a BLAS": reported instead
            warnings.simplefilter("ignore")
            # Empty: PyTensor's C mode found no BLAS and uses its own slower kernels.
            info.update(pytensor_floatX=pytensor.config.floatX,
                        pytensor_blas_ldflags=pytensor.config.blas__ldflags)
    return info


def print_machine(info: dict) -> None:
    v = info["versions"]
    print(f"date {info['date']}; {info['platform']}; Python {info['python']}")
    print(f"CPUs: {info['cpu_count']} ({info['cpus_usable']} usable); load average at start "
          f"{info['load_average_at_start']}")
    print(f"jax.default_backend() = {info['jax_backend']}; devices {info['jax_devices']}")
    print("versions: " + ", ".join(f"{p} {v[p]}" for p in v))
    print(f"precision: float64 everywhere (JAX_ENABLE_X64=1 -> jax_enable_x64="
          f"{info['jax_enable_x64']}; PyTensor floatX={info['pytensor_floatX']})")
    if info["pytensor_blas_ldflags"] is not None:
        print(f"PyTensor BLAS (C mode): {info['pytensor_blas_ldflags'] or 'none found'}")


# -- running -----------------------------------------------------------------------------------

def prepare_process() -> None:
    """Import every library and load klqp's backends, and run one tiny jitted function,
    before any clock starts: a runner's first call is then its own build, compile and
    first step, not the process's one-time imports and JAX start-up, whichever runs first."""
    for module in ("numpyro", "pymc"):
        if installed(module):
            importlib.import_module(module)
    for name in kq.backends.available():
        kq.backends.get(name)
    if installed("jax"):
        import jax
        jax.jit(lambda a: a + 1)(1.0).block_until_ready()


def build_cases(args) -> list:
    made = {"logistic": lambda: cases.logistic_case(args.logistic_rows, args.logistic_dim,
                                                    args.logistic_batch),
            "hierarchical": lambda: cases.hierarchical_case(args.hierarchical_rows,
                                                            args.hierarchical_batch),
            "bnn": lambda: cases.bnn_case(10_000 if args.quick else 50_000, 128)}
    return [made[name]() for name in args.models]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def planned_runs(case, args) -> list[tuple[str, object]]:
    """(runner name, a function that times it) for every contender, or a reason string
    in place of the function where the runner cannot run."""
    steps, chunk = args.steps, args.chunk
    have_numpyro = installed("numpyro") and "numpyro" in kq.backends.available()
    have_pymc = installed("pymc") and "pymc" in kq.backends.available()
    runs = [
        ("numpyro-hand-loop", (lambda: runners.time_numpyro_loop(case, steps, chunk))
         if installed("numpyro") else "numpyro not installed"),
        ("numpyro-hand-scan", (lambda: runners.time_numpyro_scan(case, steps, chunk))
         if installed("numpyro") else "numpyro not installed"),
        ("numpyro-hand-epochs",
         (lambda: runners.time_numpyro_scan(case, steps, chunk, epochs=True))
         if installed("numpyro") else "numpyro not installed"),
    ]
    for rule in args.global_steps:
        runs.append((runners.klqp_runner_name("numpyro", None, rule),
                     (lambda rule=rule: runners.time_klqp(case, "numpyro", steps, chunk,
                                                          global_step=rule))
                     if have_numpyro else "klqp's numpyro backend not installed"))
    for mode in args.pymc_modes:
        if not installed("pymc"):
            hand = "pymc not installed"
        elif case.pymc_model is None:
            hand = case.pymc_unavailable
        else:
            hand = lambda mode=mode: runners.time_pymc_fit(case, steps, chunk, mode)
        runs.append((f"pymc-hand[{mode}]", hand))
        for rule in args.global_steps:
            runs.append((runners.klqp_runner_name("pymc", mode, rule),
                         (lambda mode=mode, rule=rule: runners.time_klqp(
                             case, "pymc", steps, chunk, mode, global_step=rule))
                         if have_pymc else "klqp's pymc backend not installed"))
    return runs


def run_case(case, args) -> dict:
    """Time every contender on one case, ``--repeat`` rounds of all of them in turn (so a
    slow spell of the machine hits every runner alike); a runner that fails is reported,
    not fatal."""
    print(f"\n== {case.description}: {args.steps} steps each", flush=True)
    rounds: dict[str, list] = {}
    unavailable, errors = {}, {}
    for round_number in range(1, args.repeat + 1):
        for name, run in planned_runs(case, args):
            if isinstance(run, str):
                unavailable[name] = run
                continue
            if name in errors:
                continue
            print(f"   {name}" + (f" (round {round_number})" if args.repeat > 1 else "") + " ...",
                  end="", flush=True)
            try:
                t = run()
            except Exception as exc:  # keep the other runners' figures; report at the end
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(" FAILED")
                traceback.print_exc()
                continue
            rounds.setdefault(name, []).append(t.as_dict())
            print(f" {t.first_call_s:.1f} s first call, {t.steps_per_s:,.0f} steps/s", flush=True)
    timings = {name: merge_rounds(ts) for name, ts in rounds.items() if name not in errors}
    return {"description": case.description, "sizes": case.sizes, "steps": args.steps,
            "runners": timings, "unavailable": unavailable, "errors": errors,
            "ratios": ratios(timings)}


def merge_rounds(rounds: list) -> dict:
    """One runner's figures over the rounds: the first round's first call (what a user's
    first fit in a session costs; later rounds may find more in PyTensor's disk cache),
    the median steps/s, every chunk's rate, and each round's figures under "rounds"."""
    if len(rounds) == 1:
        return rounds[0]
    merged = dict(rounds[0])
    for key in ("steps_per_s", "steps_per_s_mean", "final_loss"):
        merged[key] = statistics.median(r[key] for r in rounds)
    merged["chunk_rates"] = [x for r in rounds for x in r["chunk_rates"]]
    merged["rounds"] = rounds
    return merged


def ratios(timings: dict) -> dict:
    """klqp's steps/s divided by each hand-written baseline's: {klqp runner: {baseline: x}}."""
    baselines = {k: t for k, t in timings.items() if k.startswith(BASELINE_PREFIXES)}
    return {k: {b: t["steps_per_s"] / bt["steps_per_s"] for b, bt in baselines.items()}
            for k, t in timings.items() if k.startswith("klqp-")}


# -- the report ----------------------------------------------------------------------------------

def format_table(result: dict) -> str:
    """One model's figures: a row per runner, then klqp's ratios to each baseline."""
    timings, ratio = result["runners"], result["ratios"]
    names = list(timings) + list(result["unavailable"]) + list(result["errors"])
    w = max([20] + [len(n) for n in names])  # the runner column
    lines = [f"{result['description']}; {result['steps']} steps",
             f"  {'runner':<{w}} {'first call s':>12} {'steps/s':>9} {'chunks min-max':>16} "
             f"{'end loss':>9}  dtype"]
    for name, t in timings.items():
        spread = f"{min(t['chunk_rates']):,.0f}-{max(t['chunk_rates']):,.0f}"
        lines.append(f"  {name:<{w}} {t['first_call_s']:>12.1f} {t['steps_per_s']:>9,.0f} "
                     f"{spread:>16} {t['final_loss']:>9,.0f}  {t['dtype']}")
    for name, why in result["unavailable"].items():
        lines.append(f"  {name:<{w}} {'n/a':>12} {'n/a':>9} {'':>16} {'':>9}  ({_short(why, 40)})")
    for name, err in result["errors"].items():
        lines.append(f"  {name:<{w}} {'FAILED':>12} {'':>9} {'':>16} {'':>9}  {_short(err, 40)}")
    baselines = sorted({b for row in ratio.values() for b in row}, key=list(timings).index)
    if ratio and baselines:
        width = max(len(b) for b in baselines) + 1
        lines.append("  ratio: klqp steps/s / hand-written baseline steps/s")
        lines.append(f"  {'':<{w}}" + "".join(f"{b:>{width}}" for b in baselines))
        for name, row in ratio.items():
            lines.append(f"  {name:<{w}}" + "".join(f"{row[b]:>{width}.2f}" for b in baselines))
    reasons: dict[str, list] = {}  # one line per reason, naming every runner it covers
    for name, why in result["unavailable"].items():
        reasons.setdefault(why, []).append(name)
    for why, names in reasons.items():
        lines.append(f"  {', '.join(names)}: {why}")
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    text = text.splitlines()[0] if text else ""
    return text if len(text) <= width else text[:width - 3] + "..."


def check_finite(report: dict) -> list[str]:
    """Runners whose figures are not positive and finite (a broken measurement)."""
    bad = []
    for model, result in report["models"].items():
        for name, t in result["runners"].items():
            for key in ("first_call_s", "steps_per_s"):
                if not (math.isfinite(t[key]) and t[key] > 0):
                    bad.append(f"{model}/{name}: {key}={t[key]}")
    return bad


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print_machine(info)
    prepare_process()
    settings = {"steps": args.steps, "repeat": args.repeat, "warmup_steps": args.chunk,
                "klqp_chunk_size": args.chunk, "learning_rate": runners.LEARNING_RATE,
                "optimizer": "Adam", "pymc_modes": args.pymc_modes, "quick": args.quick,
                "global_steps": args.global_steps}
    print(f"settings: {settings}")
    report = {"machine": info, "settings": settings,
              "models": {case.name: run_case(case, args) for case in build_cases(args)}}
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at the end {report['machine']['load_average_at_end']}\n")
    for result in report["models"].values():
        print(format_table(result) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    problems = check_finite(report) + [f"{m}/{k}: {e}" for m, r in report["models"].items()
                                       for k, e in r["errors"].items()]
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
