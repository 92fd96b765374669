"""A local table larger than the device (NumPyro, ``backend_options={"local_table":
"host"}``): the N-row table lives in memmap files, each chunk moves only its rows, and
the fit equals the in-device fit."""

from __future__ import annotations

import numpy as np
import pytest

import klqp as kq
from models import hierarchical, vector_locals

pytestmark = pytest.mark.skipif("numpyro" not in kq.backends.available(),
                                reason="needs the NumPyro backend")


def _same(a, b, exact=True):
    for name, p in a.params.items():
        for q, arr in p.items():
            if exact:
                np.testing.assert_array_equal(b.params[name][q], arr, err_msg=f"{name}.{q}")
            else:
                np.testing.assert_allclose(b.params[name][q], arr, rtol=1e-12, atol=1e-15,
                                           err_msg=f"{name}.{q}")
    np.testing.assert_array_equal(b.history["loss"], a.history["loss"])


# final_pass=0 reports the table itself (the final pass recomputes every row from the
# globals: for the conjugate hierarchical model it would hide a row written to the
# wrong place)
@pytest.mark.parametrize("local_step", ["auto", kq.LocalStep(final_pass=0), None],
                         ids=["local-step", "no-final-pass", "row-adam"])
@pytest.mark.parametrize("make", [hierarchical, vector_locals])
def test_host_table_fit_equals_the_in_device_fit(tmp_path, make, local_step):
    model, data = make()
    # chunks of 5 x 25 rows touch fewer rows than N (so rows are really renumbered), the
    # last one padded
    kw = dict(batch_size=25, steps=62, chunk_size=5, seed=5, local_step=local_step,
              progress=False)
    device = kq.fit(model, data, **kw)
    host = kq.fit(model, data, **kw, backend_options={"local_table": "host",
                                                       "table_dir": str(tmp_path)})
    # loc is moved as is; a reported scale read from the table is softplus(raw) by NumPy,
    # not XLA (1 ulp); the final pass computes it on the device
    _same(device, host, exact=local_step == "auto")
    files = [p.name for p in tmp_path.glob("klqp-table-*/*.npy")]
    assert "table-1.npy" in files  # memmap files, in a folder of the fit's own
    assert host.info["compiles"] == 1  # one compact-table size: one compile


def test_host_table_checkpoint_resumes(tmp_path):
    model, data = hierarchical()
    opts = {"local_table": "host"}
    kw = dict(batch_size=20, seed=1, progress=False, checkpoint_every=30, backend_options=opts)
    whole = kq.fit(model, data, steps=90, checkpoint=tmp_path / "a.klqp", **kw)
    kq.fit(model, data, steps=60, checkpoint=tmp_path / "b.klqp", **kw)
    resumed = kq.fit(model, data, steps=90, checkpoint=tmp_path / "b.klqp",
                     resume=tmp_path / "b.klqp", **kw)
    _same(whole, resumed)
    # and a checkpoint of the host table resumes on the device, the same numbers
    on_device = kq.fit(model, data, steps=90, batch_size=20, seed=1, progress=False,
                       checkpoint_every=30, checkpoint=tmp_path / "c.klqp",
                       resume=tmp_path / "b.klqp")
    _same(whole, on_device, exact=False)


@pytest.mark.parametrize("options, match", [
    ({"local_table": "disk"}, r"local_table'\]='disk' must be 'device' \(default\) or 'host'"),
    ({"table_dir": "/tmp"}, r"table_dir'\] is for local_table='host'"),
    ({"local_table": "host", "table_dir": "/no/such/folder"}, r"is not a folder"),
])
def test_bad_local_table_options(options, match):
    model, data = hierarchical(n=40)
    with pytest.raises(ValueError, match=match):
        kq.fit(model, data, batch_size=10, steps=2, progress=False, backend_options=options)


def test_host_table_needs_in_memory_data():
    model, data = hierarchical(n=40)
    batches = [{"x": data["x"][:20], "y": data["y"][:20], "row_index": np.arange(20)}]
    with pytest.raises(ValueError, match=r"local_table'\]='host' needs in-memory data"):
        kq.fit(model, batches, total_size=40, steps=2, progress=False,
               backend_options={"local_table": "host"})
