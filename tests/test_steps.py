"""The step rule (klqp.steps) on its own, in NumPy: the arithmetic both backends run."""

from __future__ import annotations

import math

import numpy as np
import pytest

import klqp as kq
from klqp import schedules, steps
from models import hierarchical, logistic, vae


@pytest.mark.parametrize("points", [2, 4, 8, 16])
def test_gauss_hermite_is_exact_to_its_degree(points):
    nodes, weights = steps.quadrature(1, points)
    x = nodes[:, 0]
    for k in range(2 * points):  # exact for polynomials of degree 2 * points - 1
        exact = 0.0 if k % 2 else float(math.prod(range(1, k, 2)))  # E xi^k = (k-1)!!
        # odd moments cancel to 0 between +-x nodes of size ~6^k: round-off scales with
        # sum w |x|^k, not with the moment
        size = float(weights @ np.abs(x) ** k)
        assert weights @ x**k == pytest.approx(exact, abs=1e-12 * max(1.0, size))


def test_cubature_rule_is_exact_to_degree_three():
    nodes, weights = steps.quadrature(3, 8)
    assert nodes.shape == (6, 3)
    np.testing.assert_allclose(weights @ nodes, 0.0, atol=1e-15)
    np.testing.assert_allclose((weights[:, None, None] * nodes[:, :, None] * nodes[:, None, :]).sum(0),
                               np.eye(3), atol=1e-15)
    assert np.allclose(weights @ nodes**3, 0.0)


def _gaussian_row(y, prior_mean, noise_sd, prior_sd, T, beta):
    """l(u) = T log N(y | u, noise_sd) + beta log N(u | prior_mean, prior_sd), and the
    optimum of E_q l + beta log s over q = N(m, s^2), in closed form."""
    precision = T / noise_sd**2 + beta / prior_sd**2
    mean = (T * y / noise_sd**2 + beta * prior_mean / prior_sd**2) / precision
    return mean, np.sqrt(beta / precision), precision


@pytest.mark.parametrize("T, beta", [(1.0, 1.0), (0.5, 2.0), (3.0, 0.25)])
def test_one_newton_iteration_is_the_closed_form_for_a_gaussian_conditional(T, beta):
    rng = np.random.default_rng(0)
    y, prior_mean = rng.normal(size=(5, 1)) * 3, rng.normal(size=(5, 1))
    mean, sd, precision = _gaussian_row(y, prior_mean, 0.5, 0.8, T, beta)
    loc, log_scale = rng.normal(size=(5, 1)), np.log(rng.uniform(0.05, 2.0, size=(5, 1)))
    # E[l'] at q for this quadratic l, and E[l''] (constant)
    grad = precision * (mean - loc)
    hess = np.full_like(loc, -precision)
    full = steps.newton_candidates(np, loc, log_scale, grad, hess, beta, max_change=1.0)[0]
    np.testing.assert_allclose(full[0], mean, rtol=1e-12)
    np.testing.assert_allclose(np.exp(full[1]), sd, rtol=1e-12)


def test_the_guard_keeps_a_row_where_every_candidate_is_worse():
    """A row at its optimum (or where every candidate overflows to NaN) stays put."""
    loc, log_scale = np.array([[1.0], [2.0]]), np.array([[0.0], [-1.0]])
    f_now = np.array([0.0, 0.0])
    best = (loc, log_scale, f_now)
    for cand in steps.newton_candidates(np, loc, log_scale, np.ones((2, 1)), -np.ones((2, 1)),
                                        1.0, 1.0):
        worse = steps.row_objective(np, np.array([[np.nan, -1.0]]), np.ones(1), cand[1], 0.0)
        best = steps.keep_better(np, best, (*cand, worse))
    np.testing.assert_array_equal(best[0], loc)
    np.testing.assert_array_equal(best[1], log_scale)


def test_non_concave_rows_take_a_natural_gradient_step_and_keep_their_scale():
    loc, log_scale = np.zeros((1, 1)), np.log(np.full((1, 1), 0.5))
    full = steps.newton_candidates(np, loc, log_scale, np.full((1, 1), 2.0), np.full((1, 1), 3.0),
                                   1.0, 10.0)[0]
    assert full[0].item() == pytest.approx(0.5**2 * 2.0)  # s^2 * E[l'] / beta
    assert full[1].item() == log_scale.item()


