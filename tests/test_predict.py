"""Using a fit: NumPy draws of every family, posterior predictive draws, q(z_i) for new
rows, held-out log predictive densities, kq.Deterministic, ArviZ's predictive groups,
and the checks new rows get (klqp/predict.py)."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate

import klqp as kq
from klqp import densities

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


# -- NumPy draws of every family ------------------------------------------------------------
FAMILY_CASES = {
    "Normal": {"mu": 1.0, "sigma": 2.0},
    "HalfNormal": {"sigma": 2.0},
    "LogNormal": {"mu": 0.1, "sigma": 0.5},
    "Exponential": {"lam": 2.0},
    "Gamma": {"alpha": 3.0, "beta": 2.0},
    "Beta": {"alpha": 2.0, "beta": 5.0},
    "StudentT": {"nu": 5.0, "mu": 1.0, "sigma": 2.0},
    "ContinuousBernoulli": {"logits": -3.0},
    "Bernoulli": {"logits": 0.3},
    "Binomial": {"n": 10.0, "probs": 0.3},
    "Poisson": {"mu": 4.0},
    "Categorical": {"logits": np.array([0.0, 1.0, 2.0])},
    "HalfCauchy": {"beta": 1.5},
    "HalfStudentT": {"nu": 5.0, "sigma": 2.0},
    "Cauchy": {"alpha": 1.0, "beta": 2.0},
    "Laplace": {"mu": 1.0, "b": 2.0},
    "Weibull": {"alpha": 1.5, "beta": 2.0},
    "Uniform": {"lower": -1.0, "upper": 2.5},
    "MvNormal": {"mu": np.array([1.0, -2.0]), "chol": np.array([[1.0, 0.0], [0.8, 0.5]])},
    "Dirichlet": {"alpha": np.array([0.5, 2.0, 3.5])},
    "LKJCholesky": {"dim": 3.0, "eta": 1.5},
    "NegativeBinomial": {"mu": 3.0, "alpha": 2.0},
    "ZeroInflatedPoisson": {"psi": 0.7, "mu": 3.0},
    "ZeroInflatedNegativeBinomial": {"psi": 0.6, "mu": 4.0, "alpha": 1.5},
    "OrderedLogistic": {"eta": 0.4, "cutpoints": np.array([-1.5, 0.0, 0.8, 2.5])},
}
SUPPORT = {"HalfNormal": (0, np.inf), "LogNormal": (0, np.inf), "Exponential": (0, np.inf),
           "Gamma": (0, np.inf), "Beta": (0, 1), "ContinuousBernoulli": (0, 1),
           "HalfCauchy": (0, np.inf), "HalfStudentT": (0, np.inf), "Weibull": (0, np.inf),
           "Uniform": (-1.0, 2.5)}
DISCRETE = ("Bernoulli", "Binomial", "Poisson", "Categorical", "NegativeBinomial",
            "ZeroInflatedPoisson", "ZeroInflatedNegativeBinomial", "OrderedLogistic")
HEAVY_TAILED = ("HalfCauchy", "Cauchy")  # no finite mean: quantiles instead of moments


def test_every_family_has_a_sampler_and_a_case_here():
    assert set(FAMILY_CASES) == set(densities.FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_draws_follow_the_familys_density(family):
    """The draws' mean and second moment (continuous), quantiles (Cauchy-type, which have
    no moments) or frequencies (discrete) against klqp's own NumPy density (held to
    scipy.stats in test_results.py), at 5 standard errors of 200,000 draws."""
    params = FAMILY_CASES[family]
    if family == "MvNormal":  # draws of 2 coordinates: mean mu, covariance chol chol^T
        draws = densities.sample(family, params, np.random.default_rng(0), shape=(200_000, 2))
        np.testing.assert_allclose(draws.mean(0), params["mu"], atol=5 * 1.0 / np.sqrt(2e5))
        np.testing.assert_allclose(np.cov(draws.T), params["chol"] @ params["chol"].T, atol=0.01)
        return
    if family == "Dirichlet":  # draws of 3 coordinates: Dirichlet's mean and variance
        a = params["alpha"]
        draws = densities.sample(family, params, np.random.default_rng(0), shape=(200_000, 3))
        mean, total = a / a.sum(), a.sum()
        np.testing.assert_allclose(draws.sum(-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(draws.mean(0), mean, atol=5 * 0.5 / np.sqrt(2e5))
        np.testing.assert_allclose(draws.var(0), mean * (1 - mean) / (total + 1), rtol=0.02)
        return
    if family == "LKJCholesky":  # each correlation 2 Beta(b, b) - 1, b = eta + (K - 2) / 2
        chol = densities.sample(family, params, np.random.default_rng(0), shape=(200_000, 3, 3))
        corr = chol @ np.swapaxes(chol, -1, -2)
        i, j = np.tril_indices(3, -1)
        b = params["eta"] + 0.5
        np.testing.assert_allclose(corr[:, i, j].mean(0), 0.0, atol=5 * 0.5 / np.sqrt(2e5))
        np.testing.assert_allclose((corr[:, i, j] ** 2).mean(0), 1 / (2 * b + 1), rtol=0.02)
        return
    draws = densities.sample(family, params, np.random.default_rng(0), shape=(200_000,))
    assert draws.shape == (200_000,)
    density = lambda x: float(np.exp(densities.logpdf(family, x, params)))
    if family in DISCRETE:
        assert draws.dtype == np.int64
        for k in range(0, 15):
            p = density(k) if (family != "Bernoulli" or k < 2) and (family != "Categorical"
                                                                   or k < 3) else 0.0
            freq = np.mean(draws == k)
            assert abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / len(draws)) + 1e-12, (k, freq, p)
        return
    low, high = SUPPORT.get(family, (-np.inf, np.inf))
    mass = integrate.quad(density, low, high)[0]
    assert mass == pytest.approx(1.0, abs=1e-6)
    if family in HEAVY_TAILED:
        # The draws' q-quantile x_q has empirical CDF q; the density's CDF F(x_q) (by
        # quadrature) is within 5 binomial standard errors sqrt(q (1 - q) / n) of it.
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            x_q = np.quantile(draws, q)
            cdf = integrate.quad(density, low, x_q)[0]
            assert abs(cdf - q) <= 5 * np.sqrt(q * (1 - q) / len(draws)), (q, x_q, cdf)
        return
    for power in (1, 2):
        exact = integrate.quad(lambda x: x ** power * density(x), low, high)[0]
        sd = np.std(draws ** power) / np.sqrt(len(draws))
        assert abs(np.mean(draws ** power) - exact) <= 5 * sd, (power, np.mean(draws ** power), exact)


def test_draws_broadcast_parameters_and_repeat_with_the_seed():
    mu = np.array([0.0, 10.0, 100.0])
    a = densities.sample("Poisson", {"mu": mu}, np.random.default_rng(1), shape=(4, 3))
    b = densities.sample("Poisson", {"mu": mu}, np.random.default_rng(1), shape=(4, 3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 3) and (a[:, 0] == 0).all() and (a[:, 2] > 50).all()
    logits = np.zeros((5, 4))
    assert densities.sample("Categorical", {"logits": logits}, np.random.default_rng(0)).shape == (5,)


# -- a linear regression: the predictive under q in closed form (issue 17, target 1) --------
def _bench():
    """bench/predictions.py: its models and targets (figures in bench/README.md)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import predictions
    return predictions


