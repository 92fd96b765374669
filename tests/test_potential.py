"""kq.Potential: an extra log-density term, the objective's own term ``potential``.

Per row (it reads a Data column or a Local): the batch's sum scaled by N/b, like loglik;
global: added once. Weight 1 whatever beta and the likelihood weight are. The backends'
agreement with the NumPy formula on a model with both kinds: test_agreement.py
(tests/models.py's array_ops)."""

import warnings

import numpy as np
import pytest

import klqp as kq
from klqp.training import History

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
N = 50
RNG = np.random.default_rng(3)
DATA = {"x": RNG.normal(size=N), "y": RNG.normal(size=N) + 1.0}


def _normal(as_potential: bool, shrink: float = 0.0):
    """y ~ Normal(w x + c, 1), written as an Observed or as a per-row Potential of the
    same log density (y then a Data column); ``shrink``: a global Potential -shrink w^2."""
    with kq.Model("normal") as model:
        x = kq.Data("x")
        w = kq.Global("w", kq.Normal(0.0, 2.0))
        c = kq.Global("c", kq.Normal(0.0, 2.0))
        if as_potential:
            y = kq.Data("y")
            kq.Potential("lik", -0.5 * (y - w * x - c) ** 2 - 0.5 * np.log(2 * np.pi))
        else:
            kq.Observed("y", kq.Normal(w * x + c, 1.0))
        if shrink:
            kq.Potential("shrink", -shrink * w ** 2)
    return model


