"""A local table larger than the device: ``backend_options={"local_table": "host"}``.

The N-row table of the free locals (loc, raw scale and their row-wise optimizer state)
and the data columns stay in host memory, the table as NumPy memmap files (in
``table_dir``, default a temporary folder). A chunk's rows are known on the host before
it runs (``klqp.training.epoch_order``), so each chunk gathers the rows it touches
(at most chunk_size * b, in one fixed-size compact table, so nothing recompiles), runs
the same compiled scan on them with its row numbers renumbered into the compact table,
and writes them back. The numbers equal the in-device fit's: every row sees the same
steps in the same order; only where the rows are stored differs.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["HostTable", "compact_rows", "host_table"]


def compact_rows(rows: np.ndarray, capacity: int):
    """(unique rows padded to ``capacity``, how many are real, ``rows`` renumbered into
    them). Padding repeats the last real row; it is computed on but never written back.

    >>> u, k, at = compact_rows(np.array([[7, 3], [3, 9]]), 5)
    >>> u.tolist(), k, at.tolist()
    ([3, 7, 9, 9, 9], 3, [[1, 0], [0, 2]])
    """
    unique, at = np.unique(rows, return_inverse=True)
    padded = np.full(capacity, unique[-1], dtype=np.int64)
    padded[:len(unique)] = unique
    return padded, len(unique), at.reshape(rows.shape).astype(np.int32)


class HostTable:
    """Host-resident row tables (NumPy memmaps) and the moves of a chunk's rows."""

    def __init__(self, directory=None):
        if directory is not None and not os.path.isdir(directory):
            raise ValueError(f"backend_options['table_dir']={os.fspath(directory)!r} is not a "
                             "folder; create it or leave table_dir out (a temporary folder)")
        # a folder of its own (inside table_dir when given): fits sharing table_dir, or
        # the processes of one, never write each other's files
        self._tmp = tempfile.TemporaryDirectory(prefix="klqp-table-", dir=directory)
        self.directory = self._tmp.name
        self._files = 0

    def adopt(self, tree):
        """Every (N, ...) leaf of ``tree`` copied into a memmap file of its own."""
        def to_file(a):
            a = np.asarray(a)
            self._files += 1
            path = os.path.join(self.directory, f"table-{self._files}.npy")
            out = np.lib.format.open_memmap(path, mode="w+", dtype=a.dtype, shape=a.shape)
            out[...] = a
            return out
        return jax.tree.map(to_file, tree)

    @staticmethod
    def gather(tree, rows: np.ndarray):
        """The rows ``rows`` of every leaf, on the device."""
        return jax.tree.map(lambda a: jnp.asarray(np.asarray(a[rows])), tree)

    @staticmethod
    def write_back(tree, rows: np.ndarray, count: int, compact) -> None:
        """Write the first ``count`` compact rows back to their places in ``tree``."""
        def put(full, new):
            full[rows[:count]] = np.asarray(new)[:count]
        jax.tree.map(put, tree, compact)


def host_table(local_table, table_dir, problem):
    """``backend_options["local_table"]`` -> a HostTable or None (the table on device)."""
    if local_table in (None, "device"):
        if table_dir is not None:
            raise ValueError("backend_options['table_dir'] is for local_table='host'")
        return None
    if local_table != "host":
        raise ValueError(f"backend_options['local_table']={local_table!r} must be 'device' "
                         "(default) or 'host' (the N-row table in host memory, memmap files)")
    if problem.data is None:
        raise ValueError("backend_options['local_table']='host' needs in-memory data (a dict of "
                         "arrays, NumPy memmaps welcome): a chunk's rows must be known before "
                         "it runs. A stream's batches already bring only their rows")
    return HostTable(table_dir)
