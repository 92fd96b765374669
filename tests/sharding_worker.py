"""Fits run by tests/test_sharding.py in a fresh process: virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``) must be set before JAX starts.

    python sharding_worker.py devices OUT.npz [PARQUET_DIR]        # one process, 8 devices
    python sharding_worker.py process PID PORT OUT [PARQUET_DIR]   # one of 2 processes x 2
    python sharding_worker.py write PARQUET_DIR                    # the streamed fits' files

Writes every fitted parameter (and the loss history) to an npz file; ``devices`` also
writes the collectives of the compiled chunk on 8 devices.
"""

from __future__ import annotations

import json
import re
import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import klqp as kq  # noqa: E402

N, BATCH, STEPS, SEED = 4003, 40, 40, 3


def mixed(n=N, seed=0):
    """Globals, a free local per row and an amortized local (an MLP encoder)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    z = 1.5 * x + 0.7 * rng.normal(size=n)
    y = z + 0.5 * rng.normal(size=n)
    f = x + 0.3 * rng.normal(size=n)
    with kq.Model("mixed") as model:
        xd = kq.Data("x", shape=())
        theta = kq.Global("theta", kq.Normal(0.0, 1.0), shape=())
        sigma = kq.Global("sigma", kq.HalfNormal(1.0))
        zl = kq.Local("z", kq.Normal(theta * xd, 0.7))
        kq.Observed("y", kq.Normal(zl, sigma))
        kq.Data("g", shape=(1,))
        enc = kq.nn.MLP("enc", [1, 4, 2], activation="tanh")
        u = kq.Local("u", kq.Normal(0.0, 1.0), shape=(1,), encoder=kq.nn.amortize(enc, "g"))
        kq.Observed("f", kq.Normal(kq.sum(u, -1), 0.5))
    return model, {"x": x, "y": y, "f": f, "g": f[:, None]}


def fitted(result) -> dict:
    out = {f"{name}.{q}": np.asarray(a) for name, p in result.params.items() for q, a in p.items()}
    out["history.loss"] = result.history["loss"]
    return out


def fit(devices, local_step="auto", steps=STEPS, **kw):
    model, data = mixed()
    options = None if devices is None else {"devices": devices}
    return kq.fit(model, data, batch_size=BATCH, steps=steps, seed=SEED, backend="numpyro",
                  local_step=local_step, backend_options=options, progress=False, **kw)


COLLECTIVE = re.compile(r"=\s*(\(?[^=]*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(-start)?\(")


def collectives(hlo: str) -> list:
    """[(op, [dims of every array the collective makes])] of an HLO text."""
    out = []
    for line in hlo.splitlines():
        m = COLLECTIVE.search(line)
        if m:
            dims = [[int(d) for d in shape.split(",") if d]
                    for shape in re.findall(r"[a-z]+[0-9]*\[([0-9,]*)\]", m.group(1))]
            out.append((m.group(2), dims))
    return out


def chunk_collectives(devices: int, local_step="auto") -> list:
    from klqp.problem import FitConfig, make_problem
    from klqp.steps import resolve_global_step, resolve_local_step
    from klqp_numpyro import program, sharding, train

    model, data = mixed()
    problem = make_problem(model, data, batch_size=BATCH)
    config = FitConfig(steps=10, learning_rate=kq.schedules.constant(1e-2), seed=SEED,
                       local_step=resolve_local_step(local_step, model),
                       global_step=resolve_global_step("auto"))
    trainer = train.Trainer(problem, config, sharding.placement(devices, N, BATCH))
    run = program.Program(problem, config, trainer)
    return collectives(trainer.compiled_chunk(run, jax.random.PRNGKey(SEED), 10).as_text())


def write_parquet(folder, n=800, files=2, group_rows=50):
    """The mixed model's rows, shuffled once, as Parquet files with a row id column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, data = mixed(n=n)
    order = np.random.default_rng(7).permutation(n)
    for i, part in enumerate(np.array_split(order, files)):
        cols = {"row_id": part, **{k: data[k][part] for k in ("x", "y", "f")},
                "g": pa.FixedSizeListArray.from_arrays(data["g"][part, 0], 1)}
        pq.write_table(pa.table(cols), f"{folder}/part-{i}.parquet", row_group_size=group_rows)


def fit_stream(stream, devices=None, steps=STEPS, batch_size=BATCH):
    model, _ = mixed(n=800)
    options = None if devices is None else {"devices": devices}
    return kq.fit(model, stream, total_size=800, batch_size=batch_size, steps=steps, seed=SEED,
                  backend="numpyro", backend_options=options, progress=False)


def two_process_batches(folder, steps=STEPS):
    """What two processes (process=(0, 2), (1, 2)) stream together at each step: the
    global batch is process 0's rows, then process 1's."""
    parts = [kq.data.parquet(folder, batch_size=BATCH // 2, process=(p, 2)).batches_from(0)
             for p in (0, 1)]
    out = []
    for _ in range(steps):
        a, b = next(parts[0]), next(parts[1])
        out.append({k: np.concatenate([a[k], b[k]]) for k in a})
    return out


def main(argv):
    if argv[0] == "devices":
        out = {}
        # devices=1 against the default: test_one_device_option_equals_the_default
        for name, devices in (("default", None), ("d2", 2), ("d8", 8)):
            out.update({f"{name}/{k}": v for k, v in fitted(fit(devices)).items()})
        # a checkpoint written on 2 devices, resumed on 8 (it holds N-row tables)
        path = argv[1] + ".klqp"
        fit(2, steps=STEPS // 2, checkpoint=path, checkpoint_every=10)
        resumed = fit(8, checkpoint=path, checkpoint_every=10, resume=path)
        out.update({f"resumed_d2_d8/{k}": v for k, v in fitted(resumed).items()})
        for name, devices in (("rowadam_default", None), ("rowadam_d8", 8)):
            out.update({f"{name}/{k}": v for k, v in fitted(fit(devices, None)).items()})
        if len(argv) > 2:  # streamed: a list of batches, and the two processes' Parquet rows
            batches = two_process_batches(argv[2])
            for name, devices in (("stream_default", None), ("stream_d2", 2)):
                out.update({f"{name}/{k}": v for k, v in fitted(fit_stream(batches, devices)).items()})
        np.savez(argv[1], **out)
        report = {"auto": chunk_collectives(8), "rowadam": chunk_collectives(8, None),
                  "rows_per_device": -(-N // 8), "devices": len(jax.devices())}
        with open(argv[1] + ".json", "w") as fh:
            json.dump(report, fh)
    elif argv[0] == "process":
        pid, port, path = int(argv[1]), int(argv[2]), argv[3]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
        assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
        result = fit(jax.devices())
        out = fitted(result)
        if len(argv) > 4:  # each process streams its own row groups of the Parquet files
            stream = kq.data.parquet(argv[4], batch_size=BATCH // 2)
            assert stream.process == (pid, 2)
            out.update({f"stream/{k}": v for k, v in
                        fitted(fit_stream(stream, jax.devices(), batch_size=None)).items()})
        if pid == 0:
            np.savez(path, **out)
        jax.distributed.shutdown()
    elif argv[0] == "write":
        write_parquet(argv[1])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
