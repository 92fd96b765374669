"""Row-wise lazy Adam for the free locals' N-row table (``kq.RowAdam``): the arithmetic
is ``klqp.steps.row_adam``; this module keeps its state and gathers and scatters the
batch's rows (optax has no sparse Adam).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from klqp.steps import row_adam


class RowAdamState(NamedTuple):
    count: jax.Array  # (N,) steps each row has taken
    mu: dict
    nu: dict


def row_adam_init(variables: dict, total_size: int) -> RowAdamState:
    zeros = lambda: jax.tree.map(jnp.zeros_like, variables)  # noqa: E731 (own buffers each:
    # a streamed step donates its state, and a buffer may be donated only once)
    return RowAdamState(jnp.zeros(total_size, jnp.int32), zeros(), zeros())


def row_adam_update(grads_rows: dict, state: RowAdamState, variables: dict, indices,
                    learning_rate: float, active=True, rows=None):
    """Update the rows ``indices`` of ``variables`` (leaves with N rows) from the batch
    rows' gradients ``grads_rows`` (leaves with b rows). Returns (variables, state).
    ``active=False`` (traced) leaves everything as it was, at O(b) cost. ``rows`` reads
    and writes a table's batch rows (``klqp_numpyro.sharding``; default: one device)."""
    if rows is None:
        from .sharding import RowsHere
        rows = RowsHere()
    take = lambda full: rows.take(full, indices)
    put = lambda full, new: rows.put(full, indices, new)
    count_rows = take(state.count) + jnp.asarray(active, jnp.int32)
    c = jnp.maximum(count_rows, 1).astype(jnp.result_type(float))

    def moments(g, mu, nu):
        mu_rows, nu_rows = take(mu), take(nu)
        m, v, step = row_adam(jnp, g, mu_rows, nu_rows, c, learning_rate)
        return (jnp.where(active, m, mu_rows), jnp.where(active, v, nu_rows),
                jnp.where(active, step, 0.0))

    out = jax.tree.map(moments, grads_rows, state.mu, state.nu)
    is_triple = lambda x: isinstance(x, tuple)
    pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=is_triple)
    m, v, step = pick(0), pick(1), pick(2)
    new_vars = jax.tree.map(lambda full, s: put(full, take(full) + s), variables, step)
    return new_vars, RowAdamState(put(state.count, count_rows), jax.tree.map(put, state.mu, m),
                                  jax.tree.map(put, state.nu, v))
