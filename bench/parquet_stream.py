"""Out-of-core fits: kq.data.parquet streams Parquet row groups; memory stays bounded by
a few windows of rows, not the data set (a benchmark, not a unit test).

    .venv/bin/python bench/parquet_stream.py                  # 5,000,000 rows streamed
    .venv/bin/python bench/parquet_stream.py --rows 200000    # a quick smoke run

Writes examples/hierarchical.py's data (x, y and the row id that indexes the local z) as
``--files`` Parquet files of ``--row-group-rows`` row groups into a temporary folder
(removed at the end unless ``--keep``), then, each fit in its own process so that one
fit's peak memory (ru_maxrss) is not another's, on the NumPyro backend:

1. streams ``--rows`` rows with kq.data.parquet for ``--steps`` steps;
2. at ``--small-rows`` rows, streams the same way and fits an in-memory dict of the same
   rows, ``--small-steps`` steps each, and compares rows/s and the fitted global q
   (theta; log sigma, in q's unconstrained space) with the exact mean-field optimum.

What scales with N in a streamed fit: q's local table (z's loc and scale: 16 bytes a row,
plus the step rule's state), which stays on the device; the data does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
sys.path.insert(0, {bench!r})
import klqp as kq
from cases import _load_example

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

mode, folder, steps, b, buffer_rows = {mode!r}, {folder!r}, {steps}, {batch}, {buffer_rows}
example = _load_example("hierarchical")
model = example.build_model()
if mode == "memory":
    import pyarrow.parquet as pq
    table = pq.read_table(folder)
    order = np.argsort(table.column("row_id").to_numpy())
    data = {{c: table.column(c).to_numpy()[order] for c in ("x", "y")}}
    del table
    n = len(order)
else:
    data = kq.data.parquet(folder, batch_size=b, columns=["x", "y"], buffer_rows=buffer_rows)
    n = data.total_size
marks, first = [], max(1, steps // 5)

class Clock:  # due(): the fit builds a result only at the two marks
    def due(self, step):
        return step in (first, steps)
    def __call__(self, step, result):
        marks.append((step, time.perf_counter()))

before = peak_mb()
start = time.perf_counter()
r = kq.fit(model, data, backend="numpyro", steps=steps, total_size=n, batch_size=b, beta=1.0,
           scale_cost_to_minibatch=True, progress=False, seed=0, callbacks=[Clock()],
           chunk_size=first if mode == "memory" else None)
seconds = time.perf_counter() - start
(s1, t1), (s2, t2) = marks[0], marks[-1]
q = r.params
print(json.dumps({{
    "mode": mode, "rows": n, "steps": r.steps, "seconds": seconds,
    "rows_per_s": r.steps * b / seconds, "steady_rows_per_s": (s2 - s1) * b / (t2 - t1),
    "peak_mb_before_fit": before, "peak_mb": peak_mb(),
    "q_table_mb": (q["z"]["loc"].nbytes + q["z"]["scale"].nbytes) / 2**20,
    "row_groups_read": getattr(data, "row_groups_read", None),
    "theta": [float(q["theta"]["loc"]), float(q["theta"]["scale"])],
    "log_sigma": [float(q["sigma"]["loc"]), float(q["sigma"]["scale"])]}}))
"""