def test_zero_local_kl_weight_shrinks_the_scale_without_nan():
    """beta_local = 0 (a warm-up's start): the optimal scale is 0; the full candidate is
    NaN-free after the guard's -inf, the clipped ones shrink the scale by max_change."""
    loc, log_scale = np.zeros((1, 1)), np.zeros((1, 1))
    with np.errstate(divide="ignore"):
        cands = steps.newton_candidates(np, loc, log_scale, np.ones((1, 1)), -np.ones((1, 1)),
                                        0.0, 1.0)
    assert cands[1][1].item() == -1.0 and np.all(np.isfinite(cands[1][0]))


def test_global_rule_pieces():
    c = steps.curvature_average(np, np.array([4.0, 1.0]), np.array([np.inf, 3.0]), 0.5, 5)
    np.testing.assert_allclose(c, [4.0, 2.0])  # a non-finite batch leaves it unchanged
    c = steps.curvature_average(np, np.array([4.0]), np.array([1.0]), 0.1, 2)
    np.testing.assert_allclose(c, [3.0])  # step 2 of a 0.1 decay: the plain mean's weight 1/3
    loc = steps.natural_gradient_loc(np, np.array([0.0, 0.0, 0.0]), np.array([2.0, 2.0, 1e6]),
                                     np.array([4.0, -1.0, 1.0]), 0.5, np.array([9.0, 9.0, 9.0]),
                                     1.0)
    np.testing.assert_allclose(loc, [0.25, 9.0, 1.0])  # curvature <= 0: Adam's; clipped
    scale = steps.curvature_scale(np, np.array([4.0, 0.0, 1e-8]), 1.0, np.array([0.4, 0.4, 0.4]),
                                  np.array([7.0, 7.0, 7.0]), 1.0)
    np.testing.assert_allclose(scale, [0.5, 7.0, 0.4 * np.e])  # log scale moves <= 1


def test_the_dense_preconditioner_is_refreshed_every_dense_every_steps():
    """P^-1 is computed once every column has been seen (step D - 1), then every
    dense_every steps, and the step in between uses the last one: the inverse returned
    is dense_inverse of the matrix as it stood at the latest refresh."""
    size, every = 3, 4
    rule = kq.GlobalStep(dense_every=every)
    rng = np.random.default_rng(0)
    loc, scale, running = np.zeros(size), np.ones(size), np.zeros(size)
    matrix, inverse = np.zeros((size, size)), np.zeros((size, size))
    refreshed, last_matrix = [], None
    for step in range(20):
        a = rng.normal(size=(size, size))
        exact = a @ a.T + size * np.eye(size)  # this step's curvature, positive definite
        when = lambda ok, compute, keep: (refreshed.append(step) or compute()) if ok else keep
        loc, scale, running, matrix, inverse = steps.global_update(
            np, rule, step, 0.5, loc, scale, ascent=rng.normal(size=size),
            sample=np.diag(exact).copy(), running=running, beta_global=1.0,
            fallback_loc=loc, fallback_scale=scale, matrix=matrix,
            column=exact[:, step % size], inverse=inverse, when=when)
        if refreshed and refreshed[-1] == step:
            last_matrix = matrix.copy()
    assert refreshed == [2, 6, 10, 14, 18]
    np.testing.assert_allclose(inverse, steps.dense_inverse(np, last_matrix))
    np.testing.assert_allclose(inverse @ (0.5 * (last_matrix + last_matrix.T)), np.eye(size),
                               atol=1e-12)  # positive definite: the plain inverse


def test_the_curvature_step_never_makes_q_wider_than_a_known_prior():
    """Where the running curvature is positive but below the prior's (a noisy Hutchinson
    estimate), the scale stops at the prior's width, sqrt(beta / (beta / sigma^2)) =
    sigma; where it is not positive, Adam's values stand; without a known prior (floor
    0) nothing changes."""
    floor = np.array([1 / 4.0, 1 / 4.0, 0.0])  # N(0, 2) priors, then an unknown one
    beta = 0.5
    loc, scale = np.zeros(3), np.full(3, 0.1)
    new_loc, new_scale, *_ = steps.global_update(
        np, kq.GlobalStep(), 0, 1.0, loc, scale, ascent=np.array([0.01, 1.0, 0.01]),
        sample=np.array([1e-3, -1.0, 1e-3]), running=np.zeros(3), beta_global=beta,
        fallback_loc=np.full(3, 7.0), fallback_scale=np.full(3, 7.0), floor=floor)
    np.testing.assert_allclose(new_scale[0], 0.1 * np.e)  # toward sigma = 2, one clip
    assert new_scale[1] == 7.0 and new_loc[1] == 7.0      # c <= 0: Adam's
    np.testing.assert_allclose(new_loc[0], 0.01 / (beta / 4.0))  # m + g / (beta / sigma^2)
    np.testing.assert_allclose(new_loc[2], 1.0)                  # no floor: g / c clipped
    scale = np.full(3, 1.9)
    _, new_scale, *_ = steps.global_update(
        np, kq.GlobalStep(), 0, 1.0, loc, scale, ascent=np.zeros(3),
        sample=np.array([1e-3, 1e-3, 1e-3]), running=np.zeros(3), beta_global=beta,
        fallback_loc=loc, fallback_scale=scale, floor=floor)
    np.testing.assert_allclose(new_scale, [2.0, 2.0, 1.9 * np.e])  # sigma, sigma, unbounded