def linear_model():
    return _bench().linear_model()


def linear_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return {"x": x, "y": 1.0 + 2.0 * x + 0.5 * rng.normal(size=n)}


@pytest.fixture(scope="module", params=BACKENDS)
def linear_fit(request):
    return kq.fit(linear_model(), linear_data(), backend=request.param, steps=1500,
                  batch_size=100, progress=False)


def test_predictive_moments_equal_the_analytic_ones_under_q(linear_fit):
    """E[y*] = E[a] + E[b] x and Var[y*] = Var[a] + x^2 Var[b] + E[s^2] under q (q is
    mean-field; q(s) is log-normal: E[s^2] = exp(2 m + 2 v)): the mean to 4 Monte-Carlo
    errors and the variance within 2 % at 10,000 draws."""
    r, x_new = linear_fit, np.array([-2.0, 0.0, 1.5, 4.0])
    y = r.predict({"x": x_new}, num_samples=10_000, seed=3)["y"]
    q = r.params
    mean = q["a"]["loc"] + q["b"]["loc"] * x_new
    var = (q["a"]["scale"] ** 2 + x_new ** 2 * q["b"]["scale"] ** 2
           + np.exp(2 * q["s"]["loc"] + 2 * q["s"]["scale"] ** 2))
    assert y.shape == (10_000, 4)
    assert np.all(np.abs(y.mean(0) - mean) <= 4 * np.sqrt(var / 10_000))
    np.testing.assert_allclose(y.var(0), var, rtol=0.02)


