"""The agreement contract on a GPU JAX: NumPyro on jax's GPU platform and PyMC through
PyTensor's JAX mode, against the NumPy formula. Skipped where JAX has no GPU (CI);
scripts/gpu-agreement.sh runs it on a machine with an NVIDIA GPU."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import klqp as kq
from models import ALL, draw_noise, random_params
from reference import reference_terms

jax = pytest.importorskip("jax")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu",
                                 reason=f"JAX has no GPU here (platform: {jax.default_backend()})")]

OPTIONS = {"numpyro": {}, "pymc": {"mode": "jax"}}
BACKENDS = [b for b in OPTIONS if b in kq.backends.available()]
REPORT = os.environ.get("KLQP_GPU_REPORT")


def _record(backend, name, rel):
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"backend": backend, "model": name, "max_rel_diff": rel,
                                "platform": jax.default_backend(),
                                "device": str(jax.devices()[0])}) + "\n")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ALL))
def test_loss_on_gpu_equals_numpy_formula(backend, name):
    model, data = ALL[name]()
    n = len(next(iter(data.values())))
    rng = np.random.default_rng(0)
    params, idx = random_params(model, n, rng), rng.choice(n, 40, replace=False)
    noise = draw_noise(model, 40, rng)
    c = kq.compile(model, data, backend=backend, batch_size=40, beta_global=0.7, beta_local=1.3,
                   likelihood_weight=0.9, scale_cost_to_minibatch=True,
                   backend_options=OPTIONS[backend])
    got = c.terms(params, indices=idx, noise=noise)
    ref = reference_terms(c.problem, params, idx, noise)
    rel = max(abs(got[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ref)
    _record(backend, name, rel)
    if jax.config.jax_enable_x64:  # float64: the CPU contract (tests/test_agreement.py)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, atol=1e-9, err_msg=key)
    else:  # float32: relative to max(|value|, 1), as tests/test_float32.py, 10x looser
        worst = max(abs(got[k] - ref[k]) / max(abs(ref[k]), 1.0) for k in ref)
        assert worst < 1e-4, (name, worst)


def test_every_gpu_as_one_mesh_gives_the_one_gpu_parameters():
    """backend_options={"devices": all GPUs}: the sharded program on the GPUs (one GPU
    runs it as a mesh of one) ends where the plain one-device fit ends."""
    if "numpyro" not in BACKENDS:
        pytest.skip("needs the NumPyro backend")
    from models import hierarchical

    gpus = jax.devices()
    model, data = hierarchical(n=4 * 37 * len(gpus))
    kw = dict(backend="numpyro", batch_size=8 * len(gpus), steps=60, seed=2, progress=False)
    one = kq.fit(model, data, **kw)
    mesh = kq.fit(model, data, **kw, backend_options={"devices": gpus})
    rtol = 1e-6 if jax.config.jax_enable_x64 else 1e-3
    for name, p in one.params.items():
        for q, arr in p.items():
            np.testing.assert_allclose(mesh.params[name][q], arr, rtol=rtol, atol=rtol,
                                       err_msg=f"{name}.{q}")
