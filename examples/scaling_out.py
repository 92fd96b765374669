"""Scaling out: the flagship model fitted on several devices, streamed from Parquet
files, and with its N-row local table in host memory; each answer checked against the
one-device, in-memory fit of the same rows.

    python examples/scaling_out.py                  # 4 virtual CPU devices, 100,000 rows
    python examples/scaling_out.py --devices 1      # one device only

1. Several devices: ``backend_options={"devices": k}`` runs each compiled chunk as one
   SPMD program over k devices, the data and the local table z row-sharded, theta and
   sigma replicated. The minibatches do not depend on k, so the parameters equal the
   one-device fit's (to rounding). On a CPU without accelerators this script makes k
   virtual devices (XLA_FLAGS, set before JAX starts): they share the cores, so their
   speed says nothing; on GPUs, give the real ones.
2. Data larger than memory: the rows are written once, shuffled, as Parquet files, and
   ``kq.data.parquet`` streams them a window of row groups at a time; z is indexed by the
   stable ``row_id`` column.
3. A local table larger than the device: ``backend_options={"local_table": "host"}``
   keeps z's table in memmap files and moves each chunk's rows.
"""

from __future__ import annotations

import os
import sys

def _virtual_devices(argv) -> None:
    """k virtual CPU devices, before JAX starts (a no-op when XLA_FLAGS is set)."""
    k = 4
    if "--devices" in argv:
        k = int(argv[argv.index("--devices") + 1])
    if k > 1 and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={k}"


_virtual_devices(sys.argv)

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import klqp as kq  # noqa: E402
from klqp.cli import example_parser  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hierarchical import build_model, make_data, mean_field_optimum  # noqa: E402


def write_parquet(data: dict, folder: Path, files: int = 4, row_group_rows: int = 8192) -> None:
    """The rows, shuffled once, as Parquet files with a stable integer row id: a shuffle
    window mixes only rows that are near on disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.random.default_rng(0).permutation(len(data["x"]))
    for i, part in enumerate(np.array_split(order, files)):
        table = pa.table({"row_id": part, "x": data["x"][part], "y": data["y"][part]})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=row_group_rows)


def report(name: str, result, reference, seconds=None) -> None:
    """theta's q, and how far every q (theta, sigma, all N rows of z) is from the
    one-device fit's: the largest |mean - mean'| / sd' and |sd / sd' - 1|."""
    gap = max(float(np.max(np.abs(result.params[v]["loc"] - reference.params[v]["loc"])
                           / reference.params[v]["scale"])) for v in ("theta", "sigma", "z"))
    ratio = max(float(np.max(np.abs(result.params[v]["scale"] / reference.params[v]["scale"]
                                    - 1))) for v in ("theta", "sigma", "z"))
    print(f"{name:<28} theta {float(result.mean('theta')):.4f} +- "
          f"{float(result.std('theta')):.5f}   vs one device: means {gap:.1e} sd apart, "
          f"sds {ratio:.1e} apart" + ("" if seconds is None else f"   ({seconds:.1f} s)"))


def main(argv=None):
    parser = example_parser(__doc__, steps=750, batch_size=2000, rows=100_000, noise=1.0)
    parser.add_argument("--devices", type=int, default=4, help="devices of the sharded fit")
    parser.add_argument("--float32", action="store_true",
                        help="JAX's default precision (the comparisons then show float32 "
                             "rounding, ~1e-3 sd after 150 steps); default float64")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", not args.float32)

    data, _ = make_data(args.rows, args.seed, sigma=args.noise)
    model = build_model()
    settings = dict(batch_size=args.batch_size, steps=args.steps, seed=args.seed,
                    scale_cost_to_minibatch=True, progress=False)
    print(f"{args.rows:,} rows, {args.steps} steps of {args.batch_size}; JAX devices: "
          f"{len(jax.devices())} x {jax.devices()[0].platform}")

    start = time.perf_counter()
    one = kq.fit(model, data, backend="numpyro", **settings)
    report("one device, in memory", one, one, time.perf_counter() - start)

    if args.backend == "numpyro" and args.devices > 1:
        sharded = kq.fit(model, data, backend="numpyro", **settings,
                         backend_options={"devices": args.devices})
        virtual = jax.devices()[0].platform == "cpu"  # they share the cores: not timed
        report(f"{args.devices} devices, in memory", sharded, one)
        if virtual:
            print("  (virtual CPU devices share the cores: their speed says nothing, so it "
                  "is not shown)")

    with tempfile.TemporaryDirectory() as folder:
        write_parquet(data, Path(folder))
        stream = kq.data.parquet(folder, batch_size=args.batch_size, row_index="row_id",
                                 buffer_rows=32_768)
        start = time.perf_counter()
        streamed = kq.fit(model, stream, backend=args.backend, **{
            k: v for k, v in settings.items() if k != "batch_size"})
        seconds = time.perf_counter() - start
    opt = mean_field_optimum(data)
    mean, sd = opt["theta"]
    print(f"{'Parquet stream (' + args.backend + ')':<28} theta {float(streamed.mean('theta')):.4f}"
          f" +- {float(streamed.std('theta')):.5f}   optimum {mean:.4f} +- {sd:.5f}: "
          f"{abs(float(streamed.mean('theta')) - mean) / sd:.2f} sd* apart   ({seconds:.1f} s)")
    print("  (other batches than in memory: the same optimum, not the same numbers)")

    if args.backend == "numpyro":
        start = time.perf_counter()
        on_host = kq.fit(model, data, backend="numpyro", **settings,
                         backend_options={"local_table": "host"})
        report("local table in host memory", on_host, one, time.perf_counter() - start)
    print(f"\nexact mean-field optimum: theta {mean:.4f} +- {sd:.5f}")


if __name__ == "__main__":
    main()