def test_a_deterministic_is_its_expression_at_qs_draws(linear_fit):
    r, data = linear_fit, linear_data()
    mu = r.sample("mu", 200, seed=5)
    a, b = r.sample("a", 200, seed=5), r.sample("b", 200, seed=5)
    np.testing.assert_allclose(mu, a[:, None] + b[:, None] * data["x"][None], rtol=1e-12)
    assert r.mean("mu").shape == (400,) and r.std("mu").shape == (400,)
    np.testing.assert_allclose(r.mean("mu"), r.params["a"]["loc"] + r.params["b"]["loc"]
                               * data["x"], atol=5 * float(r.std("mu").max()) / np.sqrt(1000))
    drawn = r.predict({"x": data["x"][:3]}, num_samples=50, seed=5)
    assert set(drawn) == {"y", "mu"} and drawn["mu"].shape == (50, 3)
    np.testing.assert_allclose(drawn["mu"], mu[:50, :3], rtol=1e-12)  # the same draws of q


def test_the_same_seed_gives_the_same_draws_and_another_seed_others(linear_fit):
    new = {"x": np.array([0.5, 1.0])}
    a = linear_fit.predict(new, num_samples=20, seed=7)["y"]
    np.testing.assert_array_equal(a, linear_fit.predict(new, num_samples=20, seed=7)["y"])
    assert not np.allclose(a, linear_fit.predict(new, num_samples=20, seed=8)["y"])


def test_training_rows_log_predictive_density_is_the_mean_of_the_pointwise_likelihood(linear_fit):
    """Without locals, log p(y_i | data) is log mean_d p(y_i | theta_d): exactly the
    log-mean-exp of log_likelihood() at the same draws."""
    r = linear_fit
    lpd = r.log_predictive_density(num_samples=300, seed=2)
    pointwise = r.log_likelihood(num_samples=300, seed=2)["y"]
    top = pointwise.max(0)
    np.testing.assert_allclose(lpd.value, top + np.log(np.exp(pointwise - top).mean(0)),
                               rtol=1e-12)
    assert lpd.mc_se.shape == (400,) and np.all(lpd.mc_se > 0)
    assert np.all((lpd.ess > 1) & (lpd.ess <= 300 + 1e-9))
    e = r.elpd(num_samples=300, seed=2)
    assert e.elpd == pytest.approx(lpd.value.sum()) and e.locals == "none" and e.n == 400
    assert e.se == pytest.approx(np.sqrt(400) * lpd.value.std(ddof=1))


def test_arviz_gets_the_predictive_groups_and_its_named_calls_work(linear_fit):
    """The groups in ArviZ's layout, and every ArviZ call the docs name."""
    az = pytest.importorskip("arviz")
    r, new = linear_fit, {"x": np.array([-1.0, 0.0, 2.0])}
    tree = r.to_inference_data(num_samples=200, log_likelihood=True, posterior_predictive=True,
                               predictions=new)
    assert tree["posterior"]["mu"].dims == ("chain", "draw", "row")
    assert tree["posterior_predictive"]["y"].dims == ("chain", "draw", "row")
    assert tree["posterior_predictive"]["y"].shape == (1, 200, 400)
    assert tree["predictions"]["y"].shape == (1, 200, 3)
    assert tree["predictions"]["mu"].dims == ("chain", "draw", "row")
    np.testing.assert_array_equal(tree["predictions_constant_data"]["x"].values, new["x"])
    np.testing.assert_array_equal(tree["constant_data"]["x"].values, linear_data()["x"])
    np.testing.assert_allclose(tree["predictions"]["y"].values[0],
                               r.predict(new, num_samples=200)["y"])
    # the posterior predictive is drawn at the posterior group's draws
    mu = tree["posterior"]["mu"].values[0]
    assert np.corrcoef(tree["posterior_predictive"]["y"].values[0, :, 0], mu[:, 0])[0, 1] > 0
    loo = az.loo(tree)
    assert np.isfinite(loo.elpd) and loo.n_data_points == 400
    assert {"a", "b", "s"} <= set(az.summary(tree).index)
    az.plot_ppc_dist(tree)
    az.plot_dist(tree, var_names=["a", "b"])


