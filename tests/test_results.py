"""Results: q's moments in each variable's own space, and the ArviZ export."""

import numpy as np
import pytest

import klqp as kq
from klqp import transforms
from models import vector_locals

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


@pytest.mark.parametrize("support", ["real", "positive", "unit_interval"])
def test_moments_match_monte_carlo(support):
    loc, scale = np.array([-1.0, 0.3, 2.0]), np.array([0.2, 0.7, 1.1])
    mean, sd = transforms.moments(support, loc, scale)
    draws = transforms.forward(support, loc + scale * np.random.default_rng(0).standard_normal((400_000, 3)))
    np.testing.assert_allclose(mean, draws.mean(0), rtol=5e-3)
    np.testing.assert_allclose(sd, draws.std(0), rtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_data_has_the_models_names_dims_and_shapes(backend):
    model, data = vector_locals(n=40)
    r = kq.fit(model, data, backend=backend, steps=5, batch_size=10)
    tree = r.to_inference_data(num_samples=50)
    post = tree["posterior"]
    assert post["u"].dims == ("chain", "draw", "row", "u_dim_0")
    assert post["u"].shape == (1, 50, 40, 2)
    assert post["w"].shape == (1, 50, 2, 3) and post["scale"].shape == (1, 50)
    assert float(post["scale"].min()) > 0 and 0 < float(post["frac"].min()) < float(post["frac"].max()) < 1
    np.testing.assert_array_equal(tree["observed_data"]["cls"].values, data["cls"])
    np.testing.assert_allclose(post["w"].mean(("chain", "draw")).values, r.mean("w"), atol=0.5)
