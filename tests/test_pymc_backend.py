"""The PyMC backend's own promises: a real PyMC lowering, weights that never recompile, a
fit that converges, exact resume, streams with ragged and growing batches, modes that
agree, and clear errors. PyTensor compiles are the cost here, so compiled objects are
shared through module fixtures and small models."""

from __future__ import annotations

import gc
import os
import signal
import weakref

import numpy as np
import pytest

import klqp as kq
from klqp import schedules
from klqp.problem import make_problem
from klqp.results import HISTORY_KEYS
from models import draw_noise, hierarchical, random_params
from reference import reference_terms

pytestmark = pytest.mark.skipif("pymc" not in kq.backends.available(),
                                reason="the pymc backend is not installed")

BATCH = 40


def _normal_mean(n=50, seed=0):
    rng = np.random.default_rng(seed)
    with kq.Model("normal_mean") as model:
        mu = kq.Global("mu", kq.Normal(0.0, 5.0))
        kq.Observed("y", kq.Normal(mu, 2.0))
    return model, {"y": rng.normal(1.0, 2.0, size=n)}


@pytest.fixture(scope="module")
def weighted():
    """One compiled objective whose weights are a Shared and a schedule."""
    model, data = hierarchical()
    beta_local = kq.Shared(1.0)
    c = kq.compile(model, data, backend="pymc", batch_size=BATCH,
                   beta_global=schedules.linear_warmup(10, start=0.2), beta_local=beta_local,
                   likelihood_weight=0.9, scale_cost_to_minibatch=True)
    rng = np.random.default_rng(5)
    params = random_params(model, c.problem.total_size, rng)
    idx = rng.choice(c.problem.total_size, BATCH, replace=False)
    noise = draw_noise(model, BATCH, rng)
    return c, beta_local, params, idx, noise


def test_backend_is_registered_under_its_name():
    backend = kq.backends.get("pymc")
    assert backend.name == "pymc"
    assert type(backend).__name__ == "PyMCBackend"


def test_lowering_is_a_pymc_model_with_mean_field_groups(weighted):
    import pymc as pm
    from pymc.variational.approximations import MeanFieldGroup
    from pymc.variational.minibatch_rv import MinibatchRandomVariable
    from pymc.variational.operators import KL

    c, *_ = weighted
    lowered = c.lowered(BATCH)
    assert isinstance(lowered.pm_model, pm.Model)
    assert [rv.name for rv in lowered.pm_model.free_RVs] == ["theta", "sigma", "z"]
    # locals carry the batch's rows; the observation carries PyMC's own total_size scaling
    assert lowered.rvs["z"].type.shape == (BATCH,)
    y = lowered.pm_model.observed_RVs[0]
    assert isinstance(y.owner.op, MinibatchRandomVariable)
    # sigma > 0 is fitted in log space, as PyMC's own HalfNormal is
    assert isinstance(lowered.pm_model.rvs_to_transforms[lowered.rvs["sigma"]],
                      type(pm.distributions.transforms.log))
    assert set(lowered.groups) == {"global", "local"}
    assert all(isinstance(g, MeanFieldGroup) for g in lowered.groups.values())
    assert isinstance(lowered.objective.op, KL)
    assert type(lowered.objective.op).__name__ == "KlqpKL"
    assert lowered.approx.scale_cost_to_minibatch is True


def test_weights_change_without_recompiling(weighted):
    """A Shared value and a schedule's step reach the compiled loss; nothing recompiles."""
    c, beta_local, params, idx, noise = weighted
    try:
        for value in (1.0, 0.3, 2.5):
            beta_local.value = value
            for step in (0, 5, 40):
                got = c.terms(params, indices=idx, noise=noise, step=step)
                ref = reference_terms(c.problem, params, idx, noise, step=step)
                for key in ref:
                    np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, err_msg=key)
    finally:
        beta_local.value = 1.0
    assert dict(c.compiles) == {BATCH: 1}