# -- checks of new rows ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def grouped_fit():
    with kq.Model("grouped") as model:
        g = kq.Data("g", dtype="int")
        a = kq.Global("a", kq.Normal(0.0, 1.0), shape=(3,))
        kq.Observed("y", kq.Normal(a[g], 1.0))
    data = {"g": np.array([0, 1, 2, 0, 1, 2]), "y": np.array([0.1, 1.0, 2.1, -0.1, 0.9, 2.0])}
    return kq.fit(model, data, backend=BACKENDS[0], steps=20, batch_size=6, progress=False)


@pytest.mark.parametrize("call", ["evaluate", "predict"])
@pytest.mark.parametrize("columns, message", [
    ({"g": np.array([3])}, r"column 'g' holds 3 at index \(0,\), but it indexes a, which has 3 "
                           r"entries \(0..2\)"),
    ({"g": np.array([-1])}, r"column 'g' has values outside the support .*min -1"),
    ({}, r"missing data for \['g'\]"),
    ({"g": np.array([0]), "h": np.array([1])}, r"unknown data name\(s\) \['h'\]"),
    ({"g": np.array([0.5])}, r"column 'g' must hold whole numbers"),
    ({"g": np.array([0]), "y": np.array([np.nan])}, r"column 'y' holds nan"),
])
def test_new_rows_get_kq_fits_checks(grouped_fit, call, columns, message):
    a_of_g = grouped_fit.model["y"].dist.param_dict["mu"]
    with pytest.raises(ValueError, match=message):
        if call == "evaluate":
            grouped_fit.evaluate(a_of_g, columns)
        else:
            grouped_fit.predict(columns, num_samples=3)


def test_a_bad_locals_or_count_is_refused(grouped_fit):
    with pytest.raises(ValueError, match="num_samples=0 must be a positive integer"):
        grouped_fit.predict({"g": np.array([0])}, num_samples=0)


# -- locals of new rows (issue 17, target 2 on a small flagship) -----------------------------
def flagship(n_train, n_test, seed=0):
    from hierarchical import build_model, make_data

    data, _ = make_data(n_train + n_test, seed)
    train = {k: v[:n_train] for k, v in data.items()}
    test = {k: v[n_train:] for k, v in data.items()}
    return build_model(), train, test


def optimum_given_q(result, test):
    """The mean-field optimum of q(z_i) for held-out rows given q(theta) q(log sigma):
    z_i's conditional is Normal, with E_q[1/sigma^2] = exp(-2 m + 2 v)."""
    q = result.params
    inv = np.exp(-2 * q["sigma"]["loc"] + 2 * q["sigma"]["scale"] ** 2)
    var = 1.0 / (1.0 / 0.49 + inv)
    return var * (q["theta"]["loc"] * test["x"] / 0.49 + test["y"] * inv), np.sqrt(var)


def closed_form_lpd(result, test, num_samples, seed):
    """log mean_d N(y_i; theta_d x_i, sqrt(0.49 + sigma_d^2)): z integrated exactly, at
    the same draws of q(theta, sigma) as the fit's estimate."""
    theta = result.sample("theta", num_samples, seed)[:, None]
    sigma = result.sample("sigma", num_samples, seed)[:, None]
    var = 0.49 + sigma ** 2
    logp = -0.5 * (test["y"] - theta * test["x"]) ** 2 / var - 0.5 * np.log(2 * np.pi * var)
    top = logp.max(0)
    return top + np.log(np.exp(logp - top).mean(0))


