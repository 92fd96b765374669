"""A local table in host memory (``backend_options={"local_table": "host"}``) against
the table on the device, at N = 10,000,000 rows (a benchmark, not a unit test).

    .venv/bin/python bench/host_table.py                      # N = 10M, both placements
    .venv/bin/python bench/host_table.py --rows 200000        # a quick smoke run

The flagship model of examples/hierarchical.py (a local z per row, theta and sigma
global), its data in memory (x, y: 16 bytes a row), fitted on the NumPyro backend in
float64 for ``--steps`` steps of ``--batch-size`` rows, each placement in its own process
(so one's peak memory is not the other's). Reports rows/s (the whole fit, compiles and
the final pass over all N rows included; and the steps alone, from the time of a second,
shorter fit of ``--chunk-size`` steps subtracted), the peak RSS, and how far
the two fits' q are apart (they take the same steps, so they should agree to rounding).
On this CPU machine "device" memory is host memory too: the figure to read is the cost
of moving each chunk's rows, which on a GPU is what makes a table larger than the
device possible at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np
sys.path.insert(0, {examples!r})
import klqp as kq
from hierarchical import build_model, make_data

mode, n, steps, b, out = {mode!r}, {rows}, {steps}, {batch}, {out!r}
data, _ = make_data(n, 0)
model = build_model()
options = {{"local_table": "host", "table_dir": {table_dir!r}}} if mode == "host" else None
def fit(steps):
    start = time.perf_counter()
    result = kq.fit(model, data, backend="numpyro", batch_size=b, steps=steps, seed=0,
                    progress=False, chunk_size={chunk}, backend_options=options)
    return result, time.perf_counter() - start
# the steps alone: a short and a long fit, the same compile and final pass in each
fit({chunk})  # warm-up: what JAX caches within a process, both fits below find
short, short_seconds = fit({chunk})
result, seconds = fit(steps)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
np.save(out + ".z.npy", result.params["z"]["loc"][:: max(1, n // 100000)])
json.dump({{"mode": mode, "rows": n, "steps": steps, "seconds": seconds,
           "steady_rows_per_s": (steps - {chunk}) * b / (seconds - short_seconds),
           "peak_rss_mb": rss,
           "theta": [float(result.mean("theta")), float(result.std("theta"))]}},
          open(out, "w"))
"""


def run(mode: str, args, folder: str) -> dict:
    out = f"{folder}/{mode}.json"
    code = CHILD.format(examples=str(REPO / "examples"), mode=mode, rows=args.rows,
                        steps=args.steps, batch=args.batch_size, out=out, table_dir=folder,
                        chunk=args.chunk_size)
    subprocess.run([sys.executable, "-c", code], check=True)
    with open(out) as fh:
        return json.load(fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import numpy as np

    print(f"date {time.strftime('%Y-%m-%d')}; N = {args.rows:,}, {args.steps} steps of "
          f"{args.batch_size}, chunks of {args.chunk_size} steps; NumPyro, float64, CPU")
    with tempfile.TemporaryDirectory(prefix="klqp-host-table-") as folder:
        figures = {mode: run(mode, args, folder) for mode in ("device", "host")}
        z = {mode: np.load(f"{folder}/{mode}.json.z.npy") for mode in figures}
    table_mb = args.rows * 16 / 2**20
    print(f"\nthe local table (z's loc and raw scale, float64): {table_mb:,.0f} MB; "
          f"data (x, y): {args.rows * 16 / 2**20:,.0f} MB")
    print(f"{'table on':<10} {'rows/s (whole fit)':>19} {'rows/s (steps)':>15} "
          f"{'peak RSS MB':>12} {'theta':>18}")
    for mode, f in figures.items():
        whole = f["steps"] * args.batch_size / f["seconds"]
        print(f"{mode:<10} {whole:19,.0f} {f['steady_rows_per_s']:15,.0f} "
              f"{f['peak_rss_mb']:12,.0f} {f['theta'][0]:10.5f} +- {f['theta'][1]:.5f}")
    ratio = figures["host"]["steady_rows_per_s"] / figures["device"]["steady_rows_per_s"]
    gap = float(np.max(np.abs(z["host"] - z["device"])))
    print(f"host / device rows/s (steps): {ratio:.2f}; largest |z mean host - device| over "
          f"{len(z['host']):,} rows: {gap:.1e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"figures": figures, "ratio": ratio, "z_gap": gap}, fh, indent=1)


if __name__ == "__main__":
    main()
