"""Several devices and hosts (NumPyro backend, ``backend_options={"devices": k}``):
the same parameters on 1, 2 and 8 virtual CPU devices and on two processes x two
devices (gloo collectives) as on one device, and no collective over an N-sized array in
the compiled chunk. Virtual devices must exist before JAX starts, so the fits run in a
fresh process (tests/sharding_worker.py). Virtual devices share the cores: nothing here
is timed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import klqp as kq
from models import hierarchical

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "sharding_worker.py"
pytestmark = [pytest.mark.slow,  # subprocesses with 1-8 CPU devices each
              pytest.mark.skipif("numpyro" not in kq.backends.available(),
                                 reason="needs the NumPyro backend")]


def _env(devices: int) -> dict:
    env = dict(os.environ, CI="true", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("JAX_ENABLE_X64", None)
    return env


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """Parquet files of the mixed model's rows, or None without pyarrow."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    folder = tmp_path_factory.mktemp("parquet")
    subprocess.run([sys.executable, str(WORKER), "write", str(folder)], env=_env(1), cwd=TESTS,
                   check=True, timeout=300)
    return folder


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, parquet_dir):
    out = tmp_path_factory.mktemp("sharding") / "fits.npz"
    extra = [] if parquet_dir is None else [str(parquet_dir)]
    proc = subprocess.run([sys.executable, str(WORKER), "devices", str(out), *extra],
                          env=_env(8), cwd=TESTS, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(str(out) + ".json") as fh:
        report = json.load(fh)
    return np.load(out), report


def _fits(saved, name: str) -> dict:
    return {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(name + "/")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["d2", "d8"])
def test_two_and_eight_devices_give_the_one_device_parameters(eight_devices, name):
    saved, report = eight_devices
    assert report["devices"] == 8
    one, sharded = _fits(saved, "default"), _fits(saved, name)
    assert set(one) == set(sharded)
    # globals, the free local's N-row table (z), the encoder's weights and the loss history
    assert {"theta.loc", "sigma.scale", "z.loc", "z.scale", "enc_W0.value",
            "history.loss"} <= set(one)
    for key in one:
        assert one[key].shape == sharded[key].shape, key
        assert _rel(sharded[key], one[key]) < 1e-6, key
    # the fit moved: the parameters are not their initial values
    assert abs(float(one["theta.loc"]) - 1.5) < 0.1


@pytest.mark.slow
def test_a_checkpoint_from_two_devices_resumes_on_eight(eight_devices):
    saved, _ = eight_devices
    one, resumed = _fits(saved, "default"), _fits(saved, "resumed_d2_d8")
    assert set(one) == set(resumed)
    for key in one:
        assert _rel(resumed[key], one[key]) < 1e-6, key


@pytest.mark.slow
def test_row_adam_rule_on_eight_devices(eight_devices):
    saved, _ = eight_devices
    one, sharded = _fits(saved, "rowadam_default"), _fits(saved, "rowadam_d8")
    for key in one:
        assert _rel(sharded[key], one[key]) < 1e-6, key


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["auto", "rowadam"])
def test_no_collective_over_an_n_sized_dimension(eight_devices, rule):
    """Each device holds ceil(N/8) = 501 rows; a step moves b = 40 rows, so every
    collective of the compiled chunk has dimensions far below 501."""
    _, report = eight_devices
    ops = report[rule]
    assert ops, "the sharded chunk must communicate (its gradients, its batch rows)"
    assert {op for op, _ in ops} >= {"all-gather", "reduce-scatter"}  # the batch's rows
    largest = max((max(d) for _, dims in ops for d in dims if d), default=0)
    assert largest < report["rows_per_device"], ops


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_streamed_fit_on_two_devices(eight_devices, parquet_dir):
    if parquet_dir is None:
        pytest.skip("needs pyarrow")
    saved, _ = eight_devices
    one, sharded = _fits(saved, "stream_default"), _fits(saved, "stream_d2")
    assert one and set(one) == set(sharded)
    for key in one:
        assert _rel(sharded[key], one[key]) < 1e-6, key


@pytest.mark.slow
def test_two_processes_of_two_devices_agree_with_one_process(eight_devices, parquet_dir,
                                                              tmp_path):
    """In memory, and streamed from Parquet with each process reading its own row
    groups (against one process fed both processes' batches)."""
    saved, _ = eight_devices
    out, port = tmp_path / "processes.npz", _free_port()
    extra = [] if parquet_dir is None else [str(parquet_dir)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "process", str(pid), str(port),
                               str(out), *extra], env=_env(2), cwd=TESTS, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)
    two = dict(np.load(out))
    for name, prefix in (("default", ""), ("stream_default", "stream/")):
        one = _fits(saved, name)
        if not one:
            continue  # no pyarrow: no streamed fits
        theirs = {k[len(prefix):]: v for k, v in two.items() if k.startswith(prefix)
                  and (prefix or "/" not in k)}
        assert set(theirs) == set(one), name
        for key in one:
            assert _rel(theirs[key], one[key]) < 1e-6, (name, key)


# -- refusals, before anything compiles ---------------------------------------------------

def test_pymc_refuses_several_devices():
    if "pymc" not in kq.backends.available():
        pytest.skip("needs the PyMC backend")
    model, data = hierarchical(n=40)
    with pytest.raises(ValueError, match=r"devices.*=2.*one device.*backend='numpyro'"):
        kq.fit(model, data, backend="pymc", batch_size=10, steps=2, progress=False,
               backend_options={"devices": 2})


@pytest.mark.parametrize("devices, match", [
    (0, r"devices'\]=0: this JAX has \d+ .* device"),
    (10_000, r"devices'\]=10000: this JAX has"),
    ("2", r"must be a number of devices"),
    (True, r"must be a number of devices"),
    ([1, 2], r"list of jax.Device"),
])
def test_bad_devices_option(devices, match):
    model, data = hierarchical(n=40)
    with pytest.raises((ValueError, TypeError), match=match):
        kq.fit(model, data, backend="numpyro", batch_size=10, steps=2, progress=False,
               backend_options={"devices": devices})


def test_one_device_option_equals_the_default():
    model, data = hierarchical(n=60)
    a = kq.fit(model, data, backend="numpyro", batch_size=12, steps=20, progress=False, seed=1)
    b = kq.fit(model, data, backend="numpyro", batch_size=12, steps=20, progress=False, seed=1,
               backend_options={"devices": 1})
    for name, p in a.params.items():
        for q, arr in p.items():
            np.testing.assert_allclose(b.params[name][q], arr, rtol=1e-6, err_msg=name)


def test_a_misspelt_backend_option_lists_the_right_ones():
    model, data = hierarchical(n=40)
    with pytest.raises(ValueError, match=r"'device' is not an option of the 'numpyro' backend.*"
                                         r"'devices', 'local_table', 'table_dir'"):
        kq.fit(model, data, backend="numpyro", batch_size=10, steps=2, progress=False,
               backend_options={"device": 2})