@pytest.fixture(scope="module", params=BACKENDS)
def small_flagship(request):
    model, train, test = flagship(4000, 400)
    r = kq.fit(model, train, backend=request.param, steps=100, batch_size=400,
               scale_cost_to_minibatch=True, progress=False)
    return r, test


def test_held_out_rows_get_the_mean_field_optimum_and_the_closed_form_lpd(small_flagship):
    r, test = small_flagship
    q = r.fit_locals(test)
    mean, sd = optimum_given_q(r, test)
    assert q["z"]["loc"].shape == (400,)
    assert np.sqrt(np.mean((q["z"]["loc"] - mean) ** 2)) <= 0.03 * sd
    np.testing.assert_allclose(q["z"]["scale"], sd, rtol=0.01)
    lpd = r.log_predictive_density(test, num_samples=500, seed=1)
    assert np.abs(lpd.value - closed_form_lpd(r, test, 500, 1)).mean() <= 0.01
    # q(z_i) at its optimum is close to p(z_i | y_i, theta): nearly even weights
    assert lpd.ess.min() > 400
    assert r.log_predictive_density(test, 500, seed=1, locals="prior").ess.min() < lpd.ess.min()
    assert r.elpd(test, num_samples=500, seed=1).locals == "fit"


def test_new_rows_without_observations_draw_their_locals_from_the_prior(small_flagship):
    r, test = small_flagship
    with pytest.raises(ValueError, match="locals='fit' fits q.z_i. to each row's observations"):
        r.predict({"x": test["x"][:4]}, num_samples=5)
    with pytest.raises(ValueError, match="locals='encoder', but \\['z'\\] have no encoder"):
        r.predict(test, num_samples=5, locals="encoder")
    with pytest.raises(ValueError, match="locals='guess'"):
        r.predict(test, num_samples=5, locals="guess")
    x = np.array([0.0, 2.0])
    y = r.predict({"x": x}, num_samples=20_000, seed=4, locals="prior")["y"]
    # y = theta x + 0.7 e + sigma e': mean E[theta] x, variance 0.49 + E[sigma^2] (+ x^2 Var theta)
    sigma2 = np.mean(r.sample("sigma", 20_000, seed=4) ** 2)
    np.testing.assert_allclose(y.var(0), 0.49 + sigma2 + x ** 2 * r.std("theta") ** 2, rtol=0.04)
    # with their observations, the rows' draws follow them: y_i* ~ q(z_i) + noise
    fitted = r.predict(test, num_samples=2000, seed=4)["y"].mean(0)
    assert np.corrcoef(fitted, test["y"])[0, 1] > np.corrcoef(fitted, r.mean("theta") * test["x"])[0, 1] - 0.2


def test_training_rows_use_their_own_q(small_flagship):
    r, _ = small_flagship
    z = r.sample("z", 30, seed=2)
    theta = r.sample("theta", 30, seed=2)
    expr = r.model["y"].dist.param_dict["mu"]  # z itself
    np.testing.assert_allclose(r.evaluate(expr, num_samples=30, seed=2), z)
    assert r.evaluate(kq.exp(expr), num_samples=0).shape == (4000,)
    assert r.predict(num_samples=30, seed=2)["y"].shape == (30, 4000)
    assert theta.shape == (30,)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both backends")
