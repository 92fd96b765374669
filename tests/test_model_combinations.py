"""Every combination of the four kinds of unknown a model can have (a Global, a free
Local, an amortized Local, a Param), each present or absent, fits with kq.fit's defaults
on every backend: finite q, finite history, and an objective that improved. (A model
with free locals and Params but no Global once raised KeyError on the PyMC backend.)"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import klqp as kq

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
KINDS = ("global", "free_local", "amortized_local", "param")
# (a model with Params and no latent is refused: nothing to infer; tested below)
COMBINATIONS = [c for c in itertools.product([False, True], repeat=4) if any(c[:3])]


def build(present: dict, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 1.0 + 0.8 * x + 0.5 * rng.normal(size=n)
    with kq.Model("combination_" + "_".join(k for k in KINDS if present[k])) as model:
        xd = kq.Data("x", shape=())
        mean = 0.2 * xd
        if present["param"]:
            slope = kq.Param("slope", init=0.0)
            mean = mean + slope * xd
        if present["global"]:
            mean = mean + kq.Global("theta", kq.Normal(0.0, 2.0))
        if present["free_local"]:
            mean = mean + kq.Local("z", kq.Normal(0.0, 0.5))
        if present["amortized_local"]:
            if present["param"]:  # an encoder with weights of its own
                weight = kq.Param("enc_w", init=0.0)
                encoder = (weight * xd, kq.exp(0.0 * xd - 1.0))
            else:                 # a fixed encoder: no weights to learn
                encoder = (0.1 * xd, kq.exp(0.0 * xd - 1.0))
            mean = mean + kq.Local("u", kq.Normal(0.0, 0.5), encoder=encoder)
        kq.Observed("y", kq.Normal(mean, 0.7))
    return model, {"x": x, "y": y}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("combination", COMBINATIONS,
                         ids=["+".join(k for k, on in zip(KINDS, c) if on) for c in COMBINATIONS])
def test_every_combination_fits(backend, combination):
    present = dict(zip(KINDS, combination))
    model, data = build(present)
    result = kq.fit(model, data, backend=backend, steps=120, batch_size=20, seed=0,
                    progress=False)
    h = result.history
    assert len(h["loss"]) == 120 and np.all(np.isfinite(h["loss"]))
    assert result.info["skipped_steps"] == 0
    for v in model.latents:
        assert np.all(np.isfinite(result.mean(v.name))) and np.all(result.std(v.name) > 0), v.name
    for v in model.params:
        assert np.all(np.isfinite(result.params[v.name]["value"])), v.name
    if present["param"]:  # y = 1 + 0.8 x + noise: the fitted slope reaches the data's
        slope = 0.2 + float(result.params["slope"]["value"])
        if present["amortized_local"]:  # E_q[u] = enc_w * x also carries slope
            slope += float(result.params["enc_w"]["value"])
        assert abs(slope - 0.8) < 0.3, slope
    if present["global"]:
        assert abs(float(result.mean("theta")) - 1.0) < 0.45, result.mean("theta")
    if present["free_local"]:  # the local step moved every row's q from its init
        assert np.std(result.q("z")["loc"]) > 0.05
        assert np.all(result.q("z")["scale"] < 0.5)  # the prior's 0.5 narrowed by the data


def test_a_model_without_latents_is_refused_before_compiling():
    model, data = build(dict(zip(KINDS, (False, False, False, True))))
    for backend in BACKENDS:
        with pytest.raises(kq.ModelError, match="nothing to infer"):
            kq.fit(model, data, backend=backend, steps=5, batch_size=20, progress=False)
