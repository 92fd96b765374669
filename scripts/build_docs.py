"""Run every documented example, keep what it prints and draws, then build the docs.

Outputs go to docs/generated/ (not committed): <example>.txt with the command and its
output, and the figures the example saves. The example pages include them with
pymdownx.snippets, and `mkdocs build --strict` fails on a missing one.

    .venv/bin/python scripts/build_docs.py            # full runs
    .venv/bin/python scripts/build_docs.py --quick    # the short runs CI uses
    .venv/bin/python scripts/build_docs.py --quick --reuse   # CI, after `pytest -m slow`

The quick runs are the ones tests/test_examples.py makes on the NumPyro backend (float64,
as the test suite computes). With ``KLQP_DOCS_RECORD=1`` in the environment those tests
write their output here (``record``), and ``--reuse`` keeps an output whose recorded
command is the one this script would run, so CI runs each example once, not twice.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "generated"
QUICK_ENV = {"JAX_ENABLE_X64": "1"}  # the test suite's precision, shown in the command

# example -> (full-run flags, quick-run flags); {out} is the generated folder
EXAMPLES = {
    "hierarchical": ([], ["--rows", "4000", "--steps", "100", "--batch-size", "400"]),
    "minibatch_logistic": ([], ["--rows", "4000", "--batch-size", "100", "--steps", "1000"]),
    "global_vs_local": ([], ["--rows", "1000", "--batch-size", "100", "--steps", "2000"]),
    "bayes_by_backprop": (["--plot", "{out}/bayes_by_backprop.png"],
                          ["--steps", "600", "--plot", "{out}/bayes_by_backprop.png"]),
    "vae": (["--images", "{out}/vae.png"], ["--steps", "400", "--images", "{out}/vae.png"]),
    "tempered_posterior": ([], ["--steps", "1500"]),
    "scaling_out": ([], ["--rows", "8000", "--steps", "60", "--batch-size", "400"]),
    "varying_slopes": ([], []),  # its NUTS check is the page's point: the full run
    "tutorial_models": ([], ["--steps", "1500"]),
}


def quick_args(name: str, out: pathlib.Path | str = OUT) -> list[str]:
    """The example's quick-run arguments, figures written under ``out``."""
    return [a.format(out=out) for a in EXAMPLES[name][1]]


def shown_command(name: str, args: list[str], env: dict | None = None) -> str:
    """The command line the page shows: paths relative to the repository."""
    prefix = [f"{k}={v}" for k, v in (env or {}).items()]
    return " ".join(prefix + ["python", f"examples/{name}.py"]
                    + [a.replace(str(ROOT) + "/", "") for a in args])


def record(name: str, args: list[str], stdout: str, env: dict | None = None) -> None:
    """Write one example's output page snippet: the command, then what it printed."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.txt").write_text(f"$ {shown_command(name, args, env)}\n{stdout}")


def recorded(name: str, args: list[str], env: dict | None = None) -> bool:
    """Whether OUT holds this exact command's output and the figures it writes."""
    text = OUT / f"{name}.txt"
    if not text.exists():
        return False
    first = text.read_text().split("\n", 1)[0]
    figures = [pathlib.Path(a) for a in args if a.startswith(str(OUT))]
    return first == f"$ {shown_command(name, args, env)}" and all(f.exists() for f in figures)


def run_example(name: str, args: list[str], env: dict) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), *args],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "CI": "true", **env})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"example {name} failed")
    record(name, args, proc.stdout, env)
    print(f"ran {name} ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs (CI)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep outputs the example tests recorded for the same command")
    parser.add_argument("--backend", default="numpyro")
    parser.add_argument("--no-build", action="store_true", help="only run the examples")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    env = QUICK_ENV if args.quick else {}
    todo = {}
    for name, (full, _) in EXAMPLES.items():
        flags = (quick_args(name) if args.quick else [a.format(out=OUT) for a in full])
        flags += ["--backend", args.backend]
        if args.reuse and recorded(name, flags, env):
            print(f"kept {name} (recorded by the example tests)")
        else:
            todo[name] = flags
    # the examples are separate processes: run as many at once as there are CPUs
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = [pool.submit(run_example, name, flags, env) for name, flags in todo.items()]
        for run in runs:
            run.result()  # an example's failure stops the build
    if not args.no_build:
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(ROOT / "site")], cwd=ROOT, check=True,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


if __name__ == "__main__":
    main()
