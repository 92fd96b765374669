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


# -- per-row log-likelihoods (docs/objective.md: unscaled, one per row, for LOO/WAIC) -----------

def test_numpy_densities_match_scipy():
    """klqp.densities (used after a fit) against tests/reference.py's scipy.stats."""
    from klqp.densities import logpdf
    from reference import logpdf as scipy_logpdf

    rng = np.random.default_rng(0)
    u = rng.uniform(0.2, 0.8, 50)
    cases = {
        "Normal": (rng.normal(size=50), {"mu": 0.3, "sigma": 1.7}),
        "HalfNormal": (u * 3, {"sigma": 1.3}),
        "LogNormal": (u * 3, {"mu": 0.2, "sigma": 0.6}),
        "Exponential": (u * 3, {"lam": 2.5}),
        "Gamma": (u * 3, {"alpha": 2.2, "beta": 1.4}),
        "Beta": (u, {"alpha": 0.7, "beta": 3.1}),
        "StudentT": (rng.normal(size=50), {"nu": 3.5, "mu": -0.2, "sigma": 0.8}),
        "Bernoulli": (rng.integers(0, 2, 50), {"logits": rng.normal(size=50)}),
        "Binomial": (rng.integers(0, 8, 50), {"n": 7.0, "probs": u}),
        "Poisson": (rng.integers(0, 9, 50), {"mu": 3.3}),
        "Categorical": (rng.integers(0, 4, 50), {"logits": rng.normal(size=(50, 4))}),
        "ContinuousBernoulli": (u, {"logits": rng.normal(size=50) * 2}),
        "HalfCauchy": (u * 3, {"beta": 1.2}),
        "HalfStudentT": (u * 3, {"nu": 2.5, "sigma": 0.9}),
        "Cauchy": (rng.normal(size=50) * 3, {"alpha": 0.4, "beta": 1.5}),
        "Laplace": (rng.normal(size=50), {"mu": -0.3, "b": 0.7}),
        "Uniform": (np.append(u * 3, [-1.0, 4.0]), {"lower": -0.5, "upper": 2.6}),  # 2 outside
        "Dirichlet": (rng.dirichlet([1.0, 2.0, 3.0], 50), {"alpha": u[:, None] * [1.0, 3.0, 5.0]}),
        "MvNormal": (rng.normal(size=(50, 3)), {"mu": rng.normal(size=(50, 3)), "chol": np.array(
            [[1.0, 0.0, 0.0], [0.5, 1.2, 0.0], [-0.3, 0.4, 0.7]])}),
        "Weibull": (u * 3, {"alpha": 1.7, "beta": 1.3}),
        "LKJCholesky": (kq.transforms.lkj_draw(3, 1.7, rng, (50,)), {"dim": 3.0, "eta": 1.7}),
        "NegativeBinomial": (rng.integers(0, 12, 50), {"mu": u * 5, "alpha": 2.3}),
        "ZeroInflatedPoisson": (rng.integers(0, 6, 50), {"psi": 0.7, "mu": u * 4}),
        "ZeroInflatedNegativeBinomial": (rng.integers(0, 12, 50),
                                         {"psi": u, "mu": u * 5, "alpha": 1.7}),
        "OrderedLogistic": (rng.integers(0, 4, 50), {"eta": rng.normal(size=50) * 2,
                                                     "cutpoints": np.array([-1.2, 0.3, 1.9])}),
    }
    # kq.Mixture is tested on its own (test_predict.py, test_agreement.py's mixture model)
    assert set(cases) == set(kq.distributions.__all__) - {"Distribution", "SUPPORT_TRANSFORM",
                                                          "Mixture"}
    for family, (x, p) in cases.items():
        np.testing.assert_allclose(logpdf(family, x, p), scipy_logpdf(family, x, p),
                                   rtol=1e-10, atol=1e-12, err_msg=family)
    bernoulli_probs = logpdf("Bernoulli", [0, 1], {"probs": 0.2})
    np.testing.assert_allclose(bernoulli_probs, np.log([0.8, 0.2]))


