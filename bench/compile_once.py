"""How long a fit takes to start, the first time and again: klqp against hand-written code.

    .venv/bin/python bench/compile_once.py            # both cases, every runner (~3 min)
    .venv/bin/python bench/compile_once.py --quick    # a smoke run (one process, PyMC in JAX mode)

Each runner runs in a fresh Python process, twice in that process: the second time with
the model declared again (a new kq.Model, a new NumPyro program, a new pm.Model), new
data of the same shapes and another seed, as a user's second fit in a notebook or a
loop over seeds or folds. Both runs start the clock at the call. "first call" is the
seconds to the end of the first chunk of steps less those steps at the steady rate
(``runners.Clock``): tracing, compiling and moving the data. klqp keeps compiled
programs across fits in a process (``klqp.cache``), so its second call skips the
compile; hand-written NumPyro compiles again for a new program (a new ``SVI`` object),
and ``pm.fit`` compiles its step function again for a new model (PyTensor's disk cache
of C modules makes the second build cheaper, not free).
Float64, the same steps and batch as bench/run.py's cases, smaller data.
"""

from __future__ import annotations

import os

os.environ["JAX_ENABLE_X64"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402

import cases  # noqa: E402  (bench/ is sys.path[0] when this file is run)
import runners  # noqa: E402

RUNNERS = ("klqp-numpyro", "klqp-pymc", "numpyro-hand-scan", "pymc-hand")
STEPS, CHUNK = 75, 25


def make_case(name: str, seed: int):
    """The case with data drawn from ``seed`` (the same shapes for every seed)."""
    if name == "logistic":
        case = cases.logistic_case(rows=5_000, dim=10, batch=256)
        data = cases.logistic_data(5_000, 10, seed=seed)
        return replace(case, data=data, numpyro_program=lambda: cases.logistic_numpyro(data, 256),
                       pymc_model=lambda: cases.logistic_pymc(data, 256))
    case = cases.hierarchical_case(rows=5_000, batch=256)
    data, _ = cases._load_example("hierarchical").make_data(5_000, seed=seed)
    return replace(case, data=data, numpyro_program=lambda: cases.hierarchical_numpyro(data, 256))


def time_once(runner: str, case, pymc_mode: str) -> float:
    """First-call seconds of one run of ``runner`` on ``case``."""
    if runner == "klqp-numpyro":
        t = runners.time_klqp(case, "numpyro", STEPS, CHUNK)
    elif runner == "klqp-pymc":
        t = runners.time_klqp(case, "pymc", STEPS, CHUNK, mode=pymc_mode)
    elif runner == "numpyro-hand-scan":
        t = runners.time_numpyro_scan(case, STEPS, CHUNK)
    else:
        t = runners.time_pymc_fit(case, STEPS, CHUNK, mode=pymc_mode)
    return t.first_call_s


def twice(runner: str, case_name: str, pymc_mode: str) -> dict:
    """``runner``'s first-call seconds, run twice in this process."""
    import pytensor

    pytensor.config.floatX = "float64"
    warnings.filterwarnings("ignore")
    first = time_once(runner, make_case(case_name, seed=0), pymc_mode)
    second = time_once(runner, make_case(case_name, seed=1), pymc_mode)
    return {"first": first, "second": second}


def child(runner: str, case_name: str, pymc_mode: str) -> None:
    """Run ``runner`` twice in this process and print its two first-call figures as JSON."""
    print(json.dumps(twice(runner, case_name, pymc_mode)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: the logistic case only, every runner in this process "
                             "(first calls after the first runner's are then not cold)")
    # C by default: its first compile is the slow one a disk cache helps. --quick takes JAX,
    # as bench/run.py --quick does: on a fresh machine C compiles ~100 modules (a minute).
    parser.add_argument("--pymc-mode", choices=("c", "jax", "numba"), default=None,
                        help="PyTensor mode of klqp-pymc and pm.fit (default c; jax with --quick)")
    parser.add_argument("--child", nargs=2, metavar=("RUNNER", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pymc_mode = args.pymc_mode or ("jax" if args.quick else "c")
    if args.child:
        child(*args.child, pymc_mode)
        return
    names = ["logistic"] if args.quick else ["logistic", "hierarchical"]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {STEPS} steps in chunks of {CHUNK}, float64, "
          f"PyMC in {pymc_mode} mode")
    print(f"{'case':<13} {'runner':<18} {'first call s':>12} {'second call s':>14} "
          f"{'second/first':>12}")
    seconds = {}
    for name in names:
        for runner in RUNNERS:
            if runner == "pymc-hand" and name == "hierarchical":
                print(f"{name:<13} {runner:<18} {'n/a: pm.fit has no per-row latents':>40}")
                continue
            if args.quick:  # a smoke run: every runner in this one process
                figures = twice(runner, name, pymc_mode)
            else:
                out = subprocess.run([sys.executable, __file__, "--child", runner, name,
                                      "--pymc-mode", pymc_mode],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{runner} on {name} failed:\n{out.stderr[-3000:]}")
                figures = json.loads(out.stdout.strip().splitlines()[-1])
            seconds[name, runner] = figures
            print(f"{name:<13} {runner:<18} {figures['first']:>12.2f} {figures['second']:>14.2f} "
                  f"{figures['second'] / figures['first']:>12.3f}", flush=True)
    print("\nklqp's second call as a ratio of the hand-written second call (lower is better):")
    for name in names:
        for backend, hand in (("numpyro", "numpyro-hand-scan"), ("pymc", "pymc-hand")):
            if (name, hand) in seconds:
                ratio = seconds[name, f"klqp-{backend}"]["second"] / seconds[name, hand]["second"]
                print(f"  {name:<13} klqp-{backend} / {hand}: {ratio:.3f}")


if __name__ == "__main__":
    main()