def test_local_and_global_step_settings_are_checked_before_compiling():
    model, data = hierarchical(n=50)
    bad = [
        (dict(local_step=kq.LocalStep), TypeError, "local_step="),
        (dict(local_step="newton"), TypeError, "local_step="),
        (dict(global_step="natural"), TypeError, "global_step="),
    ]
    for kwargs, error, words in bad:
        for backend in kq.backends.available():  # refused before the backend compiles
            with pytest.raises(error, match=words):
                kq.fit(model, data, backend=backend, steps=1, progress=False, **kwargs)
    for make, words in [(lambda: kq.LocalStep(points=1), "points=1"),
                        (lambda: kq.LocalStep(points=100), "points=100"),
                        (lambda: kq.LocalStep(iterations=0), "iterations=0"),
                        (lambda: kq.LocalStep(iterations=1.5), "iterations=1.5"),
                        (lambda: kq.LocalStep(max_change=-1.0), "max_change=-1.0"),
                        (lambda: kq.LocalStep(max_change=float("nan")), "max_change=nan"),
                        (lambda: kq.LocalStep(final_pass=-1), "final_pass=-1"),
                        (lambda: kq.GlobalStep(curvature_decay=0.0), "curvature_decay=0.0"),
                        (lambda: kq.GlobalStep(curvature_decay=1.5), "curvature_decay=1.5"),
                        (lambda: kq.GlobalStep(max_dim=64), "max_dim"),
                        (lambda: kq.GlobalStep(dense_every=0), "dense_every=0"),
                        (lambda: kq.GlobalStep(step_size=0.0), "step_size=0.0"),
                        (lambda: kq.GlobalStep(step_size=schedules.linear(0.0, 1.0, 10)),
                         "step_size"),
                        (lambda: kq.GlobalStep(average="yes"), "average='yes'"),
                        (lambda: kq.RowAdam(stl=1), "stl=1")]:
        with pytest.raises((ValueError, TypeError), match=words.replace("(", r"\(")):
            make()


def test_what_runs_for_each_model():
    """The local step runs only for free locals; a model without any gets none."""
    for build, expect in ((hierarchical, steps.LocalStep), (logistic, type(None)),
                          (vae, type(None))):
        model, _ = build()
        assert isinstance(steps.resolve_local_step("auto", model), expect)
    model, _ = hierarchical()
    assert steps.resolve_local_step(None, model) == kq.RowAdam(stl=False, scale_by_visits=False)
    layout = steps.local_layout(model, kq.LocalStep(points=6))
    assert layout.size == 1 and layout.num_nodes == 6
    # no fallback at any size: the curvature costs two Hessian-vector products whatever D is
    assert steps.GlobalStep().uses_curvature(64) and steps.GlobalStep().uses_curvature(10_000)
    assert not steps.GlobalStep(curvature=False).uses_curvature(10)


def test_explain_states_the_curvature_weight_this_fit_uses():
    """A full batch keeps curvature_decay; minibatches multiply it by min(rho_t, 1)."""
    with kq.Model("weight_text") as model:
        mu = kq.Global("mu", kq.Normal(0.0, 1.0), shape=(3,))
        kq.Observed("y", kq.Normal(kq.sum(mu), 1.0))
    full = str(kq.explain(model, total_size=1000, batch_size=1000))
    mini = str(kq.explain(model, total_size=1000, batch_size=100))
    assert "weight 0.1 on the newest, fixed for a full batch" in full
    assert "1 / sqrt(1 + t/50)" in full
    assert "weight 0.1 x min(step size, 1) on the newest, as there are minibatches" in mini