def test_ordered_logistic_density_is_finite_where_its_probabilities_underflow():
    """log P(y = k) from log-sigmoids and log1mexp: finite far in the tails, where the
    difference of two sigmoids is 0 in float64; labels outside 0..K-1 have log P = -inf."""
    from klqp.densities import logpdf

    c = np.array([-1.2, 0.3, 1.9])
    got = logpdf("OrderedLogistic", [3, 1, 0, 1], {"eta": np.array([-40.0, -40.0, 40.0, 40.0]),
                                                  "cutpoints": c})
    exact = [-41.9 - np.log1p(np.exp(-41.9)),                   # log sigmoid(eta - c_2)
             -38.8 + np.log1p(-np.exp(-1.5)) - np.log1p(np.exp(-38.8)) - np.log1p(np.exp(-40.3)),
             -41.2 - np.log1p(np.exp(-41.2)),
             -39.7 + np.log1p(-np.exp(-1.5)) - np.log1p(np.exp(-39.7)) - np.log1p(np.exp(-41.2))]
    np.testing.assert_allclose(got, exact, rtol=1e-13)
    assert np.isneginf(logpdf("OrderedLogistic", [-1, 4], {"eta": 0.0, "cutpoints": c})).all()


def _noise_for(result, draws: dict, d: int) -> dict:
    """The standard-normal noise that makes q's reparameterized draw equal draw ``d``."""
    noise = {}
    for v in result.model.latents:
        q = result.q(v.name)
        u = transforms.inverse(v.support, draws[v.name][d])
        noise[v.name] = (u - q["loc"]) / q["scale"]
    return noise


@pytest.mark.parametrize("name", ["hierarchical", "counts", "vector_locals", "vae", "bnn"])
def test_pointwise_log_likelihood_sums_to_the_backends_loglik(name):
    """Summed over rows, the per-row log-likelihood at a draw equals the backend's loglik
    term at that draw with b = N (so N/b = 1) and T = 1: same densities, same draws, no
    hidden scaling."""
    from models import ALL

    model, data = ALL[name]()
    n = len(next(iter(data.values())))
    backend = BACKENDS[0]
    r = kq.fit(model, data, backend=backend, steps=20, batch_size=10, progress=False,
               likelihood_weight=3.0, scale_cost_to_minibatch=True)  # not in the per-row figure
    num_samples = 3
    pointwise = r.log_likelihood(num_samples=num_samples, seed=5)
    assert set(pointwise) == {v.name for v in model.observed}
    assert all(a.shape == (num_samples, n) and np.all(np.isfinite(a)) for a in pointwise.values())
    draws = {v.name: r.sample(v.name, num_samples, seed=5) for v in model.latents}
    c = kq.compile(model, data, backend=backend, batch_size=n)
    for d in range(num_samples):
        terms = c.terms(r.params, indices=np.arange(n), noise=_noise_for(r, draws, d))
        total = sum(a[d].sum() for a in pointwise.values())
        assert total == pytest.approx(terms["loglik"], rel=1e-7)


def test_inference_data_with_log_likelihood_feeds_loo():
    from models import vae

    az = pytest.importorskip("arviz")
    model, data = vae()
    n = len(data["image"])
    r = kq.fit(model, data, backend=BACKENDS[0], steps=50, batch_size=20, progress=False)
    tree = r.to_inference_data(num_samples=200, log_likelihood=True)
    assert tree["posterior"]["z"].shape == (1, 200, n, 2)  # the amortized local's q
    assert tree["log_likelihood"]["image"].dims == ("chain", "draw", "row")
    np.testing.assert_allclose(tree["log_likelihood"]["image"].values[0],
                               r.log_likelihood(num_samples=200)["image"])
    loo = az.loo(tree, var_name="image")
    assert np.isfinite(loo.elpd) and loo.n_data_points == n


def test_draws_of_different_latents_are_independent():
    """q is mean-field: two scalar globals' draws share no noise."""
    from models import hierarchical

    model, data = hierarchical()
    r = kq.fit(model, data, backend=BACKENDS[0], steps=5, batch_size=10, progress=False)
    scalars = [v.name for v in model.globals if v.shape == ()]
    assert len(scalars) >= 2
    a, b = (transforms.inverse(model[k].support, r.sample(k, 4000)) for k in scalars[:2])
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
