"""Training behaviour every backend owes the user: determinism, weights that change
without recompiling, resume, Ctrl-C, streamed batches with a ragged last batch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import klqp as kq
from klqp import schedules
from models import hierarchical

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


def _fit(backend, steps=200, **kw):
    model, data = kw.pop("built", None) or hierarchical(n=120)
    base = dict(backend=backend, steps=steps, batch_size=30, learning_rate=0.02, seed=0,
                chunk_size=50)
    return kq.fit(model, data, **{**base, **kw}), model, data


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows_rule", [kq.LocalStep(final_pass=0), None], ids=["local", "adam"])
def test_steps_take_the_rows_of_klqp_training_batch_rows(backend, rows_rule):
    """In-memory minibatches are klqp.training.batch_rows(seed, step): the same rows on
    every backend, uniform without replacement within an epoch (N = 100, b = 30: M = 3,
    10 rows sit out each epoch). The local step (without its final pass over all rows)
    and row-wise Adam move exactly the rows a step took."""
    from klqp.problem import init_params
    from klqp.training import batch_rows

    model, data = hierarchical(n=100)
    for steps, seed in ((2, 0), (4, 3)):  # the 4th step starts a new epoch
        r = kq.fit(model, data, backend=backend, steps=steps, batch_size=30, seed=seed,
                   chunk_size=3, progress=False, local_step=rows_rule)
        start = init_params(r.problem, seed, 0.1)
        moved = {i for v in model.free_locals
                 for i in np.flatnonzero(r.params[v.name]["loc"] != start[v.name]["loc"])}
        taken = {int(i) for t in range(steps) for i in batch_rows(seed, t, 100, 30)}
        assert moved == taken
        if steps == 2:
            assert len(taken) == 60  # no row twice within an epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_numbers(backend):
    built = hierarchical(n=120)
    a, *_ = _fit(backend, built=built)
    b, *_ = _fit(backend, built=built)
    c, *_ = _fit(backend, built=built, seed=1)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    np.testing.assert_array_equal(a.params["z"]["loc"], b.params["z"]["loc"])
    assert not np.allclose(a.history["loss"], c.history["loss"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_history_obeys_the_objective(backend):
    r, *_ = _fit(backend, beta_global=0.5, beta_local=schedules.linear_warmup(100),
                 likelihood_weight=0.8, scale_cost_to_minibatch=True)
    h = r.history
    assert all(len(h[k]) == 200 for k in h)
    # every step applied: a skipped (non-finite) step would leave its figures NaN
    assert r.info["skipped_steps"] == 0 and not h["skipped"].any()
    assert all(np.isfinite(h[k]).all() for k in ("loss", "loglik", "kl_global", "kl_local"))
    s = 30 / 120
    np.testing.assert_allclose(h["loss"], s * (-h["likelihood_weight"] * h["loglik"]
                                               + h["beta_global"] * h["kl_global"]
                                               + h["beta_local"] * h["kl_local"]), rtol=1e-9)
    np.testing.assert_allclose(h["elbo"], h["loglik"] - h["kl_global"] - h["kl_local"], rtol=1e-9)
    np.testing.assert_allclose(h["beta_local"], np.minimum(np.arange(200) / 100, 1.0), atol=1e-12)
    assert np.all(h["beta_global"] == 0.5) and np.all(h["likelihood_weight"] == 0.8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_changing_weights_never_recompiles(backend):
    beta = kq.Shared(0.1)
    seen = []

    def anneal(step, result):
        seen.append(step)
        beta.value = min(1.0, beta.value + 0.2)

    r, *_ = _fit(backend, steps=330, beta_global=beta, beta_local=schedules.sigmoid(100, 0.05),
                 likelihood_weight=schedules.cyclical(330, 3), callbacks=[anneal],
                 learning_rate=schedules.linear(0.02, 0.001, 330))
    assert seen == [50, 100, 150, 200, 250, 300, 330]
    # the Shared value in force during each chunk is recorded step by step
    np.testing.assert_allclose(r.history["beta_global"][:50], 0.1)
    np.testing.assert_allclose(r.history["beta_global"][50:100], 0.3)
    np.testing.assert_allclose(r.history["beta_global"][300:], 1.0)
    assert r.info["compiles"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_fit_of_the_same_structure_reuses_the_compiled_step(backend):
    """klqp.cache: a model declared again, with new data of the same shapes and another
    seed, runs on the program the first fit compiled, and gives the numbers a freshly
    compiled program gives."""
    import klqp.cache

    klqp.cache.clear()  # a test run before this one (in this process) may have compiled it
    kw = dict(backend=backend, steps=60, batch_size=30, chunk_size=30)
    first, *_ = _fit(**kw)
    again, *_ = _fit(built=hierarchical(n=120, seed=5), seed=3, **kw)  # new model and data
    assert first.info["compiles"] >= 1 and again.info["compiles"] == 0
    klqp.cache.clear()
    fresh, *_ = _fit(built=hierarchical(n=120, seed=5), seed=3, **kw)
    assert fresh.info["compiles"] >= 1
    np.testing.assert_array_equal(again.history["loss"], fresh.history["loss"])
    for name, p in fresh.params.items():
        for q, a in p.items():
            np.testing.assert_array_equal(again.params[name][q], a, err_msg=f"{name}.{q}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sweep_over_constant_weights_compiles_once(backend):
    """A constant weight is an argument of the compiled program, as a kq.Shared is: fits
    that differ only in beta or the likelihood weight (a beta-VAE sweep, a tempered
    posterior) share one program, and each gives the numbers a freshly compiled program
    gives for its own weights. A schedule of the step is compiled in: a new one compiles."""
    import klqp.cache

    klqp.cache.clear()
    kw = dict(steps=60, batch_size=30, chunk_size=30)
    first, *_ = _fit(backend, beta_local=1.0, **kw)
    swept, *_ = _fit(backend, beta_local=4.0, likelihood_weight=0.5, **kw)
    assert first.info["compiles"] >= 1 and swept.info["compiles"] == 0
    assert swept.history["beta_local"][-1] == 4.0 and swept.history["likelihood_weight"][0] == 0.5
    klqp.cache.clear()
    fresh, *_ = _fit(backend, beta_local=4.0, likelihood_weight=0.5, **kw)
    assert fresh.info["compiles"] >= 1
    np.testing.assert_array_equal(swept.history["loss"], fresh.history["loss"])
    for name, p in fresh.params.items():
        for q, a in p.items():
            np.testing.assert_array_equal(swept.params[name][q], a, err_msg=f"{name}.{q}")
    scheduled, *_ = _fit(backend, beta_local=schedules.linear_warmup(30), **kw)
    assert scheduled.info["compiles"] >= 1
    np.testing.assert_allclose(scheduled.history["beta_local"][:30], np.arange(30) / 30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_continues_an_unbroken_run(backend):
    built = hierarchical(n=120)
    whole, *_ = _fit(backend, built=built, steps=300)
    first, *_ = _fit(backend, built=built, steps=125)
    rest, *_ = _fit(backend, built=built, steps=300, resume=first)  # in all
    assert rest.steps == 300
    np.testing.assert_allclose(rest.history["loss"], whole.history["loss"], rtol=1e-9)
    for name in whole.params:
        for p in ("loc", "scale"):
            np.testing.assert_allclose(rest.params[name][p], whole.params[name][p], rtol=1e-9)


def test_resume_steps_count_in_all_and_the_old_meaning_is_refused():
    built = hierarchical(n=120)
    first, *_ = _fit("numpyro", built=built, steps=50)
    with pytest.raises(ValueError, match=r"steps=30 with resume= a FitResult at step 50: "
                                         r"steps counts the run's steps IN ALL.*steps=80"):
        _fit("numpyro", built=built, steps=30, resume=first)
    assert _fit("numpyro", built=built, steps=60, resume=first)[0].steps == 60


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_keeps_the_fitted_state(backend):
    def interrupt(step, result):
        if step == 100:
            raise KeyboardInterrupt

    r, *_ = _fit(backend, steps=400, callbacks=[interrupt])
    assert r.interrupted and r.steps == 100 and len(r.history["loss"]) == 100
    assert np.all(np.isfinite(r.mean("z")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_callback_can_stop_early(backend):
    def stop(step, result):
        if result.history["elbo"].size >= 150:
            raise StopIteration

    r, *_ = _fit(backend, steps=1000, callbacks=[stop])
    assert r.steps == 150 and not r.interrupted


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_scales_each_batch_by_its_own_size(backend):
    """A ragged last batch gets N/b_last. q is pinned (tiny scale, tiny Adam steps: the
    plain global rule, global_step=None) so each step's loglik must equal
    (N/b) * sum log p(y_i | mu0) for that step's rows."""
    rng = np.random.default_rng(0)
    n = 100
    y = rng.normal(1.0, 2.0, size=n)
    with kq.Model("normal") as model:
        mu = kq.Global("mu", kq.Normal(0.0, 5.0))
        kq.Observed("y", kq.Normal(mu, 2.0))
    sizes = [30, 30, 30, 10]
    bounds = np.cumsum([0] + sizes)
    batches = [{"y": y[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]
    r = kq.fit(model, batches, backend=backend, total_size=n, steps=8, learning_rate=1e-12,
               init_scale=1e-9, seed=0, scale_cost_to_minibatch=True, global_step=None)
    mu0 = r.params["mu"]["loc"]
    expected = [n / len(b["y"]) * stats.norm.logpdf(b["y"], mu0, 2.0).sum() for b in batches] * 2
    np.testing.assert_allclose(r.history["loglik"], expected, rtol=1e-6)
    s = np.array(sizes * 2) / n
    np.testing.assert_allclose(r.history["loss"], s * (-r.history["loglik"] + r.history["kl_global"]),
                               rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("local_step", ["auto", None], ids=["local", "adam"])
def test_stream_with_locals_updates_only_its_rows(backend, local_step):
    model, data = hierarchical(n=60)
    batches = [{"x": data["x"][i:i + 20], "y": data["y"][i:i + 20],
                "row_index": np.arange(i, i + 20)} for i in (0, 20)]
    r = kq.fit(model, batches, backend=backend, total_size=60, steps=10, learning_rate=0.05,
               seed=0, local_step=local_step)
    init = kq.compile(model, data, backend=backend, batch_size=20).init_params(seed=0)
    assert r.steps == 10
    np.testing.assert_array_equal(r.params["z"]["loc"][40:], init["z"]["loc"][40:])
    assert np.all(r.params["z"]["loc"][:40] != init["z"]["loc"][:40])
