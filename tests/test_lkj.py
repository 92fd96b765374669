"""kq.LKJCholesky: the map from q's (K, K) numbers onto a correlation's Cholesky factor,
its prior in those numbers against NumPyro's LKJCholesky and finite differences, the
NumPy density and sampler, fits on both backends, and the checks. Both backends' losses
against tests/reference.py's formula: test_agreement.py (more_families holds one)."""

import numpy as np
import pytest

import klqp as kq
from klqp import densities, transforms
from reference import corr_cholesky, logpdf as reference_logpdf

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


def test_the_map_gives_correlation_factors_and_inverts():
    u = np.random.default_rng(0).normal(size=(6, 4, 4)) * 2.0
    chol = transforms.forward("corr_cholesky", u)
    np.testing.assert_allclose(np.triu(chol, 1), 0.0, atol=0)
    np.testing.assert_allclose((chol**2).sum(-1), 1.0, atol=1e-12)   # unit rows: diag(C) = 1
    assert (np.diagonal(chol, axis1=-2, axis2=-1) > 0).all()
    back = transforms.inverse("corr_cholesky", chol)
    lower = np.tril(np.ones((4, 4)), -1)
    np.testing.assert_allclose(back, u * lower, atol=1e-9)  # the auxiliaries come back at 0
    for d in range(3):  # the reference's row-by-row map
        np.testing.assert_allclose(chol[d], corr_cholesky(u[d])[0], atol=1e-14)


@pytest.mark.parametrize("size,eta", [(2, 0.6), (3, 1.0), (4, 2.5)])
def test_the_prior_on_u_is_lkj_times_the_jacobian(size, eta):
    """lkj_log_prior(u) = log LKJ(L(u)) + log |dL/du| (central differences over u's strictly
    lower triangle) + log N(aux; 0, 1); log LKJ from Lewandowski et al.'s normalizer
    (tests/reference.py) to 1e-10, and klqp's NumPy density equal to it."""
    from scipy import stats

    rng = np.random.default_rng(size)
    lower = np.tril_indices(size, -1)
    for _ in range(3):
        u = rng.normal(size=(size, size))
        chol = transforms.corr_cholesky_of(u)
        lkj = reference_logpdf("LKJCholesky", chol, {"eta": eta})
        assert transforms.lkj_log_density(chol, eta) == pytest.approx(lkj, abs=1e-10)
        assert densities.logpdf("LKJCholesky", chol, {"dim": size, "eta": eta}) == \
            pytest.approx(lkj, abs=1e-10)

        def strict(v):
            w = u.copy()
            w[lower] = v
            return transforms.corr_cholesky_of(w)[lower]

        h, v0 = 1e-6, u[lower]
        jac = np.stack([(strict(v0 + h * e) - strict(v0 - h * e)) / (2 * h)
                        for e in np.eye(len(v0))], axis=1)
        aux = u[np.triu_indices(size)]
        expected = lkj + np.linalg.slogdet(jac)[1] + stats.norm.logpdf(aux).sum()
        assert transforms.lkj_log_prior(u, eta) == pytest.approx(expected, abs=1e-6)


def test_prior_draws_on_u_are_finite_in_float32_and_the_prior_rebuilds_as_a_pytree():
    """NumPyro's prior site for an LKJ Global draws u through corr_cholesky_inverse; in
    float32 a clip at 1 - 1e-16 is 1 and atanh(1) = inf (the draws were NaN)."""
    jax = pytest.importorskip("jax")
    from klqp_numpyro.families import PriorOnU

    chol = transforms.lkj_draw(3, 1.0, np.random.default_rng(0), (50,)).astype(np.float32)
    u = transforms.corr_cholesky_inverse(chol)
    assert u.dtype == np.float32 and np.isfinite(u).all()
    d = PriorOnU("LKJCholesky", {"eta": 1.0}, (3, 3))
    x = d.sample(jax.random.PRNGKey(0), (4,))
    assert np.isfinite(np.asarray(x)).all()
    leaves, tree = jax.tree_util.tree_flatten(d)
    again = jax.tree_util.tree_unflatten(tree, leaves)
    np.testing.assert_allclose(np.asarray(again.log_prob(x)), np.asarray(d.log_prob(x)))