def test_fitted_locals_and_their_draws_agree_across_backends(small_flagship):
    """The local step of each backend from the same q: the same q(z_i), so the same
    draws (draws themselves never involve the backend)."""
    r, test = small_flagship
    other = dataclasses.replace(r, backend=[b for b in BACKENDS if b != r.backend][0])
    a, b = r.fit_locals(test), other.fit_locals(test)
    np.testing.assert_allclose(a["z"]["loc"], b["z"]["loc"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a["z"]["scale"], b["z"]["scale"], rtol=1e-6)
    np.testing.assert_allclose(r.predict(test, 10, seed=1)["y"], other.predict(test, 10, seed=1)["y"],
                               rtol=1e-6, atol=1e-8)


# -- kq.Deterministic as a spec --------------------------------------------------------------
def test_a_deterministic_is_saved_and_loaded_and_the_objective_never_sees_it():
    model = linear_model()
    assert "mu" not in model.vars and model["mu"].role == "deterministic" and model["mu"].per_row
    again = kq.Model.from_json(model.to_json())
    assert again.to_json() == model.to_json() and again["mu"].per_row
    assert "deterministic mu = (a + (b * x))" in repr(model)


def test_a_deterministic_gets_the_declaration_checks():
    with kq.Model("m"):
        x = kq.Data("x", shape=(2,))
        w = kq.Global("w", kq.Normal(0.0, 1.0))
        with pytest.raises(kq.ModelError, match="does not keep the data axis"):
            kq.Deterministic("total", kq.sum(w * x, 0))
        with pytest.raises(kq.ModelError, match="already has a global variable"):
            kq.Deterministic("w", w * 2.0)
        scale = kq.Deterministic("scale", kq.exp(w))
        with pytest.raises(kq.ModelError, match="already has a deterministic variable"):
            kq.Deterministic("scale", w)
    assert scale.op == "exp"


# -- a grouped model: a new group averages over its prior ------------------------------------
def test_a_new_group_is_predicted_from_the_group_prior():
    """Varying intercepts a_g ~ N(mu, tau): a Local per group row cannot be, so the
    group effect is a Local of a one-row-per-observation model here: a new row with no
    observation draws its effect from N(mu, tau)."""
    rng = np.random.default_rng(0)
    n = 600
    effect = rng.normal(0.0, 1.0, size=n)
    data = {"y": 2.0 + effect + 0.3 * rng.normal(size=n)}
    with kq.Model("effects") as model:
        mu = kq.Global("mu", kq.Normal(0.0, 5.0))
        tau = kq.Global("tau", kq.HalfNormal(2.0))
        e = kq.Local("e", kq.Normal(mu, tau))
        kq.Observed("y", kq.Normal(e, 0.3))
    r = kq.fit(model, data, backend=BACKENDS[0], steps=600, batch_size=100, progress=False)
    new = r.predict({"y": np.zeros(2)}, num_samples=4000, seed=0, locals="prior")["y"]
    assert abs(new.mean() - float(r.mean("mu"))) < 0.1
    assert new.std() == pytest.approx(np.sqrt(float(np.mean(r.sample("tau", 4000) ** 2)) + 0.09),
                                      rel=0.05)


# -- new groups ------------------------------------------------------------------------------
def intercepts(groups=5, n=300, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    data = {"g": g, "y": 1.0 + 0.8 * rng.normal(size=groups)[g] + 0.5 * rng.normal(size=n)}
    with kq.Model("intercepts") as model:
        group = kq.Data("g", dtype="int")
        mu_a = kq.Global("mu_a", kq.Normal(0.0, 5.0))
        sigma_a = kq.Global("sigma_a", kq.HalfNormal(1.0))
        a_raw = kq.Global("a_raw", kq.Normal(0.0, 1.0), shape=(groups,))
        kq.Deterministic("mu", mu_a + sigma_a * a_raw[group])
        kq.Observed("y", kq.Normal(mu_a + sigma_a * a_raw[group], 0.5))
    return model, data


@pytest.fixture(scope="module")
def intercepts_fit():
    model, data = intercepts()
    return kq.fit(model, data, backend=BACKENDS[0], steps=800, batch_size=100, progress=False)


def test_a_new_group_draws_its_entries_from_the_prior(intercepts_fit):
    """Rows of group 5 (of 0..4): a_raw_5 ~ N(0, 1) at each draw, so mu = mu_a +
    sigma_a a_raw_5 has mean E[mu_a] and variance Var[mu_a] + E[sigma_a^2]; the rows of
    one new group share the draw, two new groups do not."""
    r = intercepts_fit
    rows = {"g": np.array([5, 5, 6, 0])}
    with pytest.raises(ValueError, match="column 'g' holds 5 at index"):
        r.predict(rows, num_samples=10)
    mu = r.predict(rows, num_samples=20_000, seed=1, new_groups=True)["mu"]
    np.testing.assert_array_equal(mu[:, 0], mu[:, 1])
    assert abs(np.corrcoef(mu[:, 0], mu[:, 2])[0, 1]) < 0.2  # only mu_a, sigma_a shared
    sigma2 = np.mean(r.sample("sigma_a", 20_000, seed=1) ** 2)
    assert abs(mu[:, 0].mean() - float(r.mean("mu_a"))) <= 4 * mu[:, 0].std() / np.sqrt(20_000)
    assert mu[:, 0].var() == pytest.approx(float(r.std("mu_a")) ** 2 + sigma2, rel=0.05)
    # a known group keeps its own q: its draws are the Deterministic's at q
    np.testing.assert_allclose(mu[:2000, 3], r.evaluate(r.model["mu"].expr, {"g": np.array([0])},
                                                        2000, seed=1, new_groups=True)[:, 0])
    held = r.elpd({"g": np.array([5, 5]), "y": np.array([1.0, 1.2])}, 500, new_groups=True)
    assert np.isfinite(held.elpd) and held.mc_se > 0


def test_only_globals_with_one_prior_for_every_entry_take_new_groups():
    from klqp.predict import new_levels

    model, _ = intercepts()
    assert new_levels(model) == {"g": ["a_raw"]}
    with kq.Model("m") as m:
        g = kq.Data("g", dtype="int")
        a = kq.Global("a", kq.Normal(np.array([0.0, 1.0, 2.0]), 1.0))  # a prior per entry
        b = kq.Global("b", kq.Normal(0.0, 1.0), shape=(3,))
        kq.Observed("y", kq.Normal(a[g] + b[g], 1.0))
    assert new_levels(m) == {}


# -- the targets at scale (bench/predictions.py; figures in bench/README.md) --------
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_target_2_flagship_held_out_rows(backend):
    row = _bench().target_flagship(backend, quick=True)
    assert row["z_rms_in_opt_sd"] <= 0.03 and row["z_sd_ratio_max_err"] <= 0.01
    assert row["lpd_mean_abs_diff_nats_per_row"] <= 0.01


@pytest.mark.slow
def test_target_3_poisson_glmm_elpd_agrees_across_backends_and_ways():
    rows = {b: _bench().target_glmm(b, quick=True) for b in BACKENDS}
    for row in rows.values():
        # locals fitted (importance weights) and drawn from the prior estimate one number
        assert abs(row["elpd_fit"] - row["elpd_prior"]) <= 3 * np.hypot(
            row["elpd_fit_mc_se"], row["elpd_prior_mc_se"])
        assert row["elpd_fit_mc_se"] < row["elpd_prior_mc_se"] / 5
    if len(rows) == 2:
        a, b = rows.values()
        assert abs(a["elpd_fit"] - b["elpd_fit"]) <= 2 * np.hypot(a["elpd_fit_mc_se"],
                                                                  b["elpd_fit_mc_se"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_target_4_refined_codes_score_held_out_digits_higher(backend):
    row = _bench().target_vae(backend, quick=True)
    gap = row["elpd_refined_per_row"] - row["elpd_encoder_per_row"]
    assert gap * 180 > 3 * np.hypot(row["mc_se_encoder"], row["mc_se_refined"])


def test_a_new_groups_draws_do_not_depend_on_the_other_rows(intercepts_fit):
    r = intercepts_fit
    alone = r.predict({"g": np.array([5])}, num_samples=50, seed=3, new_groups=True)["mu"]
    with_others = r.predict({"g": np.array([9, 5, 7])}, num_samples=50, seed=3,
                            new_groups=True)["mu"]
    np.testing.assert_array_equal(alone[:, 0], with_others[:, 1])


def test_locals_of_new_groups_rows_are_not_fitted_at_an_entry_drawn_later():
    rng = np.random.default_rng(0)
    with kq.Model("nested") as model:
        g = kq.Data("g", dtype="int")
        mu = kq.Global("mu", kq.Normal(0.0, 1.0))
        a = kq.Global("a", kq.Normal(mu, 1.0), shape=(4,))
        z = kq.Local("z", kq.Normal(a[g], 0.5))
        kq.Observed("y", kq.Normal(z, 0.3))
    r = kq.fit(model, {"g": rng.integers(0, 4, 80), "y": rng.normal(size=80)},
               backend=BACKENDS[0], steps=20, batch_size=40, progress=False)
    rows = {"g": np.array([4, 0]), "y": np.zeros(2)}
    with pytest.raises(ValueError, match="column 'g' holds 4, a group the fit never saw"):
        r.elpd(rows, 20, new_groups=True)
    assert np.isfinite(r.elpd(rows, 20, new_groups=True, locals="prior").elpd)


def test_a_global_read_whole_takes_no_new_groups():
    from klqp.predict import new_levels

    with kq.Model("centred") as model:
        g = kq.Data("g", dtype="int")
        a = kq.Global("a", kq.Normal(0.0, 1.0), shape=(4,))
        kq.Observed("y", kq.Normal(a[g] - kq.mean(a, 0), 0.3))  # a also read whole
    assert new_levels(model) == {}


def test_an_index_read_only_by_a_deterministic_is_range_checked(grouped_fit):
    with kq.Model("m") as model:
        g = kq.Data("g", dtype="int")
        h = kq.Data("h", dtype="int")
        a = kq.Global("a", kq.Normal(0.0, 1.0), shape=(3,))
        kq.Deterministic("ah", a[h])
        kq.Observed("y", kq.Normal(a[g], 1.0))
    r = kq.fit(model, {"g": np.array([0, 1, 2]), "h": np.array([0, 1, 2]),
                       "y": np.zeros(3)}, backend=BACKENDS[0], steps=5, batch_size=3,
               progress=False)
    with pytest.raises(ValueError, match="column 'h' holds 7"):
        r.predict({"g": np.array([0]), "h": np.array([7])}, num_samples=2)


def test_fit_locals_works_for_a_model_with_its_own_total_size():
    from hierarchical import make_data

    with kq.Model("sized", total_size=300) as model:
        x = kq.Data("x")
        theta = kq.Global("theta", kq.Normal(0.0, 1.0))
        z = kq.Local("z", kq.Normal(theta * x, 0.7))
        kq.Observed("y", kq.Normal(z, 1.0))
    data, _ = make_data(305)
    train = {k: v[:300] for k, v in data.items()}
    r = kq.fit(model, train, backend=BACKENDS[0], steps=30, batch_size=100, progress=False)
    q = r.fit_locals({k: v[300:] for k, v in data.items()})
    assert q["z"]["loc"].shape == (5,)


def test_a_deterministic_changes_neither_the_compiled_program_nor_a_checkpoint(tmp_path):
    from klqp.cache import structure_key

    def declare(named):
        with kq.Model("m") as model:
            x = kq.Data("x")
            w = kq.Global("w", kq.Normal(0.0, 1.0))
            if named:
                kq.Deterministic("wx", w * x)
            kq.Observed("y", kq.Normal(w * x, 1.0))
        return model

    assert structure_key(declare(True)) == structure_key(declare(False))
    data = linear_data(60)
    path = tmp_path / "run.klqp"
    kq.fit(declare(False), data, backend=BACKENDS[0], steps=10, batch_size=20,
           checkpoint=str(path), checkpoint_every=5, progress=False)
    resumed = kq.fit(declare(True), data, backend=BACKENDS[0], steps=20, batch_size=20,
                     resume=str(path), progress=False)
    assert resumed.steps == 20 and resumed.sample("wx", 3).shape == (3, 60)


def test_mixture_draws_follow_the_mixture_density():
    params = {"w": np.array([0.3, 0.7]), "mu_0": -1.0, "sigma_0": 1.0, "mu_1": 2.0,
              "sigma_1": 0.5}
    draws = densities.sample("Mixture", params, np.random.default_rng(0), (200_000,),
                             component="Normal")
    density = lambda x: float(np.exp(densities.logpdf("Mixture", x, params, "Normal")))
    for power in (1, 2):
        exact = integrate.quad(lambda x: x ** power * density(x), -np.inf, np.inf)[0]
        sd = np.std(draws ** power) / np.sqrt(len(draws))
        assert abs(np.mean(draws ** power) - exact) <= 5 * sd
    counts = densities.sample("Mixture", {"w": np.array([0.5, 0.5]), "mu_0": 1.0, "mu_1": 9.0},
                              np.random.default_rng(1), (50_000,), component="Poisson")
    assert counts.dtype == np.int64 and abs(counts.mean() - 5.0) < 0.1
