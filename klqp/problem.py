"""A validated fitting problem: model + data + N + b + weights + the scale flag.

Everything a user can get wrong is checked here, before any backend compiles
anything, and each error names the variable, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from .expr import Expr, variables_in
from .distributions import interval_bounds
from .model import PROBE_ROWS, ROW_INDEX, Model, ModelError, VarSpec
from .objective import Shared, Weights, cost_scale, resolve_weights

__all__ = ["Problem", "make_problem", "check_batch", "init_params", "FitConfig"]


@dataclass(frozen=True)
class Problem:
    model: Model
    total_size: int
    batch_size: int
    weights: Weights
    scale_cost_to_minibatch: bool
    data: Optional[dict] = None        # in-memory: every column with all N rows
    stream: Optional[Iterable] = None  # or an iterable of batch dicts

    @property
    def num_batches(self) -> int:
        return batches_per_epoch(self.total_size, self.batch_size, self.stream is not None)

    @property
    def cost_scale(self) -> float:
        return cost_scale(self.total_size, self.batch_size, self.scale_cost_to_minibatch)

    def row_shape(self, name: str) -> tuple:
        """Shape of one row of a data or observed column."""
        spec = self.model[name]
        if self.data is not None and name in self.data:
            return tuple(self.data[name].shape[1:])
        return tuple(spec.shape)


@dataclass
class FitConfig:
    steps: int = 1000
    learning_rate: Any = None  # a klqp.schedules.Schedule of the step
    seed: int = 0
    progress: Optional[bool] = None
    callbacks: tuple = ()
    chunk_size: Optional[int] = None
    resume: Any = None
    init_scale: float = 0.1
    local_step: Any = None   # klqp.steps.LocalStep, RowAdam, or None (no free locals)
    global_step: Any = None  # klqp.steps.GlobalStep, or None (plain Adam)
    max_nonfinite: int = 20  # non-finite steps in a row before a fit stops (klqp.guard)

    def __post_init__(self):
        if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed!r} must be an integer in 0..2**32-1")
        if not (isinstance(self.init_scale, (int, float)) and math.isfinite(self.init_scale)
                and self.init_scale > 0):
            raise ValueError(f"init_scale={self.init_scale!r} must be a finite positive number "
                             "(q's initial scale in unconstrained space, e.g. 0.1)")

        if self.learning_rate is not None:
            check_schedule("learning_rate", self.learning_rate)

    def rule(self) -> dict:
        """The step rule as plain data: a resumed fit must follow the same one."""
        glob = self.global_step
        if getattr(getattr(glob, "step_size", None), "num_batches", None) is not None:
            # the step size's batches per epoch come from the data, not from the rule
            glob = dataclasses.replace(glob, step_size=dataclasses.replace(
                glob.step_size, num_batches=None))
        return {"local_step": repr(self.local_step), "global_step": repr(glob)}


#: Steps at which a schedule's values are checked before a fit (a schedule is a pure
#: function of the step; these catch one that starts, turns or ends negative or NaN).
PROBE_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**4, 10**5, 10**6)


def check_schedule(name: str, schedule) -> None:
    """Refuse a schedule that is NaN, infinite or negative at one of ``PROBE_STEPS``.

    >>> from klqp import schedules
    >>> check_schedule("beta", schedules.linear(1.0, -1.0, 100))
    Traceback (most recent call last):
    ...
    ValueError: beta=Linear(steps=100, start=1.0, end=-1.0) is -1.0 at step 100; ...
    """
    for step in PROBE_STEPS:
        with np.errstate(all="ignore"):
            value = float(np.asarray(schedule(step), dtype=float))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={schedule!r} is {value!r} at step {step}; a weight or step "
                             "size must be a finite number >= 0 at every step (check the "
                             "schedule's start and end)")


def batches_per_epoch(total_size: int, batch_size: int, streamed: bool) -> int:
    """In-graph draws use N // b full batches per epoch (the N mod b rows left over by an
    epoch's permutation sit that epoch out); a stream's epoch ends with a ragged batch."""
    return max(1, math.ceil(total_size / batch_size)) if streamed else total_size // batch_size


def _columns(model: Model) -> list[VarSpec]:
    return model.data_vars + model.observed


def frame_columns(data):
    """A pandas or polars DataFrame (or anything with ``columns`` and ``to_dict``-less
    column access of that kind) as ``{column: NumPy array}``; anything else as given.

    >>> import pandas as pd
    >>> sorted(frame_columns(pd.DataFrame({"x": [1.0, 2.0], "g": [0, 1]})))
    ['g', 'x']
    """
    kind = type(data)
    if kind.__name__ != "DataFrame" or kind.__module__.split(".")[0] not in ("pandas", "polars"):
        return data
    if kind.__module__.startswith("polars"):
        return {str(c): data.get_column(c).to_numpy() for c in data.columns}
    return {str(c): data[c].to_numpy() for c in data.columns}


def _names_read(model: Model, *, derived: bool) -> set:
    """The variables some distribution or encoder reads (``derived``: or a Deterministic
    or Potential)."""
    exprs = [e for v in model.vars.values() for e in (
        [e for _, e in v.dist.params] if v.dist is not None else [])
        + list(v.encoder or ()) + ([v.expr] if derived and v.expr is not None else [])]
    return {n for e in exprs if isinstance(e, Expr) for n in variables_in(e)}


def _unread_data(model: Model) -> set:
    """The Data columns no distribution, encoder, Deterministic or Potential reads."""
    return {v.name for v in model.data_vars} - _names_read(model, derived=True)


def check_batch(model: Model, batch: Mapping, *, where: str, need_rows: bool,
                total_size: Optional[int] = None, optional=(), beyond=()) -> dict:
    """Check and convert one mapping of columns (or a DataFrame); returns float/int
    NumPy arrays. ``optional``: columns that may be missing (a prediction needs no
    observations); those given are checked all the same. ``beyond``: index columns that
    may point past the end of what they index (new groups, drawn from their prior by a
    prediction)."""
    batch = frame_columns(batch)
    if not isinstance(batch, Mapping):
        raise TypeError(f"{where}: expected a dict of arrays, got {type(batch).__name__}")
    ordered = [v.name for v in _columns(model)]
    names = set(ordered)
    allowed = names | ({ROW_INDEX} if need_rows is not None else set())
    unknown = sorted(set(batch) - allowed, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown data name(s) {unknown}; model {model.name!r} reads "
                         f"Data {[v.name for v in model.data_vars]} and Observed "
                         f"{[v.name for v in model.observed]}. Rename or drop the column.")
    missing = sorted(names - set(batch) - set(optional))
    if need_rows and ROW_INDEX not in batch:
        missing.append(ROW_INDEX)
    if missing:
        hint = (f" A streamed batch of a model with Local latents must carry '{ROW_INDEX}': the "
                "rows' numbers 0..N-1, so each row keeps its own q." if ROW_INDEX in missing else "")
        unread = [n for n in missing if n in _unread_data(model)]
        if unread:
            hint += (f" Nothing in model {model.name!r} reads Data {unread}: drop the "
                     "declaration, or pass the column.")
        raise ValueError(f"{where}: missing data for {missing}; pass data={{'name': array, ...}} "
                         f"with every Data and Observed column.{hint}")
    out, length = {}, None
    for name in [n for n in ordered if n in batch] + ([ROW_INDEX] if ROW_INDEX in batch else []):
        try:
            arr = np.asarray(batch[name])
        except ValueError as err:  # nested lists of unequal lengths
            raise ValueError(f"{where}: column {name!r} is not a rectangular array ({err}); give "
                             "an array of shape (rows, ...), every row the same shape") from None
        if arr.ndim == 0:
            raise ValueError(f"{where}: column {name!r} is a scalar; it needs one row per data point")
        if length is None:
            length, first = arr.shape[0], name
            if length == 0:
                raise ValueError(f"{where}: column {name!r} has 0 rows; give at least one row "
                                 "(drop empty batches before they reach klqp)")
            if total_size is not None and length > total_size:
                raise ValueError(f"{where} has {length} rows, more than total_size={total_size}")
        elif arr.shape[0] != length:
            raise ValueError(f"{where}: column {name!r} has {arr.shape[0]} rows but {first!r} has "
                             f"{length}; every column needs the same number of rows")
        if arr.dtype.kind not in "biuf":
            given = getattr(batch[name], "dtype", arr.dtype)  # a pandas column's own dtype
            raise TypeError(
                f"{where}: column {name!r} has dtype {given}; give numbers. Labels or groups "
                "become integer codes 0..K-1: np.unique(column, return_inverse=True)[1], or "
                "a pandas categorical's column.cat.codes")
        if name == ROW_INDEX:
            if arr.dtype.kind not in "iu" or arr.ndim != 1:
                raise ValueError(f"{where}: '{ROW_INDEX}' must be a 1-d integer array of row "
                                 f"numbers, got dtype {arr.dtype} and shape {arr.shape}")
            if total_size is not None and (arr.min() < 0 or arr.max() >= total_size):
                raise ValueError(f"{where}: '{ROW_INDEX}' holds {int(arr.min())}..{int(arr.max())} "
                                 f"but rows are numbered 0..{total_size - 1} (total_size={total_size})")
            values, counts = np.unique(arr, return_counts=True)
            if (counts > 1).any():
                raise ValueError(f"{where}: '{ROW_INDEX}' holds row {int(values[counts > 1][0])} "
                                 f"{int(counts.max())} times; a batch takes each row at most once "
                                 "(draw its rows without replacement)")
            out[name] = arr.astype(np.int64, copy=False)
            continue
        spec = model[name]
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(f"{where}: column {name!r} holds {float(arr[tuple(bad)])} at index "
                             f"{tuple(int(i) for i in bad)}; NaN/inf are not data. Drop or impute "
                             "those rows first.")
        row = arr.shape[1:]
        if spec.role == "data":
            if row != tuple(spec.shape):
                raise ValueError(f"{where}: Data {name!r} has rows of shape {row} but was declared "
                                 f"with shape={tuple(spec.shape)}; fix kq.Data({name!r}, shape=...) "
                                 "or the array")
        else:
            try:
                ok = np.broadcast_shapes(row, tuple(spec.shape)) == row
            except ValueError:
                ok = False
            if ok and len(row) != len(spec.shape) and _reads_rows(model, spec):
                # per-row parameters (rows, *P) broadcast against (rows, *row) from the right:
                # with fewer axes in P the row axis would meet one of the row's own axes
                ok = False
            if not ok:
                inline = (f" A constant array of {length} entries in the model is one array, "
                          "not one entry per row: declare it as data, kq.Data('offset'), and "
                          "pass it in data=" if spec.shape and spec.shape[0] == length else "")
                raise ValueError(f"{where}: Observed {name!r} has rows of shape {row} but its "
                                 "distribution's parameters have per-row shape "
                                 f"{tuple(spec.shape)}; fix the model or the array (a parameter "
                                 "that reads per-row variables needs as many axes per row as the "
                                 f"observation).{inline}")
        if spec.dtype == "int":
            if not np.all(arr == np.round(arr)):
                raise ValueError(f"{where}: column {name!r} must hold whole numbers "
                                 f"({spec.role} {spec.dist or 'index'})")
            support = spec.support
            low = arr.min() if arr.size else 0
            if (support == "boolean" and not np.isin(arr, (0, 1)).all()) or low < 0:
                raise ValueError(f"{where}: column {name!r} has values outside the support of "
                                 f"{spec.dist if spec.dist is not None else 'an index column'} "
                                 f"(min {low}, max {arr.max()})")
            out[name] = arr.astype(np.int64, copy=False)
        else:
            support = spec.support if spec.role == "observed" else "real"
            low = arr.min() if arr.size else 0.0
            high = arr.max() if arr.size else 0.0
            # Gamma, LogNormal and Beta have no finite density at an end of their support
            is_open = spec.dist is not None and spec.dist.family in _OPEN_SUPPORT
            if support == "positive":
                inside = low > 0 if is_open else low >= 0
                shown = "(0, inf)" if is_open else "[0, inf)"
            elif support == "unit_interval":
                inside = (low > 0 and high < 1) if is_open else (low >= 0 and high <= 1)
                shown = "(0, 1)" if is_open else "[0, 1]"
            elif support == "simplex":  # entries > 0 summing to 1 in each row
                sums = arr.sum(axis=-1) if arr.size else np.ones(1)
                inside = low > 0 and bool(np.all(np.abs(sums - 1.0) < 1e-6))
                shown = f"entries > 0 summing to 1 on the last axis; sums in [{sums.min():g}, {sums.max():g}]"
            elif interval_bounds(support):
                lower, upper = interval_bounds(support)
                inside, shown = lower <= low and high <= upper, f"[{lower:g}, {upper:g}]"
            else:
                inside = True
            if not inside:
                raise ValueError(f"{where}: column {name!r} has values in [{low:g}, {high:g}], "
                                 f"outside the support of {spec.dist} ({support}: {shown})")
            out[name] = arr.astype(np.float64, copy=False)
    _check_upper_limits(model, out, where, beyond)
    return out


_OPEN_SUPPORT = ("Gamma", "LogNormal", "Beta", "Weibull")


def _reads_rows(model: Model, spec: VarSpec) -> bool:
    return any(model.vars[n].per_row for _, e in spec.dist.params for n in variables_in(e)
               if n in model.vars)


def _nodes(expr):
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.args)


def _integer_limits(model: Model) -> list:
    """(column, largest value it may hold, why) for integer columns whose range the model
    fixes: a Categorical's labels 0..K-1, an index column's positions in what it indexes
    (JAX would clamp an index past the end, and quietly fit the wrong entry)."""
    from .expr import NumpyOps, evaluate, variables_in

    def value(e):
        env = {n: model.dummy_value(model.vars[n]) for n in variables_in(e)}
        with np.errstate(all="ignore"):
            return np.asarray(evaluate(e, env, NumpyOps))

    limits = []
    for v in list(model.vars.values()) + model.deterministics:
        exprs = [e for _, e in v.dist.params] if v.dist is not None else []
        exprs += [v.expr] if v.expr is not None else []
        exprs += list(v.encoder or ())
        for e in exprs:
            for node in _nodes(e):
                if node.op == "index" and len(node.args) == 2 and node.args[1].op == "var":
                    base, col = node.args[0], node.args[1].attr("name")
                    size = value(base).shape[:1]
                    if size:
                        limits.append((col, size[0] - 1, f"it indexes {base!r}, which has "
                                                         f"{size[0]} entries (0..{size[0] - 1})"))
        if v.role == "observed" and v.dist.family == "Categorical":
            k = value(v.dist.param_dict["logits"]).shape[-1]
            limits.append((v.name, k - 1, f"its {v.dist!r} has {k} categories (labels 0..{k - 1})"))
        if v.role == "observed" and v.dist.family == "OrderedLogistic":
            k = value(v.dist.param_dict["cutpoints"]).shape[-1] + 1
            limits.append((v.name, k - 1, f"its {v.dist!r} has {k - 1} cutpoints, so {k} "
                                          f"categories (labels 0..{k - 1})"))
    return limits


def _check_upper_limits(model: Model, out: dict, where: str, beyond=()) -> None:
    from .expr import NumpyOps, evaluate, variables_in

    for col, high, why in _integer_limits(model):
        arr = out.get(col) if col not in beyond else None
        if arr is not None and arr.size and arr.max() > high:
            at = tuple(int(i) for i in np.argwhere(arr > high)[0])
            raise ValueError(f"{where}: column {col!r} holds {int(arr[at])} at index {at}, but "
                             f"{why}; fix the column or the model's sizes")
    for v in model.observed:
        if v.dist.family != "Binomial" or v.name not in out:
            continue
        n_expr = v.dist.param_dict["n"]
        names = variables_in(n_expr)
        if not all(model.vars[n].role == "data" for n in names):
            continue  # n reads a latent or a parameter: known only in the fit
        with np.errstate(all="ignore"):
            n = np.asarray(evaluate(n_expr, {k: out[k] for k in names}, NumpyOps), dtype=float)
        y = out[v.name]
        if names:  # per-row n: align its row axis with y's
            n = n.reshape(n.shape + (1,) * (y.ndim - n.ndim))
        try:
            over = y > n
        except ValueError:
            continue  # y's rows and n do not broadcast: the row-shape check above names it
        bad_n = ~((n >= 0) & (n == np.round(n)))
        if names and bad_n.any():
            raise ValueError(f"{where}: Binomial n={n_expr!r} of {v.name!r} holds "
                             f"{float(n[tuple(np.argwhere(bad_n)[0])])!r}; the number of trials "
                             "must be a whole number >= 0")
        if over.any():
            at = tuple(int(i) for i in np.argwhere(over)[0])
            raise ValueError(f"{where}: column {v.name!r} holds "
                             f"{int(np.broadcast_to(y, over.shape)[at])} at index {at}, more than "
                             f"n={float(np.broadcast_to(n, over.shape)[at])!r} trials of its "
                             f"{v.dist!r}; a Binomial count is 0..n")


def _positive_int(name: str, value, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer; {fix}")
    return int(value)


def make_problem(model: Model, data, *, batch_size=None, total_size=None, beta=None,
                 beta_global=None, beta_local=None, likelihood_weight=1.0,
                 scale_cost_to_minibatch: bool = False) -> Problem:
    """Validate everything and build a :class:`Problem` (no backend code runs)."""
    if not isinstance(model, Model):
        raise TypeError(f"expected a kq.Model, got {type(model).__name__}")
    if not model.observed and not any(v.per_row for v in model.potentials):
        raise ModelError(f"model {model.name!r} has no kq.Observed variable (nor a per-row "
                         "kq.Potential reading the data): nothing to fit")
    if not model.observed and not model.data_vars:
        raise ModelError(f"model {model.name!r}: without a kq.Observed, its per-row kq.Potential "
                         "must read a kq.Data column (the rows the batches take)")
    if not model.latents:
        raise ModelError(f"model {model.name!r} has no kq.Global or kq.Local latent: nothing to infer")
    if total_size is not None:
        total_size = _positive_int("total_size", total_size,
                                   "it is N, the number of rows in the full data set")
    if total_size is not None and model.total_size is not None and total_size != model.total_size:
        raise ValueError(f"total_size={total_size} disagrees with the model's total_size="
                         f"{model.total_size}; give one of them")
    n = total_size if total_size is not None else model.total_size
    if n is not None:
        n = _positive_int("total_size", n, "it is N, the number of rows in the full data set")
    if not isinstance(scale_cost_to_minibatch, (bool, np.bool_)):
        raise TypeError(f"scale_cost_to_minibatch={scale_cost_to_minibatch!r} must be True or False")

    columns, stream = None, None
    data = frame_columns(data)  # a DataFrame is its columns, not a stream of rows
    if isinstance(data, Mapping):
        columns = check_batch(model, data, where="data", need_rows=None)
        rows = next(iter(columns.values())).shape[0]
        if n is None:
            n = rows
        elif rows != n:
            raise ValueError(f"data has {rows} rows but total_size={n}. In-memory data must hold "
                             "all N rows (klqp draws the minibatches); to feed batches yourself, "
                             "pass an iterable of batch dicts and total_size=N")
    elif data is not None and hasattr(data, "__iter__") and not isinstance(
            data, (str, bytes, np.ndarray)):
        if n is None and isinstance(getattr(data, "total_size", None), (int, np.integer)):
            n = int(data.total_size)  # a stream that knows N (kq.data.parquet)
        streamed_b = getattr(data, "global_batch_size", None)
        if isinstance(streamed_b, (int, np.integer)):  # a stream that knows its b
            if batch_size is None:
                batch_size = int(streamed_b)
            elif batch_size != streamed_b:
                raise ValueError(f"batch_size={batch_size} disagrees with the stream's {streamed_b} "
                                 "rows a step (its batch_size times the processes); leave "
                                 "batch_size out")
        if hasattr(data, "with_columns"):
            data = _read_only_model_columns(model, data)
        if n is None:
            raise ValueError("streamed batches need total_size=N (the size of the full data set); "
                             "klqp never guesses N from a loader's length")
        if hasattr(data, "__len__") and len(data) == 0:
            raise ValueError(f"data is an empty {type(data).__name__} of batches; give at least "
                             "one batch dict (an empty loader would never yield a step)")
        if isinstance(data, (list, tuple)):  # batches already in memory: check them now
            for i, batch in enumerate(data):
                where = f"streamed batch {i} (of the {len(data)} in data)"
                check_batch(model, batch, where=where, need_rows=bool(model.free_locals),
                            total_size=n)
        stream = data
    else:
        raise TypeError(f"data must be a dict of arrays or an iterable of batch dicts, got "
                        f"{type(data).__name__}")

    if batch_size is None:
        batch_size = n if stream is None else None
    if stream is not None and batch_size is None:
        batch_size = n  # only sets batches/epoch for Blundell; each step uses its batch's b
    b = _positive_int("batch_size", batch_size, "it is the number of rows per step")
    if b > n:
        raise ValueError(f"batch_size={b} is larger than total_size={n}; use batch_size <= {n}")
    _check_encoders(model, columns)
    _check_params_read(model)
    for name, value in (("beta", beta), ("beta_global", beta_global), ("beta_local", beta_local),
                        ("likelihood_weight", likelihood_weight)):
        if isinstance(value, np.ndarray) and value.ndim:
            raise TypeError(f"{name}= is an array of shape {value.shape}; a weight is one number, "
                            "a kq.Shared or a kq.schedules schedule")
    num_batches = batches_per_epoch(n, b, stream is not None)  # Blundell's M
    weights = resolve_weights(beta=beta, beta_global=beta_global, beta_local=beta_local,
                              likelihood_weight=likelihood_weight, num_batches=num_batches)
    for name, w in weights.items():
        if not isinstance(w, Shared):  # a Shared checks its own values
            check_schedule(name, w)
    return Problem(model=model, total_size=n, batch_size=b, weights=weights,
                   scale_cost_to_minibatch=bool(scale_cost_to_minibatch), data=columns,
                   stream=stream)


def _read_only_model_columns(model: Model, stream):
    """A column stream (kq.data.parquet) reading only the columns the model reads; a
    column the model needs and the stream lacks is refused here, before any compile."""
    wanted = [v.name for v in model.vars.values() if v.role in ("data", "observed")]
    have = list(getattr(stream, "columns", None) or [])
    missing = [c for c in wanted if c not in have]
    if missing:
        raise ValueError(f"the model reads {missing[0]!r} but the stream {stream!r} has no such "
                         f"column (its columns: {have}); write it to the files or rename it")
    return stream if have == wanted else stream.with_columns(wanted)


def _check_params_read(model: Model) -> None:
    """A kq.Param that no distribution or encoder reads has no gradient: nothing would fit
    it (PyMC's gradient refuses such an input outright)."""
    read = _names_read(model, derived=False)
    unread = [v.name for v in model.params if v.name not in read]
    if unread:
        raise ModelError(f"model {model.name!r}: kq.Param {unread} is read by no distribution "
                         "or encoder, so nothing would fit it; use it in an expression or drop "
                         "the declaration")


def _check_encoders(model: Model, columns: Optional[dict]) -> None:
    """An amortized local's encoder may read Data, Observed and Param variables; its
    (loc, scale) must have the latent's per-row shape."""
    from .expr import NumpyOps, evaluate, variables_in

    for v in model.locals:
        if not v.amortized:
            continue
        names = {n for e in v.encoder for n in variables_in(e)}
        for n in sorted(names):
            if n not in model.vars or model.vars[n].role in ("global", "local"):
                raise ModelError(f"Local {v.name!r}: its encoder reads {n!r}, which is not a Data, "
                                 f"Observed or Param variable of model {model.name!r}")
        for rows in PROBE_ROWS:  # two row counts: an encoder that mixes rows shows at one
            env = {}
            for n in names:
                spec = model.vars[n]
                if spec.per_row and columns is not None and n in columns:
                    env[n] = np.zeros((rows,) + columns[n].shape[1:])
                else:
                    env[n] = model.dummy_value(spec, rows)
            with np.errstate(all="ignore"):
                for part, e in zip(("loc", "scale"), v.encoder):
                    try:
                        shape = np.shape(evaluate(e, env, NumpyOps))
                    except (ValueError, IndexError) as err:
                        raise ModelError(f"Local {v.name!r}: encoder {part} has inconsistent "
                                         f"shapes ({err}); check the encoder's input "
                                         "sizes") from None
                    if shape[:1] != (rows,):
                        raise ModelError(f"Local {v.name!r}: the encoder's {part} has shape "
                                         f"{shape} for {rows} rows: it does not keep the data "
                                         "axis first; use negative axes in the encoder")
                    if shape != (rows,) + tuple(v.shape):
                        raise ModelError(f"Local {v.name!r}: the encoder's {part} has per-row "
                                         f"shape {shape[1:]} but the latent has shape "
                                         f"{tuple(v.shape)}")


def _init_param(spec: VarSpec, rng) -> np.ndarray:
    if isinstance(spec.init, str):
        if spec.init == "zeros" or len(spec.shape) < 2:
            return np.zeros(spec.shape)
        fan_in, fan_out = spec.shape[-2], spec.shape[-1]
        return np.sqrt(2.0 / (fan_in + fan_out)) * rng.standard_normal(spec.shape)
    return np.broadcast_to(np.asarray(spec.init, dtype=float), spec.shape).copy()


def init_params(problem: Problem, seed: int = 0, init_scale: float = 0.1) -> dict:
    """Initial parameters, the same for every backend.

    Latents with q parameters: ``{name: {"loc", "scale"}}`` in unconstrained space (free
    locals carry all N rows; loc ~ N(0, 0.1^2) breaks symmetry). Point parameters:
    ``{name: {"value"}}``. Amortized locals have none of their own (their encoder's
    weights are Params or Globals).
    """
    rng = np.random.default_rng(seed)
    params = {}
    for v in problem.model.vars.values():
        if v.role == "param":
            params[v.name] = {"value": _init_param(v, rng)}
        elif v.role == "global" or (v.role == "local" and not v.amortized):
            shape = ((problem.total_size,) if v.role == "local" else ()) + tuple(v.shape)
            params[v.name] = {"loc": 0.1 * rng.standard_normal(shape),
                              "scale": np.full(shape, float(init_scale))}
    return params