def test_lkj_density_matches_numpyro():
    dist = pytest.importorskip("numpyro.distributions")  # float64: tests/conftest.py
    chol = transforms.lkj_draw(4, 1.7, np.random.default_rng(2), (5,))
    np.testing.assert_allclose(transforms.lkj_log_density(chol, 1.7),
                               np.asarray(dist.LKJCholesky(4, 1.7).log_prob(chol)),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size,eta", [(2, 1.0), (4, 0.8), (5, 3.0)])
def test_draws_have_lkjs_marginals(size, eta):
    """Every off-diagonal correlation of LKJ(eta) is 2 Beta(b, b) - 1 with b = eta +
    (K - 2) / 2, so E[C_ij^2] = 1 / (2 eta + K - 1); 5 standard errors of 100,000 draws."""
    chol = densities.sample("LKJCholesky", {"dim": size, "eta": eta}, np.random.default_rng(0),
                            shape=(100_000, size, size))
    corr = chol @ np.swapaxes(chol, -1, -2)
    np.testing.assert_allclose(np.diagonal(corr, axis1=-2, axis2=-1), 1.0, atol=1e-12)
    i, j = np.tril_indices(size, -1)
    squares = corr[:, i, j] ** 2
    se = squares.std(0) / np.sqrt(len(squares))
    assert np.all(np.abs(squares.mean(0) - 1.0 / (2 * eta + size - 1)) < 5 * se), squares.mean(0)


def _correlated(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    corr = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])
    sd = np.array([1.0, 2.0, 0.5])
    y = rng.multivariate_normal(np.zeros(3), np.diag(sd) @ corr @ np.diag(sd), size=n)
    with kq.Model("correlated") as model:
        chol = kq.Global("chol", kq.LKJCholesky(3, eta=2.0))
        sigma = kq.Global("sigma", kq.HalfNormal(2.0), shape=(3,))
        kq.Observed("y", kq.MvNormal(np.zeros(3), sigma[..., None] * chol))
    model.covariance_factor = sigma[..., None] * chol  # for the test's result.evaluate
    return model, {"y": y}


@pytest.mark.slow  # end-to-end fits (the README's suite keeps under 8 minutes)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_covariance_with_an_lkj_prior_reaches_the_sample_correlations(backend):
    """y_i ~ MvNormal(0, diag(sigma) C diag(sigma)), C ~ LKJ(2), 2,000 rows: the posterior's
    means are the sample correlations and sds up to O(1/N) (posterior sds ~0.015 and
    ~0.016 sigma). Measured on either backend: q's correlations within 0.001 of the
    sample's, its scales within 0.2 %; held to 0.01 and 1.5 %. The auxiliaries' q goes
    to N(0, 1)."""
    model, data = _correlated()
    r = kq.fit(model, data, backend=backend, steps=1500, batch_size=200, seed=0, progress=False)
    chol = r.sample("chol", 2000, seed=0)
    corr = chol @ np.swapaxes(chol, -1, -2)
    np.testing.assert_allclose(np.diagonal(corr, axis1=-2, axis2=-1), 1.0, atol=1e-12)
    i, j = np.tril_indices(3, -1)
    sample = np.corrcoef(data["y"].T)[i, j]
    np.testing.assert_allclose(corr.mean(0)[i, j], sample, atol=0.01)
    np.testing.assert_allclose(r.mean("sigma"), data["y"].std(0), rtol=0.015)
    q = r.q("chol")
    upper = np.triu_indices(3)
    assert np.all(np.abs(q["loc"][upper]) < 0.15) and np.all(np.abs(q["scale"][upper] - 1) < 0.15), q
    assert "LKJCholesky globals chol" in str(kq.explain(model, total_size=2000))
    # an expression at q's means takes L with unit rows (E_q[L]'s rows are shorter)
    factor = r.evaluate(model.covariance_factor)
    np.testing.assert_allclose(np.sqrt((factor**2).sum(-1)), r.mean("sigma"), rtol=1e-12)


def test_lkj_is_checked_where_it_is_declared_and_saved_as_plain_data():
    with pytest.raises(kq.ModelError, match="dim=.* whole number >= 2"):
        kq.LKJCholesky(1)
    with pytest.raises(kq.ModelError, match="dim=.* whole number >= 2"):
        kq.LKJCholesky(2.5)
    with pytest.raises(kq.ModelError, match=r"eta=.* must be > 0"):
        kq.LKJCholesky(3, eta=-1.0)
    with kq.Model("m"):
        e = kq.Global("e", kq.HalfNormal(1.0))
        with pytest.raises(kq.ModelError, match="eta=.* must be a number"):
            kq.LKJCholesky(3, eta=e)
        with pytest.raises(kq.ModelError, match="Local 'z': kq.LKJCholesky is for a Global"):
            kq.Local("z", kq.LKJCholesky(2))
        with pytest.raises(kq.ModelError, match="Observed 'c': kq.LKJCholesky is a prior"):
            kq.Observed("c", kq.LKJCholesky(2))
    model, _ = _correlated()
    assert model["chol"].shape == (3, 3)
    again = kq.Model.from_json(model.to_json())
    assert again["chol"].shape == (3, 3) and again["chol"].dist.family == "LKJCholesky"
    assert again.to_json() == model.to_json()
