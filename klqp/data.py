"""Out-of-core minibatch streams: ``kq.data.parquet(path, batch_size=...)`` reads Parquet
row groups through PyArrow Datasets, a few windows of rows at a time.

An epoch permutes the row groups (the same permutation on every process), deals them to
the processes (``groups[index::count]``), cuts each process's share into windows of about
``buffer_rows`` rows and shuffles the rows within each window: a bounded shuffle buffer,
so rows mix only within a window. Data written in some order (by time, by group) must be
shuffled on disk once. Every process runs the same number of full batches per epoch
(collectives never wait on a process that ran out), found from the files' metadata.

PyArrow is imported only when a stream is made (``pip install 'klqp[parquet]'``).
"""

from __future__ import annotations

import bisect
import os
import sys
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

import numpy as np

from .model import ROW_INDEX

__all__ = ["parquet", "ParquetStream", "group_order", "plan_windows", "rows_per_process"]

#: Rows per shuffle window unless told: 2**20, 8 MB per float64 column.
DEFAULT_BUFFER_ROWS = 2**20

_END = object()


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.dataset  # noqa: F401
    except ImportError as err:
        raise ImportError("kq.data.parquet needs PyArrow: pip install 'klqp[parquet]' "
                          f"(or pip install pyarrow); importing it failed: {err}") from None
    return pyarrow


def group_order(seed: int, epoch: int, num_groups: int) -> np.ndarray:
    """Epoch ``epoch``'s order of the row groups: the same on every process.

    >>> group_order(0, 1, 5).tolist() == group_order(0, 1, 5).tolist()
    True
    >>> sorted(group_order(0, 1, 5).tolist())
    [0, 1, 2, 3, 4]
    """
    return np.random.default_rng([seed, 1, epoch]).permutation(num_groups)


def rows_per_process(order: np.ndarray, group_rows: np.ndarray, count: int) -> np.ndarray:
    """Rows each of ``count`` processes gets when it takes ``order[index::count]``.

    >>> rows_per_process(np.array([2, 0, 1]), np.array([10, 20, 30]), 2).tolist()
    [50, 10]
    """
    return np.bincount(np.arange(len(order)) % count, weights=group_rows[order],
                       minlength=count).astype(np.int64)


def plan_windows(group_rows: Sequence[int], buffer_rows: int) -> list:
    """Cut consecutive row groups into windows of at least ``buffer_rows`` rows (the last
    may be smaller): a list of (first, end) positions.

    >>> plan_windows([4, 4, 4, 2], 6)
    [(0, 2), (2, 4)]
    >>> plan_windows([10, 3], 6)
    [(0, 1), (1, 2)]
    """
    windows, first, rows = [], 0, 0
    for i, n in enumerate(group_rows):
        rows += int(n)
        if rows >= buffer_rows:
            windows.append((first, i + 1))
            first, rows = i + 1, 0
    if first < len(group_rows):
        windows.append((first, len(group_rows)))
    return windows


def _positive_int(name, value, fix):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer; {fix}")
    return int(value)


def _default_process() -> tuple:
    """(jax.process_index(), jax.process_count()) when JAX is already imported, else
    (0, 1): a PyMC fit does not import JAX for this. Make the stream after
    ``jax.distributed.initialize``: asking JAX for the process count starts its backend."""
    jax = sys.modules.get("jax")
    if jax is None:
        return (0, 1)
    return (int(jax.process_index()), int(jax.process_count()))


def _check_process(process) -> tuple:
    if process is None:
        return _default_process()
    try:
        index, count = (int(p) for p in process)
    except (TypeError, ValueError):
        raise ValueError(f"process={process!r} must be a pair (index, count), e.g. "
                         "(jax.process_index(), jax.process_count())") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"process={process!r} must have 0 <= index < count")
    return (index, count)


