"""The agreement contract: with the same params, minibatch and noise, every installed
backend's loss equals the NumPy evaluation of docs/objective.md's formula (float64, relative
1e-6), and backends' gradients equal each other (relative 1e-5), including exact zeros
for local rows outside the minibatch."""

from __future__ import annotations

import numpy as np
import pytest

import klqp as kq
from models import ALL, draw_noise, random_params
from reference import reference_terms

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
WEIGHTS = [
    dict(beta_global=1.0, beta_local=1.0, likelihood_weight=1.0, scale_cost_to_minibatch=False),
    dict(beta_global=0.7, beta_local=1.3, likelihood_weight=0.9, scale_cost_to_minibatch=True),
    dict(beta_global=0.0, beta_local=2.5, likelihood_weight=1.7, scale_cost_to_minibatch=False),
]
BATCH = 40
# Every model under the non-trivial weights (index 1); all three weightings on the models
# where the weights meet every term (globals, locals, amortized locals, potentials). The
# weighting is klqp.objective.loss's arithmetic, the same for every model, and each
# weighting is a compile per model and backend.
ALL_WEIGHTS = ("hierarchical", "vector_locals", "vae", "array_ops")
CASES = [(name, wi) for name in sorted(ALL) for wi in range(len(WEIGHTS))
         if wi == 1 or name in ALL_WEIGHTS]


def _case(name, weights, seed=0):
    model, data = ALL[name]()
    n = len(next(iter(data.values())))
    rng = np.random.default_rng(seed)
    params = random_params(model, n, rng)
    idx = rng.choice(n, BATCH, replace=False)
    noise = draw_noise(model, BATCH, rng)
    return model, data, params, idx, noise


@pytest.fixture(scope="module")
def compiled():
    """One compile per (backend, model, weights), shared by the tests below."""
    cache = {}

    def get(backend, name, wi):
        key = (backend, name, wi)
        if key not in cache:
            model, data, params, idx, noise = _case(name, wi)
            c = kq.compile(model, data, backend=backend, batch_size=BATCH, **WEIGHTS[wi])
            cache[key] = (c, params, idx, noise)
        return cache[key]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, wi", CASES)
def test_loss_equals_numpy_formula(compiled, backend, name, wi):
    c, params, idx, noise = compiled(backend, name, wi)
    got = c.terms(params, indices=idx, noise=noise)
    ref = reference_terms(c.problem, params, idx, noise)
    for key in ("loss", "elbo", "loglik", "kl_global", "kl_local", "potential"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, atol=1e-9, err_msg=key)
    assert c.loss(params, indices=idx, noise=noise) == pytest.approx(ref["loss"], rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ALL))
def test_gradient_matches_finite_differences(compiled, backend, name):
    """The gradient is the loss's: central differences along a random direction."""
    c, params, idx, noise = compiled(backend, name, 1)
    g = c.grad(params, indices=idx, noise=noise)
    rng = np.random.default_rng(7)
    direction = {k: {p: rng.standard_normal(np.shape(a)) for p, a in q.items()}
                 for k, q in params.items()}
    h = 1e-5
    shifted = lambda sign: {k: {p: a + sign * h * direction[k][p] for p, a in q.items()}
                            for k, q in params.items()}
    numeric = (c.loss(shifted(1), indices=idx, noise=noise)
               - c.loss(shifted(-1), indices=idx, noise=noise)) / (2 * h)
    analytic = sum(np.sum(g[k][p] * direction[k][p]) for k in g for p in g[k])
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_rows_outside_batch_get_zero_gradient(compiled, backend):
    c, params, idx, noise = compiled(backend, "vector_locals", 1)
    g = c.grad(params, indices=idx, noise=noise)
    outside = np.setdiff1d(np.arange(c.problem.total_size), idx)
    for name in ("u", "frac"):
        for p in ("loc", "scale"):
            assert g[name][p].shape == params[name][p].shape
            assert np.all(g[name][p][outside] == 0.0)
            assert np.all(np.abs(g[name][p][idx]).sum(axis=tuple(range(1, g[name][p].ndim))) > 0)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs two backends installed")
@pytest.mark.parametrize("name, wi", CASES)
def test_backends_agree_on_gradient(compiled, name, wi):
    grads = {}
    for backend in BACKENDS:
        c, params, idx, noise = compiled(backend, name, wi)
        grads[backend] = c.grad(params, indices=idx, noise=noise)
    first, *rest = BACKENDS
    for other in rest:
        for k in grads[first]:
            for p in grads[first][k]:
                a, b = grads[first][k][p], grads[other][k][p]
                scale = max(np.max(np.abs(a)), 1e-12)
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * scale,
                                           err_msg=f"{name} {k}.{p}: {other} vs {first}")


