"""Run every documented example, keep what it prints and draws, then build the docs.

Outputs go to docs/generated/ (not committed): <example>.txt with the command and its
output, and the figures the example saves. The example pages include them with
pymdownx.snippets, and `mkdocs build --strict` fails on a missing one.

    .venv/bin/python scripts/build_docs.py            # full runs
    .venv/bin/python scripts/build_docs.py --quick    # the short runs CI uses
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

# example -> (full-run flags, quick-run flags); {out} is the generated folder
EXAMPLES = {
    "hierarchical": ([], ["--rows", "20000", "--steps", "150"]),  # 15 epochs either way
    "minibatch_logistic": ([], ["--rows", "4000", "--steps", "1500"]),
    "global_vs_local": ([], ["--rows", "1000", "--steps", "3000"]),
    "bayes_by_backprop": (["--plot", "{out}/bayes_by_backprop.png"],
                          ["--steps", "800", "--plot", "{out}/bayes_by_backprop.png"]),
    "vae": (["--images", "{out}/vae.png"], ["--steps", "600", "--images", "{out}/vae.png"]),
    "tempered_posterior": ([], ["--steps", "3000"]),
    "scaling_out": ([], ["--rows", "20000", "--steps", "150"]),
    "varying_slopes": ([], []),  # its NUTS check is the page's point: the full run
    "tutorial_models": ([], ["--steps", "1500"]),
}


def run_example(name: str, flags: list[str], backend: str) -> None:
    start = time.perf_counter()
    args = [a.format(out=OUT) for a in flags] + ["--backend", backend]
    shown = " ".join(["python", f"examples/{name}.py"] + [a.replace(str(ROOT) + "/", "") for a in args])
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), *args],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "CI": "true"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"example {name} failed")
    (OUT / f"{name}.txt").write_text(f"$ {shown}\n{proc.stdout}")
    print(f"ran {name} ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs (CI)")
    parser.add_argument("--backend", default="numpyro")
    parser.add_argument("--no-build", action="store_true", help="only run the examples")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # the examples are separate processes: run as many at once as there are CPUs
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = [pool.submit(run_example, name, quick if args.quick else full, args.backend)
                for name, (full, quick) in EXAMPLES.items()]
        for run in runs:
            run.result()  # an example's failure stops the build
    if not args.no_build:
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(ROOT / "site")], cwd=ROOT, check=True,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


if __name__ == "__main__":
    main()
