"""Each schedule against its formula, in NumPy and traced in JAX."""

import math

import numpy as np
import pytest

import klqp as kq
from klqp import schedules


def test_constant():
    assert float(schedules.constant(0.3)(17)) == 0.3


def test_linear_warmup_formula():
    s = schedules.linear_warmup(steps=200, start=0.1, end=0.9)
    for t in (0, 1, 50, 199, 200, 5000):
        expected = 0.1 + 0.8 * min(t / 200, 1.0)
        assert float(s(t)) == pytest.approx(expected, rel=1e-12)


def test_sigmoid_formula():
    s = schedules.sigmoid(midpoint=500, rate=0.02)
    for t in (0, 250, 500, 1000):
        assert float(s(t)) == pytest.approx(1 / (1 + math.exp(-0.02 * (t - 500))), rel=1e-12)


def test_cyclical_formula_fu_et_al():
    s = schedules.cyclical(total_steps=1000, cycles=4, ratio=0.5)
    # period 250: rises over 125 steps, flat at 1 for the next 125
    assert [float(s(t)) for t in (0, 62.5, 125, 200, 250, 312.5)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5])


@pytest.mark.parametrize("m", [1, 2, 5, 40, 2000])
def test_blundell_weights_sum_to_one_over_an_epoch(m):
    s = schedules.blundell().bind(num_batches=m)
    pis = np.array([float(s(t)) for t in range(m)])
    assert pis.sum() == pytest.approx(1.0, rel=1e-12)
    if m <= 40:  # the closed form 2^(M-i) / (2^M - 1), i = 1..M
        expected = [2.0 ** (m - i) / (2.0 ** m - 1) for i in range(1, m + 1)]
        np.testing.assert_allclose(pis, expected, rtol=1e-12)
    # the next epoch starts over
    assert float(s(m)) == pytest.approx(float(s(0)))


def test_blundell_unbound_refuses():
    with pytest.raises(ValueError, match="num_batches"):
        schedules.blundell()(0)


def test_beta_norm_round_trip():
    assert schedules.beta_norm(4.0, latent_dim=10, input_dim=784) == pytest.approx(4 * 10 / 784)
    assert schedules.beta_from_norm(schedules.beta_norm(4.0, 10, 784), 10, 784) == pytest.approx(4.0)


def test_schedules_trace_in_jax():
    jnp = pytest.importorskip("jax.numpy")
    import jax
    scheds = [schedules.linear_warmup(100), schedules.sigmoid(50, 0.1),
              schedules.cyclical(400, 4, 0.5), schedules.blundell(7), schedules.constant(2.0)]
    for s in scheds:
        traced = jax.jit(lambda t: s(t, xp=jnp))
        for t in (0, 3, 77, 399):
            assert float(traced(t)) == pytest.approx(float(s(t)), rel=1e-6)


def test_explain_coefficients_follow_design():
    with kq.Model("m") as m:
        mu = kq.Global("mu", kq.Normal(0, 1))
        z = kq.Local("z", kq.Normal(mu, 1))
        kq.Observed("y", kq.Normal(z, 1))
    n, b = 10_000, 250
    for scale in (True, False):
        e = kq.explain(m, total_size=n, batch_size=b, beta_global=0.3, beta_local=2.0,
                       likelihood_weight=0.5, scale_cost_to_minibatch=scale)
        s = b / n if scale else 1.0
        assert e.coefficients == pytest.approx({"loglik": s * 0.5 * n / b, "kl_global": s * 0.3,
                                                "kl_local": s * 2.0 * n / b,
                                                "potential_rows": s * n / b,  # weight 1
                                                "potential_global": s})
        assert f"s = {'b/N' if scale else '1'}" in str(e)
    warm = kq.explain(m, total_size=n, batch_size=b, beta=schedules.linear_warmup(100), step=50)
    assert warm.coefficients["kl_global"] == pytest.approx(0.5)