def test_gradient_is_taken_with_respect_to_scale(weighted):
    """grad()['scale'] is d loss / d scale (not d / d rho): a finite difference in scale."""
    c, _, params, idx, noise = weighted
    g = c.grad(params, indices=idx, noise=noise)
    h = 1e-6
    for name, row in (("sigma", ()), ("z", (int(idx[0]),))):
        up = {k: {p: np.array(a, dtype=float) for p, a in q.items()} for k, q in params.items()}
        down = {k: {p: np.array(a, dtype=float) for p, a in q.items()} for k, q in params.items()}
        up[name]["scale"][row] += h
        down[name]["scale"][row] -= h
        loss = lambda p: c.loss(p, indices=idx, noise=noise)
        numeric = (loss(up) - loss(down)) / (2 * h)
        assert g[name]["scale"][row] == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_row_adam_is_the_numpyro_rule_and_ignores_padding():
    """klqp_pymc.optim.RowAdam against klqp_numpyro.optim (the rule both backends share):
    only the batch's rows move, with their own step counts; padded rows (mask 0, an index
    that repeats a real row) change nothing."""
    numpyro_optim = pytest.importorskip("klqp_numpyro.optim")
    import jax.numpy as jnp
    import pytensor
    import pytensor.tensor as pt
    from klqp_pymc.modes import compile_kwargs
    from klqp_pymc.optim import RowAdam

    n, lr, rng = 12, 0.1, np.random.default_rng(0)
    start = rng.normal(size=(n, 2))
    var = pytensor.shared(start.copy(), "var", shape=(n, 2))
    adam = RowAdam([var], n, lr)
    idx = pt.tensor("idx", dtype="int64", shape=(5,))
    grad = pt.tensor("grad", dtype="float64", shape=(5, 2))
    mask = pt.tensor("mask", dtype="float64", shape=(5,))
    step = pytensor.function([idx, grad, mask], [], updates=adam.updates([grad], idx, mask),
                             **compile_kwargs("jax"))
    ref_vars = {"var": jnp.asarray(start)}
    ref_state = numpyro_optim.row_adam_init(ref_vars, n)
    batches = [np.array([0, 3, 4, 7, 9]), np.array([3, 4, 5, 10, 11]), np.array([1, 3, 8, 8, 8])]
    for k, rows in enumerate(batches):
        real = 5 if k < 2 else 3  # the last batch: 3 real rows, padded with a repeat of row 8
        g = rng.normal(size=(5, 2))
        step(rows, g, (np.arange(5) < real).astype(float))
        ref_vars, ref_state = numpyro_optim.row_adam_update(
            {"var": jnp.asarray(g[:real])}, ref_state, ref_vars, jnp.asarray(rows[:real]), lr)
    value = lambda shared: np.asarray(shared.get_value())
    np.testing.assert_allclose(value(var), ref_vars["var"], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(value(adam.count), ref_state.count)
    np.testing.assert_allclose(value(adam.slots[0][1]), ref_state.mu["var"], rtol=1e-12)
    np.testing.assert_allclose(value(adam.slots[0][2]), ref_state.nu["var"], rtol=1e-12)
    untouched = [2, 6]
    np.testing.assert_array_equal(value(var)[untouched], start[untouched])


@pytest.fixture(scope="module")
def converged():
    """A hierarchical fit whose beta_local is a Shared lowered by a callback and whose
    likelihood weight warms up on a schedule. (beta_local stays >= T: with a learned noise
    scale, beta_local < T makes this objective unbounded, q(z_i) collapsing onto y_i.)"""
    model, data = hierarchical(n=200)
    beta = kq.Shared(1.5)
    seen = []

    def raise_beta(step, result):
        seen.append(step)
        beta.value = 1.0

    r = kq.fit(model, data, backend="pymc", steps=2000, batch_size=BATCH, beta_local=beta,
               likelihood_weight=schedules.linear_warmup(300, start=0.5),
               learning_rate=schedules.linear(0.03, 0.002, 2000), chunk_size=500,
               callbacks=[raise_beta], seed=3)
    return r, seen


def test_fit_compiles_once_while_weights_move(converged):
    r, seen = converged
    assert seen == [500, 1000, 1500, 2000]
    assert r.info["compiles"] == 1
    np.testing.assert_array_equal(r.history["beta_local"][:500], 1.5)
    np.testing.assert_array_equal(r.history["beta_local"][500:], 1.0)
    np.testing.assert_allclose(r.history["likelihood_weight"][:301],
                               0.5 + 0.5 * np.arange(301) / 300, rtol=1e-12)
    assert set(r.history) == set(HISTORY_KEYS)
    assert all(len(h) == 2000 for h in r.history.values())


def test_hierarchical_fit_converges(converged):
    """The data were made with theta = 1.5, sigma = 0.5 and z = 1.5 x + 0.7 eps."""
    r, _ = converged
    rng = np.random.default_rng(0)  # hierarchical()'s draws, in its order
    x = rng.normal(size=200)
    z_true = 1.5 * x + 0.7 * rng.normal(size=200)
    assert abs(float(r.mean("theta")) - 1.5) < 0.2
    assert 0.3 < float(r.mean("sigma")) < 0.75
    assert np.corrcoef(r.mean("z"), z_true)[0, 1] > 0.9
    assert r.std("z").shape == (200,) and np.all(r.std("z") < 0.7)
    elbo = r.history["elbo"]
    assert np.mean(elbo[-200:]) > np.mean(elbo[:10]) + 50  # converged within ~200 steps
    assert r.params["z"]["loc"].shape == (200,) and np.all(r.params["z"]["scale"] > 0)


@pytest.fixture(scope="module")
def resumable():
    model, data = hierarchical(n=120)
    fit = lambda **kw: kq.fit(model, data, backend="pymc", batch_size=30, learning_rate=0.02,
                              seed=4, chunk_size=40, **kw)
    return fit


def test_resume_continues_an_unbroken_run_exactly(resumable):
    whole = resumable(steps=250)
    first = resumable(steps=100)
    rest = resumable(steps=250, resume=first)  # in all
    assert rest.steps == 250 and rest.info["compiles"] == 0  # the compiled step was reused
    np.testing.assert_array_equal(rest.history["loss"], whole.history["loss"])
    assert list(rest.state.optimizer) == list(whole.state.optimizer)  # the same names
    for name, a in rest.state.optimizer.items():
        np.testing.assert_array_equal(a, whole.state.optimizer[name], err_msg=name)


def test_ctrl_c_stops_between_steps_and_resumes(resumable):
    """A real SIGINT during a fit: the state of the last whole step comes back, and
    resuming from it continues the unbroken run."""
    def interrupt(step, result):
        if step == 80:
            os.kill(os.getpid(), signal.SIGINT)

    cut = resumable(steps=200, callbacks=[interrupt])
    assert cut.interrupted and cut.steps == 80 and len(cut.history["loss"]) == 80
    rest = resumable(steps=200, resume=cut)  # in all
    whole = resumable(steps=200)
    np.testing.assert_array_equal(rest.history["loss"], whole.history["loss"])


def test_resume_rejects_a_state_of_another_shape():
    model, data = hierarchical(n=120)
    other = {k: v[:100] for k, v in data.items()}
    first = kq.fit(model, data, backend="pymc", steps=0, batch_size=30)
    with pytest.raises(ValueError, match="shape"):
        kq.fit(model, other, backend="pymc", steps=5, batch_size=30, resume=first)


def test_stream_pads_ragged_batches_and_grows_once():
    """Batches of 20, 25, 10 rows: the 25 recompiles once (b grows), the 10 is padded.
    With q held still (the plain rule: one draw, tiny Adam steps), each step's terms equal
    the NumPy reference on that step's rows, noise included (the noise is a function of
    (seed, step))."""
    from klqp_pymc.state import draw_noise as backend_noise

    model, data = hierarchical(n=60)
    bounds = [0, 20, 45, 55]
    batches = [{"x": data["x"][a:b], "y": data["y"][a:b], "row_index": np.arange(a, b)}
               for a, b in zip(bounds[:-1], bounds[1:])]
    weights = dict(beta_global=0.7, beta_local=1.3, likelihood_weight=0.9,
                   scale_cost_to_minibatch=True)
    r = kq.fit(model, batches, backend="pymc", total_size=60, steps=6, learning_rate=1e-12,
               seed=7, backend_options={"mode": "jax"}, local_step=None, global_step=None,
               **weights)
    assert r.info["compiles"] == 2 and r.info["batch_capacity"] == 25
    reference = make_problem(model, data, batch_size=20, **weights)
    init = kq.compile(model, data, backend="pymc", batch_size=20).init_params(seed=7)
    for step in range(6):
        rows = batches[step % 3]["row_index"]
        capacity = 20 if step == 0 else 25
        noise = {v.name: a[:len(rows)] if v.role == "local" else a for v, a in
                 zip(model.latents, backend_noise(reference, 7, step, capacity))}
        ref = reference_terms(reference, init, rows, noise, step=step)
        for key in ("loss", "loglik", "kl_global", "kl_local", "elbo"):
            np.testing.assert_allclose(r.history[key][step], ref[key], rtol=1e-8, err_msg=key)


def test_stream_errors_name_the_batch():
    model, data = hierarchical(n=60)
    too_big = [{"x": np.zeros(61), "y": np.zeros(61), "row_index": np.arange(61) % 60}]
    with pytest.raises(ValueError, match="more than total_size"):
        kq.fit(model, too_big, backend="pymc", total_size=60, steps=1)
    no_rows = [{"x": data["x"][:10], "y": data["y"][:10]}]
    with pytest.raises(ValueError, match="row_index"):
        kq.fit(model, no_rows, backend="pymc", total_size=60, steps=1)


def test_unknown_mode_is_refused(monkeypatch):
    model, data = _normal_mean()
    with pytest.raises(ValueError, match="numba"):
        kq.compile(model, data, backend="pymc", backend_options={"mode": "cuda"})
    monkeypatch.setenv("KLQP_PYMC_MODE", "fast")
    with pytest.raises(ValueError, match="KLQP_PYMC_MODE"):
        kq.fit(model, data, backend="pymc", steps=1)


def test_compile_needs_in_memory_data():
    model, data = _normal_mean()
    with pytest.raises(ValueError, match="in-memory"):
        kq.compile(model, [data], backend="pymc", total_size=50)


def test_modes_agree_and_the_cache_lets_models_go():
    """C and JAX compile the same graph and draw the same host-side randomness, so a fit
    is the same in both. The trainer cache must not keep a model alive."""
    model, data = _normal_mean()
    runs = {mode: kq.fit(model, data, backend="pymc", steps=30, batch_size=10, seed=2,
                         scale_cost_to_minibatch=True, backend_options={"mode": mode})
            for mode in ("c", "jax")}
    for key in ("loss", "elbo", "kl_global"):
        np.testing.assert_allclose(runs["jax"].history[key], runs["c"].history[key],
                                   rtol=1e-10, err_msg=key)
    assert runs["c"].info["mode"] == "c" and runs["jax"].info["mode"] == "jax"
    ref = weakref.ref(model)
    del model, runs
    gc.collect()
    assert ref() is None
