"""Soak: a long fit's memory stays flat (a benchmark, not a unit test).

    .venv/bin/python bench/soak.py                          # 200,000 steps per fit (~6 min, 2 CPUs)
    .venv/bin/python bench/soak.py --steps 20000 --stream-steps 5000   # a short look

Fits examples/hierarchical.py's model (globals theta, sigma; a local z per row, so the
local step, the global step and the final pass all run) on N = 5,000 rows, b = 100, for
``--steps`` steps, in memory and streamed (a Python generator of batches with their
``row_index``), on each backend, and reads the process's resident memory (VmRSS) at ten
points of each fit from a callback. Each fit runs in its own process, so one fit's
memory is not another's.

What may grow: the history, 10 float64 figures per step (80 bytes a step: 16 MB for
200,000 steps), which the table prints beside the growth it measures. Anything beyond
that would be a leak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np
sys.path.insert(0, {bench!r})
import klqp as kq
from cases import _load_example

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0

example = _load_example("hierarchical")
n, b, steps, mode, backend = 5000, 100, {steps}, {mode!r}, {backend!r}
data, _ = example.make_data(n, 0)
marks, every = [], max(1, steps // 10)
start = time.perf_counter()

def watch(step, result):
    if step % every == 0 or step >= steps:
        marks.append((step, rss_mb(), time.perf_counter() - start))

class Every:  # due(): the fit builds a result only for the ten marks
    def due(self, step):
        return step % every == 0 or step >= steps
    def __call__(self, step, result):
        watch(step, result)

def batches():
    rng = np.random.default_rng(0)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - b + 1, b):
            rows = order[i:i + b]
            yield {{"x": data["x"][rows], "y": data["y"][rows], "row_index": rows}}

model = example.build_model()
if mode == "memory":
    r = kq.fit(model, data, backend=backend, steps=steps, batch_size=b, progress=False,
               chunk_size=max(1, every // 10), callbacks=[Every()])
else:
    r = kq.fit(model, batches(), total_size=n, backend=backend, steps=steps, progress=False,
               callbacks=[Every()])
print(json.dumps({{"marks": marks, "steps": r.steps, "seconds": time.perf_counter() - start,
                  "history_mb": sum(np.asarray(h).nbytes for h in r.history.values()) / 2**20,
                  "theta": float(r.mean("theta"))}}))
"""


def run(backend: str, mode: str, steps: int) -> dict:
    code = CHILD.format(bench=str(HERE), steps=steps, mode=mode, backend=backend)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CI": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{backend} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="steps of each in-memory fit")
    parser.add_argument("--stream-steps", type=int, default=200_000,
                        help="steps of each streamed fit")
    parser.add_argument("--backends", default="numpyro,pymc")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    print(f"date {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    results = {}
    for backend in args.backends.split(","):
        for mode, steps in (("memory", args.steps), ("stream", args.stream_steps)):
            r = run(backend, mode, steps)
            results[f"{backend}/{mode}"] = r
            marks = r["marks"]
            base = marks[1][1] if len(marks) > 1 else marks[0][1]  # after the first tenth
            end = marks[-1][1]
            print(f"\n{backend}, {mode}: {r['steps']:,} steps in {r['seconds']:.0f} s "
                  f"(theta {r['theta']:.3f})")
            print("  step      RSS MB   seconds")
            for step, rss, sec in marks:
                print(f"  {step:>8,} {rss:>8.1f} {sec:>8.1f}")
            growth = end - base
            print(f"  growth from step {marks[1][0] if len(marks) > 1 else 0:,} to the end: "
                  f"{growth:+.1f} MB ({100 * growth / base:+.1f} %); the history holds "
                  f"{r['history_mb']:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
