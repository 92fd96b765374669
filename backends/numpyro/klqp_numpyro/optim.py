"""The optimizer rule klqp's backends share.

Globals: Adam (optax.adam). Locals: row-wise lazy Adam: a row's moments, step count
and value change only on steps whose minibatch holds the row. Dense Adam would keep
moving every row through its momentum after the row left the batch, with a second
moment that decays between rare visits, so rows visited once per epoch take large,
noisy steps; optax has no sparse Adam, hence these few lines.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

B1, B2, EPS = 0.9, 0.999, 1e-8


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
        shape = (-1,) + (1,) * (g.ndim - 1)
        mu_rows, nu_rows = take(mu), take(nu)
        m = jnp.where(active, B1 * mu_rows + (1 - B1) * g, mu_rows)
        v = jnp.where(active, B2 * nu_rows + (1 - B2) * g * g, nu_rows)
        m_hat = m / (1 - B1 ** c).reshape(shape)
        v_hat = v / (1 - B2 ** c).reshape(shape)
        return m, v, jnp.where(active, -learning_rate * m_hat / (jnp.sqrt(v_hat) + EPS), 0.0)

    out = jax.tree.map(moments, grads_rows, state.mu, state.nu)
    is_triple = lambda x: isinstance(x, tuple)
    pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=is_triple)
    m, v, step = pick(0), pick(1), pick(2)
    new_vars = jax.tree.map(lambda full, s: put(full, take(full) + s), variables, step)
    return new_vars, RowAdamState(put(state.count, count_rows), jax.tree.map(put, state.mu, m),
                                  jax.tree.map(put, state.nu, v))
