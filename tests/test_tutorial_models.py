"""examples/tutorial_models.py: klqp's mixture, zero-inflated Poisson and ordinal fits
against NUTS on the same data and priors, on every installed backend."""

import pytest

import klqp as kq
from test_examples import load, run_docs_example  # the examples' loader, one copy

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


@pytest.fixture(scope="module")
def example():
    """The example, loaded once: its NUTS draws are computed once for every backend."""
    return load("tutorial_models")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_tutorial_models_match_nuts(example, backend, tmp_path, capsys):
    """With 2,000 rows, 1,500 steps of 256 (the docs' run; the example's default is 3,000)
    and seed 0, every global's q mean is within 0.2 NUTS sds of NUTS's mean, the issue's
    target. Measured: at most 0.15 (b1 of the zero-inflated Poisson, whose intercept and
    slope the posterior correlates), 0.06 or less for the mixture, 0.10 for the ordinal
    model, on both backends; NUTS's own Monte-Carlo error in its mean is about 0.03-0.05
    of its sd with 1,000 draws.

    q's sds: mean-field q cannot hold the posterior's correlations, so q sd / NUTS sd is
    below 1 by as much as the posterior correlates a number with the others (measured
    0.66 to 0.96). The example prints the ratio the exact mean-field optimum would have
    for a Gaussian posterior with NUTS's covariance; q's ratio is within 7 % of it for
    every number (the rest: non-Gaussian posteriors, NUTS's covariance from 1,000 draws),
    so the test holds it within 12 %, and the ratio itself in [0.6, 1.05]."""
    out, _, _ = run_docs_example("tutorial_models", backend, tmp_path, capsys)  # --steps 1500
    assert set(out) == {"mixture", "zero_inflated", "ordinal"}
    for model, res in out.items():
        assert res["params"], model
        for row in res["params"]:
            where = (model, row["param"])
            assert row["z"] <= 0.2, (where, row)
            assert 0.6 <= row["sd_ratio"] <= 1.05, (where, row)
            assert 0.88 <= row["sd_ratio"] / row["mean_field_ratio"] <= 1.12, (where, row)


@pytest.mark.slow
def test_three_component_mixture_matches_nuts(example):
    """``--components 3`` at seed 0 with 6,000 steps: means within 0.2 NUTS sd (measured
    at most 0.08), q sds as mean-field's (0.53 to 1.02 of NUTS's; within 7 % of the
    Gaussian mean-field ratio). Its objective has a local optimum (the top component wide
    and on the middle one) that some seeds reach; seed 0 does not, on either backend
    (measured; the test runs the first installed backend, as the two compute the same
    objective, which test_agreement holds for this model)."""
    out = example.main(["--backend", BACKENDS[0], "--model", "mixture",
                        "--components", "3", "--steps", "6000"])
    rows = out["mixture"]["params"]
    assert len(rows) == 8  # m0, 2 log_gaps, 2 a, 3 sigma
    for row in rows:
        assert row["z"] <= 0.2, row
        assert 0.45 <= row["sd_ratio"] <= 1.1, row
        assert 0.88 <= row["sd_ratio"] / row["mean_field_ratio"] <= 1.12, row
