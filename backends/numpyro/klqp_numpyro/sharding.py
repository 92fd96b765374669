"""Several devices and hosts: each compiled chunk as one SPMD program over a ``jax.Mesh``.

``backend_options={"devices": k}`` (an int, or a list of JAX devices) puts the data
columns and the N-row local table (loc, scale and their row-wise optimizer state)
row-sharded on a one-axis mesh ``("data",)``: device d holds rows d*L .. (d+1)*L-1,
L = ceil(N / k) (the table is padded to k*L rows; the padding is never read). Globals,
point parameters, encoder weights and their optimizer state are replicated. The
minibatch is the same as on one device (``klqp.training.epoch_order``: the rows, the
noise and so the parameters do not depend on k); its b rows are computed on b/k rows
per device. Moving a batch's rows is explicit (``RowsOn.take`` / ``RowsOn.put``): each
device reads the rows it holds and one reduce-scatter hands every device its b/k rows;
the new rows are all-gathered (b of them) and each device writes those it holds. So
no collective ever carries an N-sized array: per step, O(b) rows move, plus the
all-reduce of the replicated parameters' gradients that XLA inserts.

Several hosts: call ``jax.distributed.initialize`` first and pass ``devices`` = all
devices (``jax.devices()``); each process places only the rows its devices hold.
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "data"

__all__ = ["AXIS", "Placement", "RowsHere", "RowsOn", "placement"]


class RowsHere:
    """One device: a batch's rows are ``table[idx]``; writing them is ``.at[idx].set``."""

    padded_rows = None

    def take(self, table, idx):
        return jnp.take(table, idx, axis=0)

    def put(self, table, idx, rows):
        return table.at[idx].set(rows)

    def batch(self, x):
        return x


class RowsOn:
    """Row-sharded tables on ``mesh``: ``take`` and ``put`` move b rows, never N."""

    def __init__(self, mesh, rows_per_device: int):
        self.mesh = mesh
        self.rows_per_device = rows_per_device

    def _map(self, f, in_specs, out_specs):
        return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)

    def take(self, table, idx):
        """``table[idx]`` with the result row-sharded: each device reads the rows it
        holds (zeros elsewhere), a reduce-scatter sums and splits them (b rows)."""
        def local(t, i):
            i = lax.all_gather(i, AXIS, tiled=True)  # the batch's b row numbers
            at = i - lax.axis_index(AXIS) * t.shape[0]
            mine = (at >= 0) & (at < t.shape[0])
            rows = jnp.take(t, jnp.clip(at, 0, t.shape[0] - 1), axis=0)
            rows = jnp.where(mine.reshape((-1,) + (1,) * (rows.ndim - 1)), rows, 0)
            return lax.psum_scatter(rows, AXIS, scatter_dimension=0, tiled=True)
        return self._map(local, (P(AXIS), P(AXIS)), P(AXIS))(table, idx)

    def put(self, table, idx, rows):
        """``table.at[idx].set(rows)``: the b new rows are all-gathered and each device
        writes those it holds (the others are dropped)."""
        def local(t, i, r):
            i = lax.all_gather(i, AXIS, tiled=True)
            r = lax.all_gather(r, AXIS, tiled=True)
            at = i - lax.axis_index(AXIS) * t.shape[0]
            at = jnp.where((at >= 0) & (at < t.shape[0]), at, t.shape[0])  # out of range: dropped
            return t.at[at].set(r, mode="drop")
        return self._map(local, (P(AXIS), P(AXIS), P(AXIS)), P(AXIS))(table, idx, rows)

    def batch(self, x):
        """A b-row array computed inside the step, split across devices like the batch."""
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(AXIS)))


class Placement:
    """Where a fit's arrays live: the mesh, and how row tables and replicated values are
    put on it (in several processes, each process places only its devices' rows)."""

    def __init__(self, devices, total_size: int, batch_size: int):
        self.devices = list(devices)
        k = len(self.devices)
        self.mesh = jax.make_mesh((k,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=self.devices)
        self.total_size = total_size
        self.rows_per_device = -(-total_size // k)
        self.padded_rows = self.rows_per_device * k
        self.rows = RowsOn(self.mesh, self.rows_per_device)
        self.rows.padded_rows = self.padded_rows
        self.row_sharding = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def size(self) -> int:
        return len(self.devices)

    def table(self, x):
        """An (N, ...) host array as a row-sharded (k*L, ...) array; padding repeats the
        last row (valid values, never read)."""
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        n = x.shape[0]
        shape = (self.padded_rows,) + x.shape[1:]

        def rows(index):  # only this process's devices' rows are read (memmaps stay lazy)
            lo, hi, _ = index[0].indices(self.padded_rows)
            return np.asarray(x[np.minimum(np.arange(lo, hi), n - 1)])
        return jax.make_array_from_callback(shape, self.row_sharding, rows)

    def batch_rows(self, x):
        """A (b, ...) array of this step's batch, split across devices."""
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self.row_sharding, lambda i: x[i])

    def replicate(self, x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self.replicated, lambda i: x[i])

    def stream_batch(self, indices, columns: dict, step: int):
        """A streamed batch on the mesh, split across devices. With several processes each
        gives its own rows (``kq.data.parquet`` splits the files so); they make one global
        batch of every process's rows."""
        b = len(indices)
        local = len(self.mesh.local_devices)
        if b % local:
            raise ValueError(f"streamed batch at step {step} has {b} rows, not a multiple of the "
                             f"{local} devices of this process; give batches of equal size "
                             "divisible by the devices (drop a ragged last batch)")
        if jax.process_count() == 1:
            put = self.batch_rows
        else:
            put = lambda x: jax.make_array_from_process_local_data(self.row_sharding,
                                                                   np.asarray(x))
        return put(np.asarray(indices, np.int32)), {k: put(v) for k, v in columns.items()}

    def to_host(self, x) -> np.ndarray:
        """A placed array back on the host, whole (gathered from every process)."""
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def placement(devices, total_size: int, batch_size: int):
    """``backend_options["devices"]`` -> a Placement, or None for one device (the
    default). Checks the option before anything compiles."""
    if devices is None:
        return None
    if isinstance(devices, bool) or not (isinstance(devices, (int, np.integer))
                                         or isinstance(devices, (list, tuple))):
        raise TypeError(f"backend_options['devices']={devices!r} must be a number of devices "
                        "(e.g. 2) or a list of JAX devices (e.g. jax.devices())")
    if isinstance(devices, (int, np.integer)):
        available = jax.devices()
        if devices < 1 or devices > len(available):
            raise ValueError(
                f"backend_options['devices']={devices}: this JAX has {len(available)} "
                f"{available[0].platform} device(s); ask for 1..{len(available)} (on CPU, "
                "XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts makes 8 "
                "virtual devices, for tests only: they share the cores)")
        devices = available[:int(devices)]
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"backend_options['devices']={devices!r}: a list of jax.Device "
                        "objects is needed (e.g. jax.devices())")
    if len(set(devices)) != len(devices):
        raise ValueError(f"backend_options['devices'] names a device twice: {devices}")
    if jax.process_count() > 1 and set(devices) != set(jax.devices()):
        raise ValueError("with several processes (jax.distributed), backend_options['devices'] "
                         "must be every device of every process: jax.devices()")
    if batch_size % len(devices):
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {len(devices)} "
                         f"devices (each computes batch_size / devices rows a step); use e.g. "
                         f"batch_size={max(1, batch_size // len(devices)) * len(devices)}")
    return Placement(devices, total_size, batch_size)