def _to_numpy(column, name: str, where: str) -> np.ndarray:
    """One Arrow column as a NumPy array of shape (rows, ...): a (fixed-size) list column
    of equal-length lists becomes one more axis."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) \
            or pa.types.is_large_list(arr.type):
        if arr.null_count:
            raise ValueError(f"column {name!r} of {where} has {arr.null_count} null rows; "
                             "drop or fill them before fitting")
        if pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
        else:
            lengths = np.diff(arr.offsets.to_numpy())
            width = int(lengths[0]) if len(lengths) else 0
            if (lengths != width).any():
                raise ValueError(f"column {name!r} of {where} holds lists of lengths "
                                 f"{int(lengths.min())}..{int(lengths.max())}; every row "
                                 "needs the same shape")
        inner = _to_numpy(arr.flatten(), name, where)
        return inner.reshape((len(arr), width) + inner.shape[1:])
    return arr.to_numpy(zero_copy_only=False)


class ParquetStream:
    """A re-iterable stream of shuffled minibatch dicts read from Parquet files; make one
    with :func:`parquet`.

    Each batch is ``{column: array of batch_size rows, "row_index": int64 row ids}``.
    ``iter(stream)`` gives one epoch, the next epoch at each call (0, 1, 2, ...: what
    ``kq.fit`` does with a stream); ``stream.epoch(e)`` gives epoch ``e`` and
    ``stream.batches_from(step)`` every batch from a global step on.
    """

    def __init__(self, path, *, batch_size: int, row_index: str = "row_id", columns=None,
                 shuffle_seed: int = 0, buffer_rows: int = DEFAULT_BUFFER_ROWS, process=None,
                 prefetch: bool = True, _meta: Optional[dict] = None):
        self.batch_size = _positive_int("batch_size", batch_size, "it is the rows per step")
        self.buffer_rows = _positive_int("buffer_rows", buffer_rows,
                                         "it is the rows shuffled together (a window)")
        if isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, (int, np.integer)) \
                or shuffle_seed < 0:
            raise ValueError(f"shuffle_seed={shuffle_seed!r} must be an integer >= 0")
        self.shuffle_seed = int(shuffle_seed)
        self.process = _check_process(process)
        self.prefetch = bool(prefetch)
        if not isinstance(row_index, str):
            raise TypeError(f"row_index={row_index!r} must be a column name")
        self.row_index = row_index
        self._meta = _meta if _meta is not None else self._read_metadata(path)
        meta = self._meta
        self.path = meta["path"]
        self.paths = [f.path for f in meta["fragments"]]
        self._group_rows = meta["group_rows"]
        self.total_size = int(self._group_rows.sum())
        self.columns = self._check_columns(columns)
        #: Row groups read so far (by every iterator of this stream): how cheap a resume was.
        self.row_groups_read = 0
        self._next_epoch = 0
        self._epoch_starts = [0]    # global step at which each epoch starts, grown on demand
        self._plans = {}            # epoch -> its window plan, a few kept
        index, count = self.process
        groups = len(self._group_rows)
        if groups < count:
            raise ValueError(f"{self.path!r} has {groups} row groups for {count} processes; "
                             "each process needs at least one: write smaller row groups "
                             "(pyarrow.parquet.write_table(..., row_group_size=...))")
        # the fewest rows a process can get in any epoch: its share is at least
        # groups // count of the row groups, at worst the smallest ones
        fewest = int(np.sort(self._group_rows)[:groups // count].sum())
        if fewest < self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} is more than the {fewest} rows a "
                             f"process may get in an epoch ({groups} row groups, {count} "
                             "processes); use a smaller batch_size or more row groups")

    # ---- metadata -------------------------------------------------------------------------

    def _read_metadata(self, path) -> dict:
        pa = _pyarrow()
        source = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) \
            else os.fspath(path)
        dataset = pa.dataset.dataset(source, format="parquet")
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
        if not fragments:
            raise ValueError(f"{source!r} holds no Parquet files")
        groups, rows, kept = [], [], []
        for f in fragments:
            f.ensure_complete_metadata()  # reads the footer only
            infos = [(rg.id, rg.num_rows) for rg in f.row_groups if rg.num_rows > 0]
            if not infos:
                continue
            k = len(kept)
            kept.append(f)
            groups += [(k, rg) for rg, _ in infos]
            rows += [n for _, n in infos]
        if not kept:
            raise ValueError(f"{source!r} holds no rows")
        return {"path": source, "fragments": kept, "groups": groups,
                "group_rows": np.asarray(rows, dtype=np.int64),
                "schemas": [f.physical_schema for f in kept]}

    def _check_columns(self, columns) -> list:
        pa = _pyarrow()
        schemas, paths = self._meta["schemas"], self.paths
        for schema, where in zip(schemas, paths):
            if self.row_index not in schema.names:
                raise ValueError(f"row_index={self.row_index!r}: {where} has no such column "
                                 f"(its columns: {schema.names}); give row_index= the column "
                                 "that holds each row's number 0..N-1, or write one (never use "
                                 "a row's position in a file: it changes when files change)")
            kind = schema.field(self.row_index).type
            if not pa.types.is_integer(kind):
                raise ValueError(f"row_index column {self.row_index!r} of {where} has type "
                                 f"{kind}; it must hold integers, the rows' numbers 0..N-1 "
                                 "(write it as int64)")
        if columns is None:
            # a pandas index written beside the data is no column a model reads
            columns = [c for c in schemas[0].names if not c.startswith("__index_level_")]
        elif isinstance(columns, str):
            raise TypeError(f"columns={columns!r} must be a list of column names")
        columns = [c for c in dict.fromkeys(columns) if c != self.row_index]
        for schema, where in zip(schemas, paths):
            for c in columns:
                if c not in schema.names:
                    raise ValueError(f"column {c!r} is not in {where} (its columns: "
                                     f"{schema.names}); ask for columns= among those, or add "
                                     "it to every file")
        if ROW_INDEX in columns:
            raise ValueError(f"column {ROW_INDEX!r} of {paths[0]} is not the row id column "
                             f"({self.row_index!r}) but klqp gives the row ids that name; "
                             f"pass row_index={ROW_INDEX!r} or leave the column out (columns=)")
        return columns

    @property
    def global_batch_size(self) -> int:
        """The rows of one step over every process: ``batch_size`` x processes (each
        process streams ``batch_size`` of its own rows; the fit's b is their sum)."""
        return self.batch_size * self.process[1]

    def with_columns(self, names) -> "ParquetStream":
        """A stream of the same rows in the same order reading only the columns ``names``
        (and the row ids); its own epoch counter starts at 0. No file is opened again."""
        return ParquetStream(self.path, batch_size=self.batch_size, row_index=self.row_index,
                             columns=list(names), shuffle_seed=self.shuffle_seed,
                             buffer_rows=self.buffer_rows, process=self.process,
                             prefetch=self.prefetch, _meta=self._meta)

    select = with_columns

    # ---- the plan: which rows each step takes, from metadata only ---------------------------

    def _plan(self, epoch: int) -> dict:
        """Epoch ``epoch`` for this process: its row groups, windows, their first rows and
        the steps every process runs."""
        plan = self._plans.get(epoch)
        if plan is not None:
            return plan
        index, count = self.process
        order = group_order(self.shuffle_seed, epoch, len(self._group_rows))
        steps = int(rows_per_process(order, self._group_rows, count).min()) // self.batch_size
        mine = order[index::count]
        windows = [mine[a:e] for a, e in plan_windows(self._group_rows[mine], self.buffer_rows)]
        sizes = [int(self._group_rows[w].sum()) for w in windows]
        plan = {"steps": steps, "windows": windows, "starts": np.cumsum([0] + sizes)}
        if len(self._plans) > 8:
            self._plans.pop(next(iter(self._plans)))
        self._plans[epoch] = plan
        return plan

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Batches every process takes in epoch ``epoch``: the fewest rows any process gets
        that epoch // batch_size, so it varies with the epoch's deal of row groups (for one
        process it is always total_size // batch_size)."""
        return self._plan(int(epoch))["steps"]

    def _locate(self, step: int) -> tuple:
        """(epoch, step within it) of a global step counted from epoch 0's start."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step={step!r} must be an integer >= 0")
        starts = self._epoch_starts
        while starts[-1] <= step:
            starts.append(starts[-1] + self.steps_per_epoch(len(starts) - 1))
        epoch = bisect.bisect_right(starts, step) - 1
        return epoch, int(step - starts[epoch])

    def position(self, step: int) -> dict:
        """Where global step ``step`` starts reading (JSON-able): its epoch, step within the
        epoch, window and row offset within that window's shuffled rows."""
        epoch, j = self._locate(step)
        plan = self._plan(epoch)
        row = j * self.batch_size
        window = int(np.searchsorted(plan["starts"], row, side="right")) - 1
        return {"step": int(step), "epoch": epoch, "step_in_epoch": j,
                "steps_per_epoch": plan["steps"], "window": window,
                "offset": int(row - plan["starts"][window])}

    def state(self) -> dict:
        """What the stream is (JSON-able), for a checkpoint to record and compare."""
        fragment_of = [k for k, _ in self._meta["groups"]]
        groups = np.bincount(fragment_of, minlength=len(self.paths))
        rows = np.bincount(fragment_of, weights=self._group_rows, minlength=len(self.paths))
        return {"kind": "parquet", "paths": list(self.paths),
                "row_groups": [int(g) for g in groups], "rows": [int(r) for r in rows],
                "total_size": self.total_size, "columns": list(self.columns),
                "row_index": self.row_index, "shuffle_seed": self.shuffle_seed,
                "buffer_rows": self.buffer_rows, "batch_size": self.batch_size,
                "process": list(self.process)}

    # ---- reading ---------------------------------------------------------------------------

    def _read_window(self, epoch: int, window: int, groups: np.ndarray) -> dict:
        """The window's rows, shuffled: {column: array, ROW_INDEX: int64}. Runs in the
        prefetch thread. Each row group is decoded and scattered to its rows' shuffled
        places at once, so only one row group is ever held twice."""
        rows = self._group_rows[groups]
        rng = np.random.default_rng([self.shuffle_seed, 2, epoch, self.process[0], window])
        # output row i is window row order[i], so window row r goes to place[r]
        order = rng.permutation(int(rows.sum()))
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        del order
        wanted = self.columns + [self.row_index]
        out, first = {}, 0
        for g, n in zip(groups, rows):
            k, rg = self._meta["groups"][g]
            fragment = self._meta["fragments"][k]
            table = fragment.subset(row_group_ids=[rg]).to_table(columns=wanted)
            self.row_groups_read += 1
            where = f"row group {rg} of {fragment.path}"
            if table.num_rows != n:
                raise ValueError(f"{where} has {table.num_rows} rows, its metadata said {n}: "
                                 "did the file change after the stream was made?")
            to = place[first:first + n]
            for c in wanted:
                column = table.column(c)
                if c == self.row_index and column.null_count:
                    raise ValueError(f"row_index column {c!r} of {where} has "
                                     f"{column.null_count} nulls; every row needs its number")
                arr = _to_numpy(column, c, where)
                key = ROW_INDEX if c == self.row_index else c
                if c == self.row_index:
                    arr = arr.astype(np.int64, copy=False)
                held = out.get(key)
                if held is None:
                    held = out[key] = np.empty((len(place),) + arr.shape[1:], dtype=arr.dtype)
                elif held.shape[1:] != arr.shape[1:]:
                    raise ValueError(f"column {c!r} of {where} has rows of shape "
                                     f"{arr.shape[1:]}, other row groups {held.shape[1:]}")
                elif np.result_type(held.dtype, arr.dtype) != held.dtype:
                    # a file that stores the column wider: widen what is held
                    held = out[key] = held.astype(np.result_type(held.dtype, arr.dtype))
                held[to] = arr
            first += n
            del table
        return {c: out[c] for c in self.columns + [ROW_INDEX]}

    def _windows(self, first_step: int, one_epoch: bool) -> Iterator[tuple]:
        """(epoch, window, groups, first row to use, batches to cut) for each window the
        steps from ``first_step`` need, in order; None between epochs."""
        epoch, j = self._locate(first_step)
        while True:
            plan = self._plan(epoch)
            b, steps = self.batch_size, plan["steps"]
            if j < steps:
                row, end = j * b, steps * b  # rows this epoch still uses: [row, end)
                w = int(np.searchsorted(plan["starts"], row, side="right")) - 1
                while plan["starts"][w] < end:
                    yield epoch, w, plan["windows"][w], int(max(row - plan["starts"][w], 0)), \
                        int(min(end, plan["starts"][w + 1]) - plan["starts"][w])
                    w += 1
            if one_epoch:
                return
            yield None
            epoch, j = epoch + 1, 0

    def _prefetched(self, windows: Iterator) -> Iterator:
        """``windows`` with each window's rows read, the next one read by a background
        thread while the caller uses this one (at most two windows in memory)."""
        if not self.prefetch:
            for item in windows:
                yield item, (None if item is None else self._read_window(*item[:3]))
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klqp-parquet")
        pending = None
        try:
            def submit(item):
                return None if item is None else pool.submit(self._read_window, *item[:3])

            item = next(windows, _END)
            pending = submit(item)
            while item is not _END:
                cols = None if pending is None else pending.result()
                following = next(windows, _END)
                pending = None if following is _END else submit(following)
                yield item, cols
                item = following
        finally:
            if pending is not None:
                pending.cancel()
            pool.shutdown(wait=True, cancel_futures=True)  # stops the thread on close()

    def _batches(self, first_step: int, one_epoch: bool) -> Iterator[dict]:
        b, carry = self.batch_size, None
        # closing(): a closed batch iterator stops the prefetch thread at once
        with closing(self._prefetched(self._windows(first_step, one_epoch))) as windows:
            for item, cols in windows:
                if item is None:
                    carry = None  # an epoch's ragged tail is dropped
                    continue
                _, _, _, pos, stop = item
                if carry is not None:  # the previous window's last rows open this batch
                    take = min(b - len(carry[ROW_INDEX]), stop - pos)
                    carry = {k: np.concatenate([carry[k], v[pos:pos + take]])
                             for k, v in cols.items()}
                    pos += take
                    if len(carry[ROW_INDEX]) < b:  # a window smaller than the carry's need
                        continue
                    yield carry
                    carry = None
                while pos + b <= stop:
                    yield {k: v[pos:pos + b] for k, v in cols.items()}
                    pos += b
                if pos < stop:
                    carry = {k: v[pos:stop] for k, v in cols.items()}
                del cols

    def epoch(self, epoch: int) -> Iterator[dict]:
        """The batches of epoch ``epoch``: ``steps_per_epoch(epoch)`` of them."""
        return self._batches(self._epoch_start(int(epoch)), one_epoch=True)

    def _epoch_start(self, epoch: int) -> int:
        if epoch < 0:
            raise ValueError(f"epoch={epoch!r} must be >= 0")
        while len(self._epoch_starts) <= epoch:
            self._locate(self._epoch_starts[-1])
        return self._epoch_starts[epoch]

    def batches_from(self, step: int) -> Iterator[dict]:
        """The batches of global steps ``step``, ``step + 1``, ... epoch after epoch, with
        no end. Windows before the one that holds ``step``'s first row are not read."""
        self._locate(step)  # checks step
        return self._batches(int(step), one_epoch=False)

    def __iter__(self) -> Iterator[dict]:
        """One epoch: the next one at each call (a fresh stream starts at epoch 0)."""
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        return self.epoch(epoch)

    def __repr__(self) -> str:
        return (f"ParquetStream({self.path!r}, rows={self.total_size}, "
                f"row_groups={len(self._group_rows)}, batch_size={self.batch_size}, "
                f"columns={self.columns}, process={self.process})")


def parquet(path, *, batch_size: int, row_index: str = "row_id", columns=None,
            shuffle_seed: int = 0, buffer_rows: int = DEFAULT_BUFFER_ROWS, process=None,
            prefetch: bool = True) -> ParquetStream:
    """A shuffled minibatch stream over a Parquet file or a folder of them, read a window
    of row groups at a time (PyArrow Datasets): pass it to ``kq.fit`` with
    ``total_size=stream.total_size``.

    Making it reads the files' footers only: the row groups and their row counts.
    Each epoch permutes the row groups with ``shuffle_seed`` (the same permutation on
    every process), gives process ``index`` of ``count`` the groups ``order[index::count]``,
    joins consecutive groups into windows of at least ``buffer_rows`` rows and shuffles
    the rows within each window. Batches have exactly ``batch_size`` rows (a window's last
    rows open the next window's first batch); every process takes
    ``stream.steps_per_epoch(epoch)`` batches, so the rest of an epoch is dropped. While a
    window is used, a background thread reads the next: memory holds about two windows.

    path: a file, a folder or a list of files. batch_size: rows per batch.
    row_index: the integer column holding each row's number 0..N-1; batches carry it
    under ``"row_index"``, which a model with Local latents needs. columns: the columns
    to read (default: all). process: ``(index, count)``; default
    ``(jax.process_index(), jax.process_count())`` when JAX is imported, else ``(0, 1)``.
    prefetch: read the next window in a background thread.

    >>> import tempfile, numpy as np, pyarrow as pa, pyarrow.parquet as pq
    >>> import klqp as kq
    >>> folder = tempfile.mkdtemp()
    >>> table = pa.table({"row_id": np.arange(100), "y": np.linspace(0, 1, 100)})
    >>> pq.write_table(table, f"{folder}/part-0.parquet", row_group_size=25)
    >>> stream = kq.data.parquet(folder, batch_size=30, buffer_rows=50)
    >>> stream.total_size, stream.steps_per_epoch(0)
    (100, 3)
    >>> batch = next(iter(stream))
    >>> sorted(batch), batch["y"].shape, batch["row_index"].dtype
    (['row_index', 'y'], (30,), dtype('int64'))
    """
    return ParquetStream(path, batch_size=batch_size, row_index=row_index, columns=columns,
                         shuffle_seed=shuffle_seed, buffer_rows=buffer_rows, process=process,
                         prefetch=prefetch)
