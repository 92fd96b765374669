"""The agreement contract in float32: the loss against the float64 NumPy formula, with
the looser tolerance float32 allows (1e-4, relative to max(abs(value), 1)). Runs in a subprocess, because the
rest of the suite runs JAX with float64 enabled."""

import json
import pathlib
import subprocess
import sys

import pytest

import klqp as kq

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import klqp as kq
from models import ALL, draw_noise, random_params
from reference import reference_terms
worst = {}
for name in sorted(ALL):
    model, data = ALL[name]()
    n = len(next(iter(data.values())))
    rng = np.random.default_rng(0)
    params, idx = random_params(model, n, rng), rng.choice(n, 40, replace=False)
    noise = draw_noise(model, 40, rng)
    c = kq.compile(model, data, backend="numpyro", batch_size=40, beta_global=0.7,
                   beta_local=1.3, likelihood_weight=0.9, scale_cost_to_minibatch=True)
    got = c.terms(params, indices=idx, noise=noise)
    ref = reference_terms(c.problem, params, idx, noise)
    worst[name] = max(abs(got[k] - ref[k]) / max(abs(ref[k]), 1.0) for k in ref)
import jax.numpy as jnp
assert jnp.zeros(1).dtype == jnp.float32
print(json.dumps(worst))
"""


@pytest.mark.skipif("numpyro" not in kq.backends.available(), reason="needs the numpyro backend")
def test_numpyro_float32_loss_matches_formula():
    env = {"JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(HERE)], capture_output=True,
                         text=True, env=env, check=True).stdout
    worst = json.loads(out.strip().splitlines()[-1])
    assert worst and all(rel < 1e-4 for rel in worst.values()), worst
