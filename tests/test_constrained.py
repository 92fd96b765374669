"""Latents on an interval (kq.Uniform) and ordered vectors (transform="ordered"): the
NumPy transforms against finite differences and Monte Carlo, fits on both backends, the
checks. Both backends' densities against the NumPy formula: test_agreement.py
(tests/models.py's more_families holds both)."""

import numpy as np
import pytest

import klqp as kq
from klqp import transforms

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
SUPPORTS = ["interval(-1.0, 3.0)", "ordered"]


@pytest.mark.parametrize("support", SUPPORTS)
def test_forward_inverse_and_jacobian_agree_with_finite_differences(support):
    u = np.random.default_rng(0).normal(size=(5, 4))
    x = transforms.forward(support, u)
    np.testing.assert_allclose(transforms.inverse(support, x), u, atol=1e-12)
    if support == "ordered":
        assert (np.diff(x, axis=-1) > 0).all()
    else:
        assert ((x > -1.0) & (x < 3.0)).all()
    h = 1e-6
    for row in range(len(u)):  # log |det J| from a central-difference Jacobian
        jac = np.stack([(transforms.forward(support, u[row] + h * e)
                         - transforms.forward(support, u[row] - h * e)) / (2 * h)
                        for e in np.eye(4)], axis=1)
        expected = np.linalg.slogdet(jac)[1]
        got = transforms.log_abs_det_jacobian(support, u[row]).sum()
        assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("support", SUPPORTS)
def test_moments_match_monte_carlo(support):
    loc, scale = np.array([-0.4, 0.3, -1.0]), np.array([0.5, 0.2, 0.8])
    mean, sd = transforms.moments(support, loc, scale)
    draws = transforms.forward(support, loc + scale * np.random.default_rng(1).normal(
        size=(400_000, 3)))
    np.testing.assert_allclose(mean, draws.mean(0), atol=5 * draws.std(0).max() / np.sqrt(4e5))
    np.testing.assert_allclose(sd, draws.std(0), rtol=1e-2)