def write_dataset(folder: Path, rows: int, files: int, row_group_rows: int, seed: int = 0):
    """examples/hierarchical.py's model's data, file by file (never all rows in memory):
    x ~ N(0, 1), z = 1.5 x + 0.7 e, y = z + e'; row_id = the row's number, which indexes
    the local z. Returns the bytes on disk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    for f in range(files):
        rng = np.random.default_rng([seed, f])
        n = int(bounds[f + 1] - bounds[f])
        x = rng.normal(size=n)
        y = 1.5 * x + 0.7 * rng.normal(size=n) + rng.normal(size=n)
        table = pa.table({"row_id": np.arange(bounds[f], bounds[f + 1]), "x": x, "y": y})
        pq.write_table(table, folder / f"part-{f:03d}.parquet", row_group_size=row_group_rows)
    return sum(p.stat().st_size for p in folder.iterdir())


def optimum(folder: Path) -> dict:
    """The exact mean-field optimum of the hierarchical objective on these rows."""
    import numpy as np
    import pyarrow.parquet as pq
    sys.path.insert(0, str(HERE))
    from cases import _load_example

    table = pq.read_table(folder)
    order = np.argsort(table.column("row_id").to_numpy())
    data = {c: table.column(c).to_numpy()[order] for c in ("x", "y")}
    return _load_example("hierarchical").mean_field_optimum(data)


def run(mode: str, folder: Path, steps: int, batch: int, buffer_rows: int) -> dict:
    code = CHILD.format(bench=str(HERE), mode=mode, folder=str(folder), steps=steps,
                        batch=batch, buffer_rows=buffer_rows)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CI": "1"}, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{mode} fit of {folder} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the streamed fit")
    parser.add_argument("--steps", type=int, default=2500, help="steps of the streamed fit")
    parser.add_argument("--small-rows", type=int, default=200_000,
                        help="rows of the streamed vs in-memory comparison")
    parser.add_argument("--small-steps", type=int, default=500,
                        help="steps of each comparison fit (500 = 5 epochs at 200,000 rows)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--row-group-rows", type=int, default=65_536)
    parser.add_argument("--buffer-rows", type=int, default=2**20,
                        help="rows per shuffle window (kq.data.parquet's buffer_rows)")
    parser.add_argument("--dir", help="where to write the data (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the data written")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="klqp-parquet-"))
    print(f"date {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPUs; data in {root}")
    try:
        disk, started = {}, time.perf_counter()
        big, small = root / f"rows-{args.rows}", root / f"rows-{args.small_rows}"
        disk["big"] = write_dataset(big, args.rows, args.files, args.row_group_rows)
        disk["small"] = (disk["big"] if small == big else
                         write_dataset(small, args.small_rows, args.files, args.row_group_rows))
        print(f"wrote {args.rows:,} + {args.small_rows:,} rows in "
              f"{time.perf_counter() - started:.1f} s")
        results = {
            "stream": run("stream", big, args.steps, args.batch_size, args.buffer_rows),
            "small stream": run("stream", small, args.small_steps, args.batch_size,
                                args.buffer_rows),
            "small memory": run("memory", small, args.small_steps, args.batch_size,
                                args.buffer_rows),
        }
        opt = optimum(small)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    in_memory_mb = {k: 24 * n / 2**20 for k, n in (("big", args.rows),
                                                  ("small", args.small_rows))}  # x, y, id
    window_mb = 24 * max(args.buffer_rows, args.row_group_rows) / 2**20
    print(f"\nb = {args.batch_size}; {args.files} files, row groups of {args.row_group_rows:,}"
          f" rows, shuffle windows of >= {args.buffer_rows:,} rows (~{window_mb:.0f} MB "
          "decoded); NumPyro backend")
    print(f"{'fit':<13} {'rows':>10} {'steps':>6} {'rows/s':>9} {'steady':>9} {'disk MB':>8} "
          f"{'data MB':>8} {'q(z) MB':>8} {'RSS pre':>8} {'peak RSS':>9}")
    for name, r in results.items():
        size = "small" if name.startswith("small") else "big"
        print(f"{name:<13} {r['rows']:>10,} {r['steps']:>6} {r['rows_per_s']:>9,.0f} "
              f"{r['steady_rows_per_s']:>9,.0f} {disk[size] / 2**20:>8.1f} "
              f"{in_memory_mb[size]:>8.1f} {r['q_table_mb']:>8.1f} "
              f"{r['peak_mb_before_fit']:>8.0f} {r['peak_mb']:>9.0f}")
    print("  rows/s: the whole fit (compiles included); steady: after the first fifth of the"
          " steps. data MB: x, y, row id as float64/int64 arrays; q(z) MB: the local table;"
          " RSS pre / peak RSS: the process's peak (MB) before the fit (JAX not yet loaded)"
          " and at its end; peak RSS of 'stream' less 'small stream' is what grows with N")

    print(f"\nglobal q at {args.small_rows:,} rows, {args.small_steps} steps (sd*: the optimum's"
          " sd)")
    print(f"{'':<10} {'stream mean':>11} {'memory mean':>11} {'optimum':>9} {'|s-m|/sd*':>9} "
          f"{'stream sd':>9} {'memory sd':>9} {'sd*':>8}")
    for name in ("theta", "log_sigma"):
        (ms, ss), (mm, sm) = results["small stream"][name], results["small memory"][name]
        mo, so = opt[name]
        print(f"{name:<10} {ms:>11.5f} {mm:>11.5f} {mo:>9.5f} {abs(ms - mm) / so:>9.2f} "
              f"{ss:>9.5f} {sm:>9.5f} {so:>8.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "disk_bytes": disk,
                                               "results": results, "optimum": {
                                                   k: list(map(float, opt[k]))
                                                   for k in ("theta", "log_sigma")}}, indent=1))
    return results


if __name__ == "__main__":
    main()
