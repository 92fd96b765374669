"""Fits run by tests/test_sharding.py in a fresh process: virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``) must be set before JAX starts.

    python sharding_worker.py devices OUT.npz        # one process, 8 virtual devices
    python sharding_worker.py process PID PORT OUT   # one of two processes x 2 devices

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


def fit(devices, local_step="auto", steps=STEPS):
    model, data = mixed()
    options = None if devices is None else {"devices": devices}
    return kq.fit(model, data, batch_size=BATCH, steps=steps, seed=SEED, backend="numpyro",
                  local_step=local_step, backend_options=options, progress=False)


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
    from klqp_numpyro import sharding, train

    model, data = mixed()
    problem = make_problem(model, data, batch_size=BATCH)
    config = FitConfig(steps=10, learning_rate=kq.schedules.constant(1e-2), seed=SEED,
                       local_step=resolve_local_step(local_step, model),
                       global_step=resolve_global_step("auto"))
    trainer = train.Trainer(problem, config, sharding.placement(devices, N, BATCH))
    run = train._Run(problem, config, trainer)
    return collectives(trainer.compiled_chunk(run, jax.random.PRNGKey(SEED), 10).as_text())


def main(argv):
    if argv[0] == "devices":
        out = {}
        for name, devices in (("default", None), ("d1", 1), ("d2", 2), ("d8", 8)):
            out.update({f"{name}/{k}": v for k, v in fitted(fit(devices)).items()})
        for name, devices in (("rowadam_default", None), ("rowadam_d8", 8)):
            out.update({f"{name}/{k}": v for k, v in fitted(fit(devices, None)).items()})
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
        if pid == 0:
            np.savez(path, **fitted(result))
        jax.distributed.shutdown()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