# -- one family at a time, to 1e-10 ----------------------------------------------------------
# A Global z with the family as its prior (continuous families; Normal for the counts) and
# an Observed y of the family whose parameters read z and a column m. The backends' loglik
# and kl_global are sums of their libraries' densities, so 1e-10 holds only if each row's
# is scipy.stats's to ~1e-10 (PyMC's float32 log 2 in HalfCauchy and JAX's betaln in
# NegativeBinomial2 were 1e-9 and 1e-7 off).
FAMILY_MODELS = {  # family: (prior of z, y's distribution given z and m, y's kind)
    "HalfCauchy": (kq.HalfCauchy(1.3), lambda z, m: kq.HalfCauchy(z * m), "positive"),
    "HalfStudentT": (kq.HalfStudentT(3.0, 0.8), lambda z, m: kq.HalfStudentT(2.5 + m, z),
                     "positive"),
    "Cauchy": (kq.Cauchy(0.5, 2.0), lambda z, m: kq.Cauchy(z * m, m), "real"),
    "Laplace": (kq.Laplace(-0.2, 1.5), lambda z, m: kq.Laplace(z * m, m), "real"),
    "Weibull": (kq.Weibull(1.7, 1.2), lambda z, m: kq.Weibull(z + m, m), "positive"),
    "Uniform": (kq.Uniform(0.2, 3.0), lambda z, m: kq.Uniform(-20.0, 20.0), "real"),
    "Dirichlet": (kq.Dirichlet([1.5, 2.0, 0.7]),
                  lambda z, m: kq.Dirichlet(5.0 * z * m[..., None] + 0.5), "simplex"),
    "MvNormal": (kq.Normal(0.0, 1.0),
                 lambda z, m: kq.MvNormal(z * m[..., None] + np.array([0.0, 1.0, -1.0]),
                                          kq.exp(z) * np.array([[1.0, 0.0, 0.0], [0.5, 1.2, 0.0],
                                                                [-0.3, 0.4, 0.7]])), "vector"),
    "NegativeBinomial": (kq.Normal(0.0, 1.0),
                         lambda z, m: kq.NegativeBinomial(3.0 * m * kq.exp(z), 0.5 + m), "count"),
    "ZeroInflatedPoisson": (kq.Normal(0.0, 1.0),
                            lambda z, m: kq.ZeroInflatedPoisson(kq.sigmoid(z), 3.0 * m), "count"),
    "ZeroInflatedNegativeBinomial": (
        kq.Normal(0.0, 1.0),
        lambda z, m: kq.ZeroInflatedNegativeBinomial(kq.sigmoid(z), 3.0 * m, 0.5 + m), "count"),
    "OrderedLogistic": (kq.Normal(0.0, 1.0),  # 4 labels; cutpoints read z too
                        lambda z, m: kq.OrderedLogistic(2.0 * z * m - 1.0,
                                                        z + np.array([-1.0, 0.2, 1.5])),
                        "ordinal"),
}


def _family_model(family, n=60, seed=0):
    rng = np.random.default_rng(seed)
    prior, likelihood, kind = FAMILY_MODELS[family]
    with kq.Model(f"one_{family}") as model:
        m = kq.Data("m")
        z = kq.Global("z", prior)
        kq.Observed("y", likelihood(z, m))
    y = {"positive": rng.uniform(0.05, 6.0, n), "real": 3.0 * rng.normal(size=n),
         "vector": rng.normal(size=(n, 3)), "simplex": rng.dirichlet([1.0, 2.0, 3.0], n),
         "count": rng.integers(0, 12, n), "ordinal": rng.integers(0, 4, n)}[kind]
    return model, {"m": rng.uniform(0.5, 2.0, n), "y": y}


@pytest.mark.slow  # a compile per family and backend; the fast suite covers every family
@pytest.mark.parametrize("backend", BACKENDS)  # through the more_families model at 1e-6
@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_family_log_density_equals_scipy(backend, family):
    model, data = _family_model(family)
    n = len(data["y"])
    rng = np.random.default_rng(1)
    params, noise, idx = random_params(model, n, rng), draw_noise(model, n, rng), np.arange(n)
    c = kq.compile(model, data, backend=backend, batch_size=n)
    got = c.terms(params, indices=idx, noise=noise)
    ref = reference_terms(c.problem, params, idx, noise)
    for key in ("loglik", "kl_global"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-12, err_msg=key)
