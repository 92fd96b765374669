"""Long fits one can trust (klqp.guard, klqp.checkpoint), on every installed backend:
non-finite steps are not applied and a run of them stops the fit with the last good
state; checkpoints on disk resume bit for bit, also after SIGKILL, and refuse files
that belong to another fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import klqp as kq
from models import hierarchical

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
TESTS = Path(__file__).resolve().parent


def poisson(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    k = rng.poisson(np.exp(x @ np.array([0.5, -0.2, 0.3])))
    with kq.Model("poisson") as model:
        xd = kq.Data("x", shape=(3,))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(3,))
        kq.Observed("k", kq.Poisson(kq.exp(xd @ w)))
    return model, {"x": x, "k": k}


def _finite(result) -> bool:
    return all(np.isfinite(a).all() for p in result.params.values() for a in p.values())


# -- non-finite steps ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_of_nonfinite_steps_raises_with_the_last_good_state(backend):
    model, data = poisson()
    # Adam at 1000 sends the weights to ~1000 in one step; exp(x @ w) then overflows.
    with pytest.raises(kq.NonFiniteError) as info:
        kq.fit(model, data, backend=backend, steps=200, batch_size=30, learning_rate=1000.0,
               global_step=None, progress=False, max_nonfinite=7)
    err = info.value
    assert err.term == "loglik" and err.variable == "w"
    assert "step 1" in str(err) and "learning_rate" in str(err) and "'w'" in str(err)
    assert "takes Adam steps" in str(err)  # global_step=None: Adam's learning_rate drives w
    assert "takes Adam steps" in str(err)  # global_step=None: Adam drives w
    r = err.result
    assert r.steps == err.step == 1 and len(r.history["loss"]) == 1
    assert np.isfinite(r.history["loss"]).all() and _finite(r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolated_nonfinite_steps_are_skipped_counted_and_warned(backend):
    model, data = hierarchical(n=120)
    weight = kq.Shared(1.0, name="T")
    seen = {}

    def overflow_for_a_while(step, result):
        seen[step] = [np.array(a) for a in result.state.optimizer.values()]
        weight.value = 1e308 if step == 10 else 1.0  # T * loglik overflows on steps 10..19

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = kq.fit(model, data, backend=backend, steps=40, batch_size=20, chunk_size=10,
                   likelihood_weight=weight, callbacks=[overflow_for_a_while], progress=False)
    skipped = r.history["skipped"]
    assert skipped[10:20].tolist() == [1.0] * 10 and skipped.sum() == 10
    assert r.info["skipped_steps"] == 10 and r.steps == 40 and _finite(r)
    assert np.isfinite(r.history["loss"][20:]).all()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                and "non-finite" in str(w.message)]
    assert len(messages) == 1 and "10 non-finite step(s)" in messages[0] and "step 10" in messages[0]
    # nothing of the skipped steps was applied: the state after step 20 is that after step 10
    for a, b in zip(seen[10], seen[20]):
        np.testing.assert_array_equal(a, b)
    assert "last 100 applied steps" in r.summary()


def test_bad_guard_and_checkpoint_settings_are_refused_before_compiling(tmp_path):
    model, data = hierarchical(n=50)
    with pytest.raises(ValueError, match="max_nonfinite=0"):
        kq.fit(model, data, max_nonfinite=0)
    with pytest.raises(ValueError, match="checkpoint_every=.*needs checkpoint="):
        kq.fit(model, data, checkpoint_every=10)
    with pytest.raises(ValueError, match="checkpoint_every=-1"):
        kq.fit(model, data, checkpoint=str(tmp_path / "a.klqp"), checkpoint_every=-1)
    with pytest.raises(ValueError, match="folder does not exist"):
        kq.fit(model, data, checkpoint=str(tmp_path / "nope" / "a.klqp"))
    with pytest.raises(kq.CheckpointError, match="no checkpoint at"):
        kq.fit(model, data, resume=str(tmp_path / "missing.klqp"))


# -- checkpoints ------------------------------------------------------------------------------

def _assert_same(a, b):
    assert a.steps == b.steps
    for k in a.params:
        for q in a.params[k]:
            np.testing.assert_array_equal(a.params[k][q], b.params[k][q], err_msg=f"{k}.{q}")
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    assert list(a.state.optimizer) == list(b.state.optimizer)  # the same names, in order
    for name in a.state.optimizer:
        np.testing.assert_array_equal(a.state.optimizer[name], b.state.optimizer[name],
                                      err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpointed_run_resumes_bit_for_bit(backend, tmp_path):
    model, data = hierarchical(n=100)
    kw = dict(backend=backend, batch_size=20, seed=3, progress=False, checkpoint_every=30)
    unbroken = kq.fit(model, data, steps=150, checkpoint=tmp_path / "full.klqp", **kw)
    path = tmp_path / "run.klqp"
    cut = kq.fit(model, data, steps=150, checkpoint=path, callbacks=[_stop_at(90)], **kw)
    assert cut.steps == 90 and kq.load_result(path).steps == 90
    model2, _ = hierarchical(n=100)  # a new process would build its model again
    resumed = kq.fit(model2, data, steps=150, checkpoint=path, resume=path, **kw)
    _assert_same(unbroken, resumed)
    _assert_same(unbroken, kq.load_result(path))
    saved = kq.load_result(tmp_path / "full.klqp")
    assert saved.model.to_dict() == model.to_dict() and saved.backend == backend
    np.testing.assert_array_equal(saved.mean("z"), unbroken.mean("z"))
    assert "theta" in saved.summary()


def _stop_at(step):
    def callback(s, result):
        if s >= step:
            raise StopIteration
    return callback


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_refuses_another_model_data_backend_or_seed(backend, tmp_path):
    model, data = hierarchical(n=60)
    path = tmp_path / "run.klqp"
    kq.fit(model, data, backend=backend, steps=20, batch_size=20, checkpoint=path,
           progress=False)
    other_backend = [b for b in kq.backends.available() if b != backend]
    cases = [(dict(model=poisson()[0], data=poisson()[1]), "another model"),
             (dict(data={"x": data["x"], "y": data["y"] + 1.0}), "another data"),
             (dict(seed=5), "another seed")]
    if other_backend:
        cases.append((dict(backend=other_backend[0]), "another backend"))
    for change, what in cases:
        kw = dict(model=model, data=data, backend=backend, steps=40, batch_size=20, seed=0,
                  progress=False, resume=path)
        kw.update(change)
        with pytest.raises(kq.CheckpointError, match=what):
            kq.fit(kw.pop("model"), kw.pop("data"), **kw)
    with pytest.raises(ValueError, match="at step 20, past steps=10"):
        kq.fit(model, data, backend=backend, steps=10, batch_size=20, resume=path)


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    model, data = hierarchical(n=60)
    path = tmp_path / "run.klqp"
    kq.fit(model, data, steps=20, batch_size=20, checkpoint=path, progress=False)
    blob = path.read_bytes()
    (tmp_path / "truncated.klqp").write_bytes(blob[: len(blob) // 2])
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0xFF
    (tmp_path / "flipped.klqp").write_bytes(bytes(flipped))
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    (tmp_path / "text.klqp").write_text("not a checkpoint")
    for name in ("truncated.klqp", "flipped.klqp", "foreign.npz", "text.klqp"):
        with pytest.raises(kq.CheckpointError, match="not a|corrupt|incomplete|readable"):
            kq.load_result(tmp_path / name)
        with pytest.raises(kq.CheckpointError):
            kq.fit(model, data, steps=40, batch_size=20, resume=tmp_path / name)
    # a version 1 file (its state stored by position) is refused with the reason
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    meta = json.loads(entries["meta"].tobytes().decode())
    entries["meta"] = np.frombuffer(json.dumps({**meta, "version": 1}).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **entries)
    with pytest.raises(kq.CheckpointError, match="version 1 checkpoint, which stored the fit's "
                                                 "state by position"):
        kq.fit(model, data, steps=40, batch_size=20, resume=tmp_path / "old.npz")
    # the good file still loads, and no temporary file was left beside it
    assert kq.load_result(path).steps == 20
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nonfinite_stop_writes_the_last_good_state(backend, tmp_path):
    model, data = poisson()
    path = tmp_path / "run.klqp"
    with pytest.raises(kq.NonFiniteError) as info:
        kq.fit(model, data, backend=backend, steps=100, batch_size=30, learning_rate=1000.0,
               global_step=None, progress=False, max_nonfinite=5, checkpoint=path)
    saved = kq.load_result(path)
    assert saved.steps == info.value.result.steps == 1 and _finite(saved)


KILLED = """
import os, sys
os.environ.setdefault("JAX_ENABLE_X64", "1")
sys.path.insert(0, {tests!r})
import klqp as kq
from models import hierarchical
model, data = hierarchical(n=400)
kq.fit(model, data, backend={backend!r}, steps={steps}, batch_size=40, seed=7,
       checkpoint={path!r}, checkpoint_every=50, progress=False,
       callbacks=[lambda step, r: print("at", step, flush=True)])
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_run_then_resume_equals_an_unbroken_run(backend, tmp_path):
    steps = 20_000  # far more than the test waits for: the process is killed mid-run
    path = tmp_path / "run.klqp"
    script = KILLED.format(tests=str(TESTS), backend=backend, steps=steps, path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("at") and int(line.split()[1]) >= 150:
                break
        assert proc.poll() is None, f"the fit ended early: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    at = kq.load_result(path).steps
    assert 100 <= at < steps and at % 50 == 0
    end = at + 100
    model, data = hierarchical(n=400)
    kw = dict(backend=backend, batch_size=40, seed=7, checkpoint_every=50, progress=False)
    resumed = kq.fit(model, data, steps=end, checkpoint=path, resume=path, **kw)
    unbroken = kq.fit(model, data, steps=end, checkpoint=tmp_path / "unbroken.klqp", **kw)
    _assert_same(unbroken, resumed)
