"""kq.data.parquet: an out-of-core minibatch stream over Parquet row groups. Every row at
most once per epoch, the same steps on every process, a resume that skips whole windows
unread, only the asked-for columns, and real fits on both backends."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import klqp as kq  # noqa: E402
from klqp.problem import init_params  # noqa: E402
from models import hierarchical  # noqa: E402

BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
FILE_ROWS = (230, 170, 200)   # 600 rows; row groups of 40: 6 + 5 + 5 = 16, three short
GROUP_ROWS = 40


def write(folder, seed=0, row_id_type=pa.int64(), file_rows=FILE_ROWS):
    """Parquet files of shuffled rows: x = row_id / 2 (so a batch's columns can be checked
    against its ids), a vector column v and an integer g. Returns {row id: row group}."""
    folder.mkdir(exist_ok=True)
    ids = np.random.default_rng(seed).permutation(sum(file_rows))
    group_of, start, group = {}, 0, 0
    for f, n in enumerate(file_rows):
        part = ids[start:start + n]
        table = pa.table({
            "row_id": pa.array(part, type=row_id_type),
            "x": part / 2.0,
            "v": pa.FixedSizeListArray.from_arrays(np.repeat(part, 2) * 1.0, 2),
            "g": (part % 7).astype(np.int32)})
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=GROUP_ROWS)
        for i, r in enumerate(part):
            group_of[int(r)] = group + i // GROUP_ROWS
        group += -(-n // GROUP_ROWS)
        start += n
    return group_of


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("parquet") / "data"
    write(path)
    return path


def ids(batches):
    return np.concatenate([b["row_index"] for b in batches])


def test_an_epoch_takes_each_row_at_most_once_all_but_the_tail(folder):
    stream = kq.data.parquet(folder, batch_size=32, buffer_rows=100)
    assert stream.total_size == 600 and stream.steps_per_epoch(0) == 600 // 32
    first = list(iter(stream))
    assert len(first) == 18 and all(len(b["row_index"]) == 32 for b in first)
    for b in first:  # columns stay aligned with their row ids through the shuffle
        np.testing.assert_array_equal(b["x"], b["row_index"] / 2.0)
        np.testing.assert_array_equal(b["v"], np.stack([b["row_index"]] * 2, 1) * 1.0)
        assert b["row_index"].dtype == np.int64 and b["v"].shape == (32, 2)
    got = ids(first)
    assert len(np.unique(got)) == len(got) == 576 and got.max() < 600
    second = ids(iter(stream))                 # iter() again: the next epoch
    assert not np.array_equal(got, second) and len(np.unique(second)) == 576
    np.testing.assert_array_equal(ids(stream.epoch(1)), second)
    again = kq.data.parquet(folder, batch_size=32, buffer_rows=100)
    np.testing.assert_array_equal(ids(again), got)          # same seed, same order
    other = kq.data.parquet(folder, batch_size=32, buffer_rows=100, shuffle_seed=1)
    assert not np.array_equal(ids(other), got)


def test_windows_smaller_than_a_batch_still_give_full_batches(folder):
    stream = kq.data.parquet(folder, batch_size=100, buffer_rows=10, prefetch=False)
    batches = list(stream.epoch(2))
    assert [len(b["row_index"]) for b in batches] == [100] * 6
    assert len(np.unique(ids(batches))) == 600


@pytest.mark.parametrize("epoch", [0, 1, 4])
def test_two_processes_get_disjoint_rows_and_the_same_steps(tmp_path, epoch):
    group_of = write(tmp_path / "d")
    b, seed = 25, 3
    parts = [kq.data.parquet(tmp_path / "d", batch_size=b, buffer_rows=90, shuffle_seed=seed,
                             process=(p, 2)) for p in range(2)]
    batches = [list(s.epoch(epoch)) for s in parts]
    # the contract, from the files' metadata: groups permuted by (seed, 1, epoch), dealt
    # order[p::2]; each process runs min over processes of its rows // b steps
    rows = np.array([min(GROUP_ROWS, n - i) for n in FILE_ROWS for i in range(0, n, GROUP_ROWS)])
    order = np.random.default_rng([seed, 1, epoch]).permutation(len(rows))
    steps = min(rows[order[p::2]].sum() for p in range(2)) // b
    assert [len(x) for x in batches] == [steps, steps]
    assert parts[0].steps_per_epoch(epoch) == parts[1].steps_per_epoch(epoch) == steps
    got = [ids(x) for x in batches]
    assert not set(got[0]) & set(got[1])
    for p in range(2):
        assert len(np.unique(got[p])) == steps * b
        assert {group_of[int(r)] for r in got[p]} <= set(order[p::2].tolist())
    # the union is the epoch's rows but each process's dropped tail
    assert len(set(got[0]) | set(got[1])) == 600 - sum(rows[order[p::2]].sum() - steps * b
                                                       for p in range(2))


def test_batches_from_a_step_equal_a_replay_and_read_fewer_row_groups(folder):
    kw = dict(batch_size=32, buffer_rows=100)
    replay = kq.data.parquet(folder, **kw)
    reference = [b for _ in range(3) for b in iter(replay)]   # epochs 0, 1, 2
    per_epoch = [replay.steps_per_epoch(e) for e in range(3)]
    assert len(reference) == sum(per_epoch)
    for step in (7, per_epoch[0] + 5, per_epoch[0] + per_epoch[1] + 11):
        resumed = kq.data.parquet(folder, **kw).batches_from(step)
        for k in range(4):
            got, want = next(resumed), reference[step + k]
            assert sorted(got) == sorted(want)
            for col in want:
                np.testing.assert_array_equal(got[col], want[col])
        resumed.close()
    # without prefetch the reads are exact: step 12's rows (384..) lie past window 1
    stream = kq.data.parquet(folder, prefetch=False, **kw)
    where = stream.position(12)
    assert where["epoch"] == 0 and where["window"] >= 2 and json.dumps(where)
    it = stream.batches_from(12)
    next(it)
    from_zero = kq.data.parquet(folder, prefetch=False, **kw)
    walk = from_zero.batches_from(0)
    for _ in range(13):
        next(walk)
    assert 0 < stream.row_groups_read < from_zero.row_groups_read
    later = stream.position(per_epoch[0] + 3)
    assert (later["epoch"], later["step_in_epoch"]) == (1, 3)


def test_only_the_columns_asked_for_come_back(folder):
    stream = kq.data.parquet(folder, batch_size=50, columns=["x"])
    batch = next(iter(stream))
    assert sorted(batch) == ["row_index", "x"] and stream.columns == ["x"]
    full = kq.data.parquet(folder, batch_size=50)
    assert sorted(full.columns) == ["g", "v", "x"]
    narrow = full.with_columns(["g"])      # the same rows in the same order
    got, want = next(iter(narrow)), next(iter(full))
    assert sorted(got) == ["g", "row_index"] and full.select(["g"]).columns == ["g"]
    np.testing.assert_array_equal(got["row_index"], want["row_index"])
    np.testing.assert_array_equal(got["g"], want["g"])
    with pytest.raises(ValueError, match="'nope' is not in .*part-0.parquet"):
        kq.data.parquet(folder, batch_size=50, columns=["x", "nope"])
    with pytest.raises(ValueError, match="'nope'"):
        full.with_columns(["nope"])
    with pytest.raises(ValueError, match="row_index='id': .* has no such column"):
        kq.data.parquet(folder, batch_size=50, row_index="id")
    with pytest.raises(ValueError, match="batch_size=601 is more than"):
        kq.data.parquet(folder, batch_size=601)


def test_files_may_store_a_column_in_other_widths_and_as_lists(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    for f, kind in enumerate((np.float32, np.float64)):
        part = np.arange(50) + 50 * f
        pq.write_table(pa.table({"row_id": part.astype(np.int32), "x": part.astype(kind),
                                 "v": pa.array([[r, -r] for r in part.tolist()])}),
                       folder / f"{f}.parquet", row_group_size=20)
    stream = kq.data.parquet(folder, batch_size=10, buffer_rows=1000)  # one window
    # epoch 0 starts with a float32 row group (widened when a float64 one comes), 2 not
    batches = list(stream.epoch(0)) + list(stream.epoch(2))
    assert len(batches) == 20
    for b in batches:
        assert b["x"].dtype == np.float64 and b["v"].shape == (10, 2)
        np.testing.assert_array_equal(b["x"], b["row_index"])
        np.testing.assert_array_equal(b["v"], np.stack([b["row_index"], -b["row_index"]], 1))


def test_a_non_integer_row_id_column_is_refused(tmp_path):
    write(tmp_path / "f", row_id_type=pa.float64())
    with pytest.raises(ValueError, match="'row_id' of .* has type double; it must hold integers"):
        kq.data.parquet(tmp_path / "f", batch_size=10)


def test_state_is_json_and_says_what_the_stream_is(folder):
    stream = kq.data.parquet(folder, batch_size=32, process=(1, 2), shuffle_seed=5)
    state = json.loads(json.dumps(stream.state()))
    assert state["row_groups"] == [6, 5, 5] and state["rows"] == list(FILE_ROWS)
    assert state["total_size"] == 600 and state["process"] == [1, 2]
    assert (state["shuffle_seed"], state["batch_size"]) == (5, 32)
    assert [p.rsplit("/", 1)[-1] for p in state["paths"]] == [f"part-{i}.parquet"
                                                               for i in range(3)]


def test_closing_a_batch_iterator_stops_its_prefetch_thread(folder):
    def readers():
        return [t for t in threading.enumerate() if t.name.startswith("klqp-parquet")]

    it = kq.data.parquet(folder, batch_size=10, buffer_rows=50).batches_from(0)
    next(it)
    assert readers()
    it.close()
    assert not readers()


def test_klqp_imports_without_pyarrow_and_says_how_to_get_it(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.dataset", None)
    with pytest.raises(ImportError, match=r"pip install 'klqp\[parquet\]'"):
        kq.data.parquet(folder, batch_size=10)


def _fit_streamed(tmp_path, backend):
    """A fit on a Parquet stream is the fit on the same batches handed over as a list:
    the stream feeds exactly the batches it replays, in order, and the fit moves the
    local rows those batches hold and no other."""
    model, data = hierarchical(n=400)
    folder = tmp_path / "h"
    folder.mkdir()
    order = np.random.default_rng(1).permutation(400)   # shuffled once on disk
    for f, part in enumerate(np.array_split(order, 2)):
        table = pa.table({"row_id": part, "x": data["x"][part], "y": data["y"][part]})
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=50)
    stream = kq.data.parquet(folder, batch_size=40, buffer_rows=100)
    kw = dict(total_size=400, batch_size=40, backend=backend, steps=25, progress=False,
              local_step=kq.LocalStep(final_pass=0))
    result = kq.fit(model, stream, **kw)
    replay = kq.data.parquet(folder, batch_size=40, buffer_rows=100).batches_from(0)
    batches = [next(replay) for _ in range(25)]
    replay.close()
    listed = kq.fit(model, batches, **kw)
    assert result.steps == listed.steps == 25 and result.info["skipped_steps"] == 0
    assert np.isfinite(result.history["loss"]).all()
    for name in ("theta", "sigma", "z"):
        for part in ("loc", "scale"):
            np.testing.assert_allclose(result.params[name][part], listed.params[name][part],
                                       rtol=1e-12, atol=0, err_msg=f"{name}.{part}")
    taken = np.unique(np.concatenate([b["row_index"] for b in batches]))
    start = init_params(result.problem, 0, 0.1)["z"]["loc"]
    moved = np.flatnonzero(result.params["z"]["loc"] != start)
    np.testing.assert_array_equal(moved, taken)


@pytest.mark.skipif("numpyro" not in BACKENDS, reason="needs the NumPyro backend")
def test_a_streamed_fit_on_numpyro(tmp_path):
    _fit_streamed(tmp_path, "numpyro")


@pytest.mark.slow
@pytest.mark.skipif("pymc" not in BACKENDS, reason="needs the PyMC backend")
def test_a_streamed_fit_on_pymc(tmp_path):
    _fit_streamed(tmp_path, "pymc")


def _hierarchical_files(tmp_path, n=400, extra=False):
    model, data = hierarchical(n=n)
    folder = tmp_path / "h"
    folder.mkdir(exist_ok=True)
    order = np.random.default_rng(1).permutation(n)   # shuffled once on disk
    for f, part in enumerate(np.array_split(order, 2)):
        cols = {"row_id": part, "x": data["x"][part], "y": data["y"][part]}
        if extra:  # a column the model does not read
            cols["note"] = np.zeros(len(part))
        pq.write_table(pa.table(cols), folder / f"part-{f}.parquet", row_group_size=50)
    return model, folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpointed_stream_resumes_where_it_stood(tmp_path, backend):
    """A streamed fit cut at step 30 and resumed from its checkpoint file takes the same
    batches (batches_from, not the stream's start) and ends where an unbroken fit ends."""
    model, folder = _hierarchical_files(tmp_path)
    stream = lambda: kq.data.parquet(folder, batch_size=40, buffer_rows=100)  # noqa: E731
    kw = dict(backend=backend, progress=False, seed=4, checkpoint_every=10)
    whole = kq.fit(model, stream(), steps=50, checkpoint=tmp_path / "whole.klqp", **kw)
    kq.fit(model, stream(), steps=30, checkpoint=tmp_path / "cut.klqp", **kw)
    resumed = kq.fit(model, stream(), steps=50, checkpoint=tmp_path / "cut.klqp",
                     resume=tmp_path / "cut.klqp", **kw)
    assert resumed.steps == 50
    for name in ("theta", "sigma", "z"):
        for q in ("loc", "scale"):
            np.testing.assert_array_equal(resumed.params[name][q], whole.params[name][q])
    np.testing.assert_array_equal(resumed.history["loss"], whole.history["loss"])
    meta = kq.checkpoint.read(tmp_path / "cut.klqp").meta
    assert meta["data"]["stream"]["total_size"] == 400
    assert meta["stream_position"]["step"] == 50 and meta["stream_position"]["epoch"] == 5
    # another stream (another shuffle seed) is refused
    other = kq.data.parquet(folder, batch_size=40, buffer_rows=100, shuffle_seed=9)
    with pytest.raises(kq.checkpoint.CheckpointError, match="data"):
        kq.fit(model, other, steps=60, resume=tmp_path / "cut.klqp", backend=backend,
               progress=False, seed=4)


@pytest.mark.skipif("numpyro" not in BACKENDS, reason="needs the NumPyro backend")
def test_the_fit_reads_only_the_model_columns_and_takes_n_and_b_from_the_stream(tmp_path):
    model, folder = _hierarchical_files(tmp_path, extra=True)
    stream = kq.data.parquet(folder, batch_size=40)
    assert "note" in stream.columns
    result = kq.fit(model, stream, steps=5, progress=False)   # no total_size, no batch_size
    assert result.problem.total_size == 400 and result.problem.batch_size == 40
    assert result.problem.stream.columns == ["x", "y"]
    with kq.Model("needs_w") as other:
        x = kq.Data("x", shape=())
        w = kq.Data("w", shape=())
        theta = kq.Global("theta", kq.Normal(0.0, 1.0))
        kq.Observed("y", kq.Normal(theta * x + w, 1.0))
    with pytest.raises(ValueError, match=r"reads 'w' but the stream .* has no such column"):
        kq.fit(other, stream, steps=5, progress=False)