def _ordinal(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    cut = np.array([-1.0, 0.3, 1.6])
    y = ((1.2 * x + rng.logistic(size=n))[:, None] > cut).sum(1)
    yc = 0.7 * x + 2.0 * rng.normal(size=n)
    with kq.Model("ordinal") as model:
        xd = kq.Data("x")
        b = kq.Global("b", kq.Normal(0.0, 5.0))
        c = kq.Global("c", kq.Normal(0.0, 5.0), shape=(3,), transform="ordered")
        kq.Observed("y", kq.OrderedLogistic(b * xd, c))
        w = kq.Global("w", kq.Normal(0.0, 5.0))
        s = kq.Global("s", kq.Uniform(0.0, 20.0))
        kq.Observed("yc", kq.Normal(w * xd, s))
    return model, {"x": x, "y": y, "yc": yc}


def test_ordered_cutpoints_and_a_uniform_scale_fit_the_same_on_both_backends():
    """Learned cutpoints with transform="ordered" and sigma ~ Uniform(0, 20): both
    backends give the same q (the same seed and noise; within 2 % of q's sd, measured
    1e-5 to 2e-4 absolute after 1,500 steps), near the data's truth
    (cutpoints -1.0, 0.3, 1.6; slope 1.2; sigma 2.0, with 400 rows)."""
    model, data = _ordinal()
    fits = {b: kq.fit(model, data, backend=b, batch_size=100, steps=1500, seed=0,
                      progress=False) for b in BACKENDS}
    first = fits[BACKENDS[0]]
    for other in fits.values():
        for name in ("b", "c", "w", "s"):
            np.testing.assert_allclose(other.mean(name), first.mean(name),
                                       atol=0.02 * np.min(first.std(name)))
    c, c_sd = first.mean("c"), first.std("c")
    assert (np.diff(first.sample("c", 200), axis=-1) > 0).all()
    assert (np.abs(c - [-1.0, 0.3, 1.6]) < 3.5 * c_sd).all(), (c, c_sd)
    assert abs(first.mean("s") - 2.0) < 0.25 and 0.0 < first.sample("s", 200).min()
    assert abs(first.mean("b") - 1.2) < 0.3


def test_the_ordered_transform_and_uniform_are_checked_and_saved():
    model, _ = _ordinal()
    again = kq.Model.from_json(model.to_json())
    assert again.to_json() == model.to_json()
    assert again["c"].transform == "ordered" and again["s"].support == "interval(0.0, 20.0)"
    assert "transform=ordered" in repr(model)
    with kq.Model("m"):
        with pytest.raises(kq.ModelError, match="needs a prior on the whole real line"):
            kq.Global("a", kq.HalfNormal(1.0), shape=(3,), transform="ordered")
        with pytest.raises(kq.ModelError, match=r"give shape=\(K,\) with K >= 2"):
            kq.Global("b", kq.Normal(0.0, 1.0), transform="ordered")
        with pytest.raises(kq.ModelError, match="the one transform a latent may ask for"):
            kq.Global("c", kq.Normal(0.0, 1.0), shape=(2,), transform="log")
        w = kq.Global("w", kq.Normal(0.0, 1.0))
        with pytest.raises(kq.ModelError, match="kq.Uniform: upper=w reads variables"):
            kq.Uniform(0.0, w)
    with pytest.raises(kq.ModelError, match="lower=2.0 must be < upper=1.0"):
        kq.Uniform(2.0, 1.0)
    with kq.Model("m") as m:
        kq.Global("w", kq.Normal(0.0, 1.0))
        kq.Observed("u", kq.Uniform(-1.0, 1.0))
    with pytest.raises(ValueError, match=r"column 'u' has values in \[-1, 1.5\], outside the support"):
        kq.compile(m, {"u": np.array([-1.0, 0.2, 1.5])})


def test_an_mvnormal_factor_is_checked_when_written():
    with pytest.raises(kq.ModelError, match="not lower-triangular.*not the covariance itself"):
        kq.MvNormal(np.zeros(2), [[1.0, 0.5], [0.5, 1.0]])
    with pytest.raises(kq.ModelError, match="diagonal entry -1.0 <= 0"):
        kq.MvNormal(np.zeros(2), [[1.0, 0.0], [0.5, -1.0]])
    with pytest.raises(kq.ModelError, match=r"has shape \(3,\); give the \(K, K\)"):
        kq.MvNormal(np.zeros(3), np.ones(3))
    with pytest.raises(kq.ModelError, match="Observed 'y'.*do not broadcast|inconsistent"):
        with kq.Model("m"):
            mu = kq.Global("mu", kq.Normal(0.0, 1.0), shape=(3,))
            kq.Observed("y", kq.MvNormal(mu, np.eye(2)))
    with pytest.raises(kq.ModelError, match="components of MvNormal are not supported"):
        kq.Mixture([0.5, 0.5], [kq.MvNormal(np.zeros(2), np.eye(2))] * 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_mvnormal_mean_reaches_its_exact_mean_field_optimum(backend):
    """y_i ~ MvNormal(m, S) with S known, m ~ MvNormal(0, 3 I): the posterior of m is
    Gaussian with precision P = I/3 + N S^-1, so the mean-field optimum has the exact
    posterior mean and sds 1 / sqrt(diag P). q is within 0.1 of those sds of it."""
    rng = np.random.default_rng(4)
    cov = np.array([[1.0, 0.6, 0.2], [0.6, 1.5, -0.3], [0.2, -0.3, 0.8]])
    chol = np.linalg.cholesky(cov)
    y = np.array([0.5, -1.0, 2.0]) + rng.normal(size=(200, 3)) @ chol.T
    with kq.Model("mv") as model:
        m = kq.Global("m", kq.MvNormal(np.zeros(3), np.sqrt(3.0) * np.eye(3)))
        kq.Observed("y", kq.MvNormal(m, chol))
    precision = np.eye(3) / 3.0 + len(y) * np.linalg.inv(cov)
    mean = np.linalg.solve(precision, len(y) * np.linalg.solve(cov, y.mean(0)))
    sd = 1.0 / np.sqrt(np.diag(precision))
    r = kq.fit(model, {"y": y}, backend=backend, batch_size=50, steps=1500, seed=0,
               progress=False)
    assert np.all(np.abs(r.mean("m") - mean) < 0.1 * sd), (r.mean("m"), mean, sd)
    np.testing.assert_allclose(r.std("m"), sd, rtol=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dirichlet_weights_reach_the_conjugate_posterior_mean(backend):
    """p ~ Dirichlet(alpha), y_i ~ Categorical(p): the posterior is Dirichlet(alpha + n).
    q's mean of p is within 0.15 posterior sds of the exact mean (measured: 0.01 or
    less); its sds are mean-field's in the log-ratio coordinates (measured 0.84 to 1.11
    of the exact ones), held within 20 %; the auxiliary number's q is its prior N(0, 1)."""
    rng = np.random.default_rng(5)
    labels = rng.choice(3, 300, p=[0.6, 0.1, 0.3])
    alpha = np.array([1.0, 2.0, 1.5])
    with kq.Model("dirichlet") as model:
        p = kq.Global("p", kq.Dirichlet(alpha))
        kq.Observed("y", kq.Categorical(logits=kq.log(p)))
    post = alpha + np.bincount(labels, minlength=3)
    mean = post / post.sum()
    sd = np.sqrt(mean * (1 - mean) / (post.sum() + 1))
    r = kq.fit(model, {"y": labels}, backend=backend, batch_size=100, steps=2000, seed=0,
               progress=False)
    assert "Dirichlet globals p" in str(kq.explain(model, total_size=300))
    draws = r.sample("p", 4000)
    np.testing.assert_allclose(draws.sum(-1), 1.0, atol=1e-12)
    assert np.all(np.abs(r.mean("p") - mean) < 0.15 * sd), (r.mean("p"), mean, sd)
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.2)
    np.testing.assert_allclose(r.mean("p"), draws.mean(0), atol=0.1 * sd.min())
    q = r.q("p")
    assert abs(q["loc"][-1]) < 0.1 and abs(q["scale"][-1] - 1.0) < 0.1, q


def test_a_dirichlet_is_checked_where_it_is_declared_and_its_data_on_the_simplex():
    with pytest.raises(kq.ModelError, match="K >= 2 concentrations"):
        kq.Dirichlet([1.0])
    with pytest.raises(kq.ModelError, match=r"alpha=.* must be > 0"):
        kq.Dirichlet([1.0, -1.0])
    with kq.Model("m"):
        with pytest.raises(kq.ModelError, match="Local 'z': kq.Dirichlet is for a Global"):
            kq.Local("z", kq.Dirichlet([1.0, 1.0]))
    with kq.Model("m") as m:
        a = kq.Global("a", kq.HalfNormal(1.0))
        kq.Observed("comp", kq.Dirichlet(a + np.ones(3)))
    with pytest.raises(ValueError, match="column 'comp' .*summing to 1 on the last axis"):
        kq.compile(m, {"comp": np.array([[0.2, 0.3, 0.5], [0.2, 0.2, 0.2]])})
