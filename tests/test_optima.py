"""Fitted q against optima known in closed form, on every installed backend.

1. Conjugate normal mean: the optimum of the weighted objective is the posterior with
   its likelihood raised to T/beta; q is Gaussian, so it is exact.
2. A global + local model whose mean-field optimum is the fixed point derived below.
"""

from __future__ import annotations

import numpy as np
import pytest

import klqp as kq
from klqp import schedules

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
STEPS = 4000
DECAY = schedules.linear(0.02, 1e-4, STEPS)  # small final steps: q settles at the optimum


@pytest.fixture(scope="module")
def conjugate():
    rng = np.random.default_rng(0)
    n, prior_sd, noise_sd = 1000, 2.0, 1.5
    y = 0.7 + noise_sd * rng.normal(size=n)
    with kq.Model("conjugate") as model:
        mu = kq.Global("mu", kq.Normal(0.0, prior_sd))
        kq.Observed("y", kq.Normal(mu, noise_sd))
    return model, y, prior_sd, noise_sd


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta, T, scaled", [(1.0, 1.0, True), (4.0, 1.0, False),
                                             (1.0, 0.25, True), (0.5, 2.0, False)])
def test_conjugate_optimum_is_tempered_posterior(conjugate, backend, beta, T, scaled):
    model, y, prior_sd, noise_sd = conjugate
    power = T / beta
    precision = 1 / prior_sd**2 + power * len(y) / noise_sd**2
    mean, sd = power * y.sum() / noise_sd**2 / precision, precision**-0.5
    r = kq.fit(model, {"y": y}, backend=backend, steps=STEPS, batch_size=100, beta=beta,
               likelihood_weight=T, scale_cost_to_minibatch=scaled, learning_rate=DECAY, seed=1)
    assert abs(r.mean("mu") - mean) < 0.15 * sd
    assert r.std("mu") == pytest.approx(sd, rel=0.1)


def mean_field_optimum(y, *, prior_sd, local_sd, noise_sd, beta_global, beta_local, T):
    """Optimum of q(theta) q(z_1..N), all Gaussian, for theta ~ N(0, prior_sd),
    z_i ~ N(theta, local_sd), y_i ~ N(z_i, noise_sd) under klqp's weighted objective.

    Setting the derivatives of E_q[loss] to zero:
      v_i = beta_l / (T/s^2 + beta_l/t^2),  m_i = (T y_i/s^2 + beta_l mu/t^2) / (T/s^2 + beta_l/t^2)
      V   = beta_g / (beta_g/p^2 + beta_l N/t^2),  mu = beta_l sum_i m_i / t^2 / (beta_g/p^2 + beta_l N/t^2)
    (s: noise_sd, t: local_sd, p: prior_sd); mu and the m_i solve a linear fixed point.
    """
    n = len(y)
    a = T / noise_sd**2 + beta_local / local_sd**2
    denom = beta_global / prior_sd**2 + beta_local * n / local_sd**2
    # substitute m_i into mu's equation and solve for mu
    c = beta_local / local_sd**2
    mu = c * np.sum(T * y / noise_sd**2 / a) / (denom - c * n * c / a)
    m = (T * y / noise_sd**2 + c * mu) / a
    return mu, np.sqrt(beta_global / denom), m, np.sqrt(beta_local / a)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta_global, beta_local, T", [(1.0, 1.0, 1.0), (1.0, 4.0, 1.0),
                                                        (2.0, 0.5, 1.5)])
def test_local_latents_reach_mean_field_optimum(backend, beta_global, beta_local, T):
    rng = np.random.default_rng(3)
    n, prior_sd, local_sd, noise_sd = 200, 1.0, 0.8, 0.5
    z = 0.6 + local_sd * rng.normal(size=n)
    y = z + noise_sd * rng.normal(size=n)
    with kq.Model("local") as model:
        theta = kq.Global("theta", kq.Normal(0.0, prior_sd))
        zl = kq.Local("z", kq.Normal(theta, local_sd))
        kq.Observed("y", kq.Normal(zl, noise_sd))
    mu, sd, m, v_sd = mean_field_optimum(y, prior_sd=prior_sd, local_sd=local_sd,
                                         noise_sd=noise_sd, beta_global=beta_global,
                                         beta_local=beta_local, T=T)
    r = kq.fit(model, {"y": y}, backend=backend, steps=STEPS, batch_size=50,
               beta_global=beta_global, beta_local=beta_local, likelihood_weight=T,
               scale_cost_to_minibatch=True, learning_rate=DECAY, seed=2)
    assert abs(r.mean("theta") - mu) < 0.35 * sd
    assert r.std("theta") == pytest.approx(sd, rel=0.15)
    assert np.max(np.abs(r.mean("z") - m)) < 0.25 * v_sd  # the worst of 200 rows
    np.testing.assert_allclose(r.std("z"), v_sd, rtol=0.15)