def _inputs(compiled, rows):
    params = compiled.init_params(seed=1)
    noise = {"w": 0.3, "c": -1.1}
    return params, dict(indices=rows, noise=noise)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_per_row_potential_is_its_own_term_scaled_like_loglik(backend):
    """The same log density as an Observed and as a Potential: the Observed's loglik is
    the Potential's potential, and loss and elbo are equal, at any batch and weights."""
    rows = np.arange(0, N, 5)  # b = 10 of 50: N/b = 5
    kw = dict(backend=backend, batch_size=10, beta=0.5, scale_cost_to_minibatch=True)
    observed = kq.compile(_normal(False), DATA, **kw)
    potential = kq.compile(_normal(True), DATA, **kw)
    params, at = _inputs(observed, rows)
    a, b = observed.terms(params, **at), potential.terms(params, **at)
    assert b["loglik"] == 0.0 and a["potential"] == 0.0
    assert b["potential"] == pytest.approx(a["loglik"], rel=1e-12)
    for k in ("loss", "elbo", "kl_global"):
        assert b[k] == pytest.approx(a[k], rel=1e-12), k
    # a likelihood weight T applies to loglik, not to a potential (weight 1)
    tempered = kq.compile(_normal(True), DATA, likelihood_weight=0.25, **kw)
    assert tempered.terms(params, **at)["loss"] == pytest.approx(b["loss"], rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_global_potential_is_added_once_whatever_the_batch(backend):
    rows = np.arange(10)
    terms = {}
    for shrink in (0.0, 0.7):
        c = kq.compile(_normal(False, shrink), DATA, backend=backend, batch_size=10)
        params, at = _inputs(c, rows)
        terms[shrink] = c.terms(params, **at)
    w = params["w"]["loc"] + params["w"]["scale"] * 0.3  # q's draw of w at this noise
    assert terms[0.7]["potential"] == pytest.approx(-0.7 * w ** 2, rel=1e-12)
    assert terms[0.7]["loss"] - terms[0.0]["loss"] == pytest.approx(0.7 * w ** 2, rel=1e-10)
    assert terms[0.7]["elbo"] - terms[0.0]["elbo"] == pytest.approx(-0.7 * w ** 2, rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_of_potentials_alone_fits_and_reports_its_term(backend):
    """A custom likelihood as a Potential (no Observed) fits to the Observed model's
    answer; held-out scores need an Observed, and say so."""
    fits = {}
    for as_potential in (False, True):
        fits[as_potential] = kq.fit(_normal(as_potential, 0.1), DATA, backend=backend,
                                    batch_size=25, steps=400, seed=0, progress=False)
    a, b = fits[False], fits[True]
    for name in ("w", "c"):
        assert b.mean(name) == pytest.approx(a.mean(name), abs=1e-6)
    assert np.all(b.history["loglik"] == 0.0) and np.all(b.history["potential"] < 0.0)
    assert "potential" in b.summary()
    assert b.elbo(num_samples=8)["potential"] < 0.0
    with pytest.raises(ValueError, match="has no kq.Observed.*kq.Potential is an unnormalized"):
        b.elpd(DATA, num_samples=10)


def test_explain_writes_out_the_potential_terms_and_their_factors():
    e = kq.explain(_normal(True, 0.5), total_size=N, batch_size=10, scale_cost_to_minibatch=True)
    assert e.coefficients["potential_rows"] == pytest.approx(1.0)    # s * N/b = 0.2 * 5
    assert e.coefficients["potential_global"] == pytest.approx(0.2)  # s
    text = str(e)
    assert "per row f_i = lik" in text and "global f = shrink" in text
    assert "- (N/b) * sum_B f_i(theta, z_i, x_i)" in text and "+ potential" in text


def test_potentials_are_checked_saved_and_part_of_the_compile_key():
    model = _normal(True, 0.5)
    again = kq.Model.from_json(model.to_json())
    assert again.to_json() == model.to_json()
    assert again["lik"].role == "potential" and again["lik"].per_row
    assert not again["shrink"].per_row
    from klqp.cache import structure_key
    assert structure_key(model) != structure_key(_normal(True, 0.0))
    with pytest.raises(kq.ModelError, match="Potential 'p': .* reads no variable"):
        with kq.Model("m"):
            kq.Potential("p", kq.exp(1.0))
    with pytest.raises(kq.ModelError, match="Potential 'p': its distribution reads 'v'"):
        with kq.Model("m"):
            w = kq.Global("w", kq.Normal(0.0, 1.0))
            kq.Potential("p", kq.column("v") * w)
    with pytest.raises(kq.ModelError, match="Potential 'p'.*does not keep the data axis"):
        with kq.Model("m"):
            x = kq.Data("x")
            kq.Potential("p", kq.sum(x, 0))
    with pytest.raises(kq.ModelError, match="already has a potential"):
        with kq.Model("m"):
            w = kq.Global("w", kq.Normal(0.0, 1.0))
            kq.Potential("p", w)
            kq.Potential("p", w)


def test_a_model_needs_an_observed_or_a_per_row_potential():
    with kq.Model("m") as only_global:
        w = kq.Global("w", kq.Normal(0.0, 1.0))
        kq.Potential("p", -w ** 2)
    with pytest.raises(kq.ModelError, match="no kq.Observed variable \\(nor a per-row"):
        kq.compile(only_global, {"x": np.zeros(3)})


def test_a_history_saved_before_the_potential_term_resumes_with_zeros():
    old = {"loss": np.array([3.0, 2.0]), "elbo": np.array([-3.0, -2.0])}
    h = History(("loss", "elbo", "potential"), previous=old)
    assert h.arrays()["potential"].tolist() == [0.0, 0.0] and len(h) == 2


def test_a_piecewise_linear_potential_is_fitted_by_adam_under_auto():
    """-|y - w x - b| / 0.5 as a Potential (a Laplace likelihood written out) has 0
    curvature almost everywhere: the curvature step left q's sds at the prior's 5.0.
    Under "auto" it takes Adam steps and matches the Laplace Observed's fit."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    data = {"x": x, "y": 1.5 * x + 0.3 + 0.5 * rng.laplace(size=400)}
    fits = {}
    for kind in ("observed", "potential"):
        with kq.Model(kind) as model:
            xd = kq.Data("x")
            w = kq.Global("w", kq.Normal(0.0, 5.0))
            b = kq.Global("b", kq.Normal(0.0, 5.0))
            if kind == "observed":
                kq.Observed("y", kq.Laplace(w * xd + b, 0.5))
            else:
                kq.Potential("lik", -kq.abs(kq.Data("y") - w * xd - b) / 0.5 - np.log(1.0))
        if kind == "potential":
            text = str(kq.explain(model, total_size=400, batch_size=100))
            assert "global_step='auto' chose Adam" in text and "lik" in text
        fits[kind] = kq.fit(model, data, backend=BACKENDS[0], steps=1500, batch_size=100,
                            seed=1, progress=False)
    for name in ("w", "b"):
        assert fits["potential"].mean(name) == pytest.approx(fits["observed"].mean(name), abs=1e-6)
        assert fits["potential"].std(name) == pytest.approx(fits["observed"].std(name), rel=1e-4)
        assert fits["potential"].std(name) < 0.05
