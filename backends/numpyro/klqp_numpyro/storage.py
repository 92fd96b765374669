"""Where a NumPyro fit's N-row table and data live: one strategy object per placement.

The trainer (``klqp_numpyro.train``) compiles one update whatever the placement; what
differs is where the free locals' N-row table (their q and row-wise Adam state) and the
in-memory columns are kept, and how a chunk's rows reach the compiled step:

- ``OneDevice``: everything on the default device (the default);
- ``Sharded``: rows sharded over a mesh of devices, the rest replicated
  (``backend_options={"devices": k}``, ``klqp_numpyro.sharding``);
- ``HostMemory``: the table and the data in host memory (NumPy memmaps), each chunk's
  rows gathered into a compact table of fixed size and written back after it
  (``backend_options={"local_table": "host"}``, ``klqp_numpyro.host_table``).

Each provides ``rows`` (how the compiled step reads and writes a table's batch rows) and
the host-side moves below, so the trainer has no branch on the placement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .host_table import HostTable, compact_rows
from .sharding import RowsHere

__all__ = ["OneDevice", "Sharded", "HostMemory", "storage_for"]


def _float_host(a) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(float) if np.issubdtype(a.dtype, np.floating) else a


class OneDevice:
    """The table and the data on the default device."""

    rows = RowsHere()
    streams_indices = True  # a streamed batch's rows go to the device as they are

    def new_table(self, array):
        """An N-row array made on the host, where this storage keeps tables."""
        return jnp.asarray(array)

    def data(self, columns: dict) -> dict:
        """The in-memory columns where the compiled chunk reads them."""
        return {k: jnp.asarray(v) for k, v in columns.items()}

    def place(self, tree, tables: set):
        """The state ``tree`` ({part: subtree}) placed: the parts named in ``tables`` are
        N-row tables."""
        return tree

    def to_host(self, a, total_size: int | None = None) -> np.ndarray:
        """A state array as host NumPy (floats as float64); ``total_size``: an N-row
        table, cut to its N rows."""
        a = np.asarray(a)
        return _float_host(a if total_size is None else a[:total_size])

    def copy_to_host(self, a, total_size: int | None = None) -> np.ndarray:
        """A copy of a state array as host NumPy in its own dtype (checkpoints)."""
        a = np.array(a)
        return a if total_size is None else a[:total_size]

    def chunk_inputs(self, variables, opt_state, data: dict, rows: np.ndarray, total_size: int):
        """(variables, optimizer state, data, the steps' row numbers) as a chunk takes them."""
        return variables, opt_state, data, jnp.asarray(rows)

    def chunk_outputs(self, variables, opt_state, new_variables, new_opt_state):
        """The state after a chunk, from the chunk's outputs."""
        return new_variables, new_opt_state

    def final_pass(self, final, dense, table, data: dict, n: int, b: int) -> dict:
        """The final pass (``final(dense, table, data)``) over all rows."""
        return final(dense, table, data)

    def row_params(self, table: dict, total_size: int) -> dict:
        """The free locals' q ({"loc", "scale"}, N rows, host float64) from the table's
        {"loc", "raw_scale"}."""
        return {k: {"loc": self.to_host(p["loc"], total_size),
                    "scale": self.to_host(jax.nn.softplus(p["raw_scale"]), total_size)}
                for k, p in table.items()}

    def stream_batch(self, indices, columns: dict, step: int):
        return jnp.asarray(indices), {k: jnp.asarray(v) for k, v in columns.items()}


class Sharded(OneDevice):
    """Rows sharded over a mesh of devices (``klqp_numpyro.sharding.Placement``)."""

    def __init__(self, placement):
        self.placement = placement
        self.rows = placement.rows

    def data(self, columns: dict) -> dict:
        return {k: self.placement.table(v) for k, v in columns.items()}

    def place(self, tree, tables: set):
        return {part: jax.tree.map(self.placement.table if part in tables
                                   else self.placement.replicate, sub)
                for part, sub in tree.items()}

    def to_host(self, a, total_size=None) -> np.ndarray:
        a = self.placement.to_host(a)
        return _float_host(a if total_size is None else a[:total_size])

    def copy_to_host(self, a, total_size=None) -> np.ndarray:
        a = np.asarray(self.placement.to_host(a))
        return a if total_size is None else a[:total_size]

    def chunk_inputs(self, variables, opt_state, data, rows, total_size):
        return variables, opt_state, data, self.placement.replicate(rows)

    def stream_batch(self, indices, columns, step):
        return self.placement.stream_batch(indices, columns, step=step)


class HostMemory(OneDevice):
    """The table and the data in host memory (``klqp_numpyro.host_table.HostTable``)."""

    def __init__(self, host: HostTable):
        self.host = host
        self._moved = None  # (unique rows, count) of the chunk in flight

    def new_table(self, array):
        return np.asarray(array)  # made on the host: the table may not fit the device

    def data(self, columns: dict) -> dict:
        return columns  # on the host: each chunk moves its rows

    def place(self, tree, tables: set):
        return {part: self.host.adopt(sub) if part in tables else sub
                for part, sub in tree.items()}

    def copy_to_host(self, a, total_size=None) -> np.ndarray:
        return np.array(a)  # a copy: the memmaps go on changing

    def row_params(self, table: dict, total_size: int) -> dict:
        """Computed on the host: the table may not fit the device."""
        return {k: {"loc": np.array(p["loc"], dtype=float),
                    "scale": np.logaddexp(0.0, np.asarray(p["raw_scale"], dtype=float))}
                for k, p in table.items()}

    def chunk_inputs(self, variables, opt_state, data, rows, total_size):
        """The rows the chunk touches, gathered into a compact table of fixed size, and its
        row numbers renumbered into it."""
        unique, count, at = compact_rows(rows, min(rows.size, total_size))
        self._moved = (unique, count)
        variables = {"dense": variables["dense"],
                     "rows": HostTable.gather(variables["rows"], unique)}
        row_adam = opt_state.row_adam
        opt_state = opt_state._replace(
            row_adam=None if row_adam is None else HostTable.gather(row_adam, unique))
        compact = {k: jnp.asarray(np.asarray(v[unique])) for k, v in data.items()}
        return variables, opt_state, compact, jnp.asarray(at)

    def chunk_outputs(self, variables, opt_state, new_variables, new_opt_state):
        """The compact rows written back into the host table."""
        unique, count = self._moved
        HostTable.write_back(variables["rows"], unique, count, new_variables["rows"])
        if new_opt_state.row_adam is not None:
            HostTable.write_back(opt_state.row_adam, unique, count, new_opt_state.row_adam)
        return ({"dense": new_variables["dense"], "rows": variables["rows"]},
                new_opt_state._replace(row_adam=opt_state.row_adam))

    def final_pass(self, final, dense, table, data, n, b, block_batches: int = 64) -> dict:
        """Blocks of rows moved to the device (one block size, so one compile), their new
        q written to host arrays."""
        block = min(n, b * block_batches)
        out = None
        for lo in range(0, n, block):
            idx = np.minimum(np.arange(lo, lo + block), n - 1)
            new = final(dense, HostTable.gather(table, idx),
                        {k: jnp.asarray(np.asarray(v[idx])) for k, v in data.items()})
            if out is None:
                out = jax.tree.map(lambda a: np.empty((n,) + a.shape[1:]), new)
            hi = min(lo + block, n)
            jax.tree.map(lambda full, a: full.__setitem__(slice(lo, hi), np.asarray(a)[:hi - lo]),
                         out, new)
        return out


def storage_for(place=None, host=None):
    """The storage of a fit: ``place`` (a ``sharding.Placement``) or ``host`` (a
    ``host_table.HostTable``), or neither (one device)."""
    if host is not None:
        return HostMemory(host)
    if place is not None:
        return Sharded(place)
    return OneDevice()
