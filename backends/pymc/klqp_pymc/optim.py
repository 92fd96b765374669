"""The optimizer rule klqp's backends share, as PyTensor updates.

Globals: PyMC's ``pm.adam`` on the global group's flat ``mu``/``rho``. Locals: row-wise
lazy Adam (``kq.RowAdam``), whose arithmetic is ``klqp.steps.row_adam``: a row's
moments, step count and value change only on steps whose minibatch holds the row.

The locals' gradients arrive for the BATCH rows (b of them, see ``tensors.QParams``);
the updates below scatter them into the N-row shared arrays with ``inc_subtensor`` /
``set_subtensor``, so a step costs O(b), not O(N).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt

from klqp.steps import row_adam

__all__ = ["RowAdam", "KlqpOptimizer"]


def _zeros_like_shared(var, name: str):
    value = var.get_value(borrow=True)
    return pytensor.shared(np.zeros_like(value), name=name, shape=var.type.shape)


class RowAdam:
    """Row-wise lazy Adam over N-row shared variables that share one per-row step count.
    ``learning_rate`` may be a PyTensor scalar (a schedule at the symbolic step)."""

    def __init__(self, variables: list, total_size: int, learning_rate):
        self.learning_rate = learning_rate
        self.count = pytensor.shared(np.zeros(total_size, dtype=np.int64), name="row_count")
        # (N-row variable, its first moments, its second moments) per variable
        self.slots = [(v, _zeros_like_shared(v, f"{v.name}_m"), _zeros_like_shared(v, f"{v.name}_v"))
                      for v in variables]

    def state_variables(self) -> list:
        """The shared variables that hold this optimizer's state, in a fixed order."""
        return [self.count] + [m for _, *moments in self.slots for m in moments]

    def updates(self, row_grads: list, indices, mask=None) -> dict:
        """Updates for the rows ``indices`` from their gradients (one (b, ...) tensor per
        slot). ``mask`` (b,) marks real rows of a padded batch; padded rows change nothing
        (they may repeat a real row's index, hence increments, not assignments)."""
        active = pt.ones(indices.shape, dtype="int64") if mask is None else pt.cast(mask, "int64")
        count = pt.inc_subtensor(self.count[indices], active)
        c = pt.cast(pt.maximum(count[indices], 1), pytensor.config.floatX)
        updates = {self.count: count}
        for (variable, first, second), g in zip(self.slots, row_grads):
            col = (slice(None),) + (None,) * (g.ndim - 1)
            keep = None if mask is None else mask[col]
            mu_rows, nu_rows = first[indices], second[indices]
            m, v, step = row_adam(pt, g, mu_rows, nu_rows, c, self.learning_rate)
            if keep is None:
                updates[first] = pt.set_subtensor(mu_rows, m)
                updates[second] = pt.set_subtensor(nu_rows, v)
                updates[variable] = pt.inc_subtensor(variable[indices], step)
            else:
                updates[first] = pt.inc_subtensor(mu_rows, keep * (m - mu_rows))
                updates[second] = pt.inc_subtensor(nu_rows, keep * (v - nu_rows))
                updates[variable] = pt.inc_subtensor(variable[indices], keep * step)
        return updates


class KlqpOptimizer:
    """PyMC's ``obj_optimizer``: called as ``optimizer(grads, params)`` by
    ``ObjectiveFunction.updates``. The global group's mu/rho and the point parameters get
    ``pm.adam``; the free locals' batch rows (stand-ins, passed as ``more_obj_params``) get
    row-wise Adam on the N-row arrays they stand for."""

    def __init__(self, learning_rate, row_adam: RowAdam | None, row_params: list,
                 indices, mask=None):
        self.learning_rate = learning_rate
        self.row_adam = row_adam
        self.row_params = row_params  # the stand-ins, in row_adam.slots order
        self.indices, self.mask = indices, mask
        self.dense: list = []        # what pm.adam moves, in its order
        self.adam_state: list = []   # pm.adam's state: (m, v) per dense variable, then t
        self.grads: dict = {}        # each parameter's gradient, for the global step

    def __call__(self, grads, params) -> dict:
        by_param = self.grads = dict(zip(params, grads))
        self.dense = [p for p in params if p not in self.row_params]
        updates = {}
        if self.dense:
            adam = pm.adam([by_param[p] for p in self.dense], self.dense,
                           learning_rate=self.learning_rate)
            self.adam_state = [k for k in adam if k not in self.dense]
            updates.update(adam)
        if self.row_params:
            updates.update(self.row_adam.updates([by_param[p] for p in self.row_params],
                                                 self.indices, self.mask))
        return updates
