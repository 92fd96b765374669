"""Using a fit on rows: posterior predictive draws, held-out log predictive densities,
q(z_i) for new rows and named quantities. ``FitResult.predict``, ``evaluate``,
``fit_locals``, ``log_predictive_density`` and ``elpd`` are thin wrappers of these.

Every function reads q as the fit reports it (``result.params``) and computes in NumPy;
only ``fit_locals`` calls the fit's backend, for its local step on the new rows. The
locals of the rows at hand come from one of:

- the training rows' q, when ``data`` is None (the training data, in memory);
- ``"fit"``: q(z_i) fitted to each new row's observations by the local step (the
  Newton step training uses, ``klqp.steps``), at the reported q(globals), which it
  never changes. An amortized local starts from its encoder's q and is refined;
- ``"encoder"``: an amortized local's encoder's q, as is;
- ``"prior"``: z_i drawn from p(z_i | globals, x_i), for rows with no observations yet
  (a new group, a new user).

Draws and seeds: draw d of a Global is ``result.sample(name, S, seed)[d]`` (its own
stream ``[seed, position]``); a local's draws for the rows at hand come from its q
with the same stream (on the training rows: ``result.sample(name, S, seed)`` again)
or from its prior with ``[seed, position, 1]``; an Observed's from ``[seed,
len(latents) + k, 1]`` (k: its position among the Observed). The draws never involve the backend, so two
fits with the same q give the same draws on both backends.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import numpy as np

from . import backends, densities, transforms
from .expr import NumpyOps, evaluate, variables_in
from .model import Model
from .problem import check_batch, make_problem
from .steps import LocalStep

__all__ = ["LOCALS", "rows_for", "new_levels", "columns_read", "fit_locals", "draws", "predict", "evaluate_expr",
           "log_predictive_density", "elpd", "LogPredictiveDensity", "ELPD"]

#: How ``predict``, ``log_predictive_density`` and ``elpd`` get the locals of new rows.
LOCALS = ("fit", "encoder", "prior")

_LOG_2PI = math.log(2.0 * math.pi)


class LogPredictiveDensity(NamedTuple):
    """Per-row log p(y_i | training data) (``value``, shape (n,)), the Monte-Carlo
    standard error of each estimate (``mc_se``) and the effective sample size of each
    row's importance weights (``ess``, (sum w)^2 / sum w^2, at most the number of
    draws): a small one (tens) means heavy-tailed weights, and then ``mc_se`` itself is
    unreliable; raise ``num_samples`` or fit the locals (``locals="fit"``)."""

    value: np.ndarray
    mc_se: np.ndarray
    ess: np.ndarray


@dataclass(frozen=True)
class ELPD:
    """Expected log pointwise predictive density of some rows, estimated over q.

    ``elpd``: the sum over the n rows of log p(y_i | training data); ``mc_se``: its
    Monte-Carlo standard error (draws of q are shared by the rows, so it is not the rows'
    errors added in quadrature); ``se``: sqrt(n) x the rows' standard deviation, ArviZ's
    ``se`` of an elpd, the one to compare two models by; ``per_row`` and
    ``per_row_mc_se``: each row's value and its Monte-Carlo error; ``locals``: how the
    rows' locals were taken ("fit", "encoder", "prior", "training" or "none");
    ``min_ess``: the smallest effective sample size of a row's weights (see
    :class:`LogPredictiveDensity`).
    """

    elpd: float
    mc_se: float
    se: float
    per_row: np.ndarray
    per_row_mc_se: np.ndarray
    num_samples: int
    locals: str
    min_ess: float = float("nan")

    @property
    def n(self) -> int:
        return len(self.per_row)

    @property
    def per_row_mean(self) -> float:
        """elpd / n: nats per row."""
        return self.elpd / self.n

    def __repr__(self) -> str:
        return (f"ELPD(elpd={self.elpd:.3f}, mc_se={self.mc_se:.3f}, se={self.se:.3f}, "
                f"n={self.n}, per row {self.per_row_mean:.4f}, num_samples={self.num_samples}, "
                f"locals={self.locals!r}, min_ess={self.min_ess:.0f})")


# -- the rows ---------------------------------------------------------------------------
def rows_for(result, data, *, where: str, need: Optional[set] = None,
             new_groups: bool = False) -> tuple[dict, bool]:
    """(columns, training?) for ``data``: the training data when ``data`` is None, else
    ``data`` checked as kq.fit checks a batch (unknown names, shapes, NaN, index ranges,
    supports), with the columns outside ``need`` optional (None: every Data column needed,
    the Observed optional). With ``new_groups``, the index columns of ``new_levels``
    may point past the end (see ``new_levels``)."""
    model = result.model
    if data is None:
        if result.problem.data is None:
            raise ValueError(f"{where}: this fit streamed its batches, so the training rows "
                             "are not in memory; pass the rows as data={...}")
        return result.problem.data, True
    columns = [v.name for v in model.data_vars + model.observed]
    if need is None:
        need = {v.name for v in model.data_vars}
    optional = [n for n in columns if n not in need]
    beyond = new_levels(model) if new_groups else {}
    out = check_batch(model, data, where=where, need_rows=False, optional=optional,
                      beyond=beyond)
    if not out:
        raise ValueError(f"{where}: data has no columns, so it says nothing about how many rows "
                         f"to predict; pass the rows' Data columns {sorted(need) or ''} (a model "
                         "without Data: its Observed column, whose values are then unused)")
    return out, False


def _uses(model: Model) -> tuple[dict, set]:
    """({index column: [bases it indexes]}, names read other than as ``name[column]``)
    over the model's priors, likelihoods and Deterministics."""
    exprs = [e for v in model.vars.values() if v.dist is not None for _, e in v.dist.params]
    exprs += [v.expr for v in model.deterministics]
    indexed, other, stack = {}, set(), list(exprs)
    while stack:
        node = stack.pop()
        if node.op == "index" and len(node.args) == 2 and node.args[1].op == "var":
            base, column = node.args
            indexed.setdefault(column.attr("name"), []).append(base)
            if base.op == "var":
                continue  # the base is read only through its column
        elif node.op == "var":
            other.add(node.attr("name"))
        stack.extend(node.args)
    return indexed, other


def new_levels(model: Model) -> dict:
    """{index column: [Globals it indexes]} for columns every use of which indexes a
    Global that is read only as ``a[column]`` and whose prior is the same for each entry
    along its first axis (``a ~ N(mu, tau)`` of shape (G,), ``a_raw ~ N(0, 1)``): a row
    whose index is G or more belongs to a group the fit never saw, whose entry a
    prediction draws from that prior."""
    indexed, other = _uses(model)
    out = {}
    for column, bases in indexed.items():
        names = []
        for base in bases:
            spec = model.vars.get(base.attr("name")) if base.op == "var" else None
            if (spec is None or spec.role != "global" or spec.name in other
                    or not _same_for_each_level(model, spec)):
                break
            names.append(spec.name)
        else:
            out[column] = sorted(set(names))
    return out


def _same_for_each_level(model: Model, spec) -> bool:
    ndim = len(spec.shape)
    for _, e in spec.dist.params:
        env = {n: model.dummy_value(model.vars[n]) for n in variables_in(e)}
        with np.errstate(all="ignore"):
            shape = np.shape(evaluate(e, env, NumpyOps))
        if len(shape) == ndim and shape[0] != 1:
            return False
    return True


def columns_read(model: Model, names) -> set:
    """The Data and Observed columns that computing ``names`` reads, through Locals'
    priors and encoders and Deterministics' expressions."""
    seen, stack, out = set(), list(names), set()
    while stack:
        name = stack.pop()
        if name in seen or (name not in model.vars and name not in model.deterministic_vars):
            continue
        seen.add(name)
        spec = model[name]
        if spec.role in ("data", "observed"):
            out.add(name)
        exprs = list(spec.encoder or ())
        if spec.dist is not None and spec.role != "observed":
            exprs += [e for _, e in spec.dist.params]
        if spec.expr is not None:
            exprs.append(spec.expr)
        stack.extend(n for e in exprs for n in variables_in(e))
    return out


def _rows(columns: dict) -> int:
    return len(next(iter(columns.values())))


def _need_observed_read(model: Model, columns: dict, where: str) -> None:
    """The encoders' columns must be there (a VAE's encoder reads the image itself)."""
    read = columns_read(model, [v.name for v in model.locals])
    missing = sorted(read - set(columns))
    if missing:
        raise ValueError(f"{where}: data has no {missing}, which the encoder(s) read; pass "
                         "them, or use locals='prior'")


def _need_observed(model: Model, columns: dict, where: str, why: str) -> None:
    missing = [v.name for v in model.observed if v.name not in columns]
    if missing:
        raise ValueError(f"{where}: data has no {missing}; {why}")


# -- q(z_i) for the rows at hand --------------------------------------------------------
def _encoder_q(result, spec, columns: dict) -> dict:
    env = {**columns, **{v.name: result.params[v.name]["value"] for v in result.model.params}}
    loc, scale = (np.asarray(evaluate(e, env, NumpyOps), dtype=float) for e in spec.encoder)
    shape = (_rows(columns),) + tuple(spec.shape)
    return {"loc": np.broadcast_to(loc, shape).copy(), "scale": np.broadcast_to(scale, shape).copy()}


def _for_new_rows(model: Model, free_encoded: bool) -> Model:
    """``model`` for a problem over the new rows alone: no total_size of its own (the
    rows at hand are all there is), no Deterministics, and with ``free_encoded`` every
    amortized local made free (its own q per row) and the Params only an encoder read
    dropped: the model the local step refines them in."""
    read = set()
    for v in model.vars.values():
        if v.dist is not None:
            read.update(n for _, e in v.dist.params for n in variables_in(e))
    for v in model.potentials:
        read.update(variables_in(v.expr))
    d = model.objective_dict()
    d["total_size"] = None
    if free_encoded:
        kept = []
        for entry in d["variables"]:
            if entry["role"] == "param" and entry["name"] not in read:
                continue
            entry.pop("encoder", None)
            kept.append(entry)
        d["variables"] = kept
    return Model.from_dict(d)


def fit_locals(result, data, *, refine: bool = True, max_iterations: int = 200,
               tol: Optional[float] = None) -> dict:
    """q(z_i) for the rows of ``data``, given their observations: ``{local: {"loc",
    "scale"}}`` in unconstrained space, one row per row of ``data``.

    A free local is fitted by the local step (guarded Newton iterations on each row's
    part of the ELBO at beta = T = 1, the globals at their reported q, the Params at
    their values; no row's objective ever falls), from loc 0 until no row's objective
    rises by more than ``tol`` nats in an iteration (default 1e-3 in float64, 1e-2 in
    float32) or after ``max_iterations`` (a RuntimeWarning then says how far it was).
    An amortized local takes its encoder's q, refined the same way when ``refine``. The
    globals never change.
    """
    where = "fit_locals(data=...)"
    model = result.model
    columns, _ = rows_for(result, data, where=where,
                          need={v.name for v in model.data_vars + model.observed})
    amortized = [v for v in model.locals if v.amortized]
    out = {v.name: _encoder_q(result, v, columns) for v in amortized}
    targets = model.free_locals + (amortized if refine else [])
    if not targets:
        return out
    n = _rows(columns)
    fitted = _for_new_rows(model, free_encoded=bool(amortized and refine))
    problem = make_problem(fitted, columns, batch_size=n, total_size=n, beta=1.0,
                           likelihood_weight=1.0)
    objective = backends.get(result.backend).compile(problem, local_step=LocalStep())
    params = objective.init_params(seed=0)
    for name in params:
        if name in result.params and name not in out and fitted[name].role != "local":
            params[name] = {k: np.asarray(a, dtype=float) for k, a in result.params[name].items()}
    for name, q in out.items():
        params[name] = q
    tol = tol if tol is not None else (1e-3 if objective.dtype == "float64" else 1e-2)
    rows = np.arange(n)

    def row_objective(p):  # f_i = E[l_i] + sum log s_i, what the local step raises
        value = objective.local_expectations(p, indices=rows)["value"]
        return value + sum(_per_row(np.log(p[v.name]["scale"]), n) for v in targets)

    current = row_objective(params)
    for _ in range(max_iterations):
        params = objective.local_step(params, indices=rows)
        new = row_objective(params)
        gain, current = float(np.max(new - current)), new
        if gain <= tol:
            break
    else:
        warnings.warn(f"fit_locals: the local step had not settled after {max_iterations} "
                      f"iterations (a row's objective still rose {gain:.2g} nats > tol "
                      f"{tol:.2g} in the last); pass a larger max_iterations", RuntimeWarning,
                      stacklevel=3)
    out.update({v.name: {"loc": params[v.name]["loc"], "scale": params[v.name]["scale"]}
                for v in targets})
    return out


def _locals_q(result, columns: dict, training: bool, locals: Optional[str], where: str,
              new_groups: bool = False) -> dict:
    """{local: {"loc", "scale"}} for the rows at hand, or {} for ``"prior"``."""
    model = result.model
    if not model.locals:
        return {}
    if locals is None:
        if training:
            return {v.name: result.q(v.name) for v in model.locals}
        locals = "fit"
    if locals not in LOCALS:
        raise ValueError(f"{where}: locals={locals!r}; use 'fit' (q(z_i) fitted to the rows' "
                         "observations), 'encoder' (an amortized local's encoder) or 'prior' "
                         "(z_i from its prior: rows with no observations yet)")
    if locals == "prior":
        return {}
    if locals == "encoder":
        free = [v.name for v in model.free_locals]
        if free:
            raise ValueError(f"{where}: locals='encoder', but {free} have no encoder (free "
                             "locals); use locals='fit' or 'prior'")
        _need_observed_read(model, columns, where)
        return {v.name: _encoder_q(result, v, columns) for v in model.locals}
    _need_observed(model, columns, where, "locals='fit' fits q(z_i) to each row's "
                   "observations; pass them, or use locals='prior' for rows with no "
                   "observations yet (a new group, a new user)")
    for column, names in (new_levels(model).items() if new_groups else ()):
        size = min(model[n].shape[0] for n in names)
        if column in columns and columns[column].max() >= size:
            raise ValueError(f"{where}: column {column!r} holds {int(columns[column].max())}, a "
                             f"group the fit never saw ({names} have {size} entries), and "
                             "locals='fit' would fit those rows' locals at an entry that is only "
                             "drawn while predicting; pass locals='prior' for the rows of new "
                             "groups (and locals='fit' for rows of known groups, separately)")
    return fit_locals(result, columns)


def locals_label(result, training: bool, locals: Optional[str]) -> str:
    if not result.model.locals:
        return "none"
    if locals is None:
        return "training" if training else "fit"
    return locals


# -- draws -------------------------------------------------------------------------------
class Draw(NamedTuple):
    """One joint draw of q for the rows at hand: ``env`` holds every variable's value
    (columns, Params, Globals, Locals); ``log_ratio`` is, per row, log p(z_i | .) - log
    q(z_i) of the locals drawn from q (0 for locals drawn from their prior)."""

    env: dict
    log_ratio: np.ndarray


def draws(result, columns: dict, local_q: dict, num_samples: int, seed: int,
          with_locals: bool = True, new_groups: bool = False) -> Iterator[Draw]:
    """``num_samples`` joint draws: the globals from q, the locals from ``local_q``
    (their q for these rows) or, when absent there, from their prior (none at all
    without ``with_locals``). With ``new_groups``, a Global indexed past its end by
    these rows (``new_levels``) gets its new entries drawn from its prior, one set per
    draw (new entry k has its own stream ``[seed, position, 2, k]``, so a new group's
    draws do not depend on the other rows), shared by the rows of each new group."""
    model = result.model
    n = _rows(columns)
    latents = [v.name for v in model.latents]
    glob = {v.name: result.sample(v.name, num_samples, seed) for v in model.globals}
    extra = {}  # Global -> how many new entries these rows need
    for column, names in (new_levels(model).items() if new_groups else ()):
        if column in columns:
            for name in names:
                count = int(columns[column].max()) + 1 - model[name].shape[0]
                extra[name] = max(extra.get(name, 0), count)
    extra = {v.name: extra[v.name] for v in model.globals if extra.get(v.name, 0) > 0}
    level_streams = {k: [np.random.default_rng([seed, latents.index(k), 2, model[k].shape[0] + j])
                         for j in range(count)] for k, count in extra.items()}
    streams = {v.name: np.random.default_rng([seed, latents.index(v.name)]
                                             + ([] if v.name in local_q else [1]))
               for v in model.locals}
    base = {**columns, **{v.name: result.params[v.name]["value"] for v in model.params}}
    for d in range(num_samples):
        env = {**base, **{k: a[d] for k, a in glob.items()}}
        for name, count in extra.items():  # in model order: a prior reads earlier Globals
            spec = model[name]
            p = {k: evaluate(e, env, NumpyOps) for k, e in spec.dist.params}
            new = [densities.sample(spec.dist.family, p, rng, shape=(1,) + tuple(spec.shape[1:]))
                   for rng in level_streams[name]]
            env[name] = np.concatenate([env[name], *new])
        log_ratio = np.zeros(n)
        for v in model.locals if with_locals else ():
            rng = streams[v.name]
            if v.name in local_q:
                loc, scale = local_q[v.name]["loc"], local_q[v.name]["scale"]
                u = loc + scale * rng.standard_normal(np.shape(loc))
                z = transforms.forward(v.support, u)
                p = {k: evaluate(e, env, NumpyOps) for k, e in v.dist.params}
                log_prior = densities.logpdf(v.dist.family, z, p)
                log_q = (-0.5 * ((u - loc) / scale) ** 2 - np.log(scale) - 0.5 * _LOG_2PI
                         - transforms.log_abs_det_jacobian(v.support, u))
                log_ratio += (_per_row(densities.per_value(v.dist.family, log_prior, np.shape(u)), n)
                              - _per_row(log_q, n))
            else:
                p = {k: evaluate(e, env, NumpyOps) for k, e in v.dist.params}
                z = densities.sample(v.dist.family, p, rng, shape=(n,) + tuple(v.shape))
            env[v.name] = z
        yield Draw(env, log_ratio)


def _per_row(values, n: int) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(n, -1).sum(axis=1)


def _observed_params(spec, env) -> dict:
    return {k: evaluate(e, env, NumpyOps) for k, e in spec.dist.params}


def predict(result, data=None, num_samples: int = 1000, seed: int = 0,
            locals: Optional[str] = None, new_groups: bool = False) -> dict:
    """Posterior predictive draws for the rows of ``data`` (the training rows when
    None): ``{name: array (num_samples, n, ...)}`` for every Observed and every
    Deterministic (a Deterministic that reads no per-row variable: (num_samples, ...))."""
    where = "result.predict(data=...)"
    model = result.model
    _check_count(num_samples, where)
    columns, training = rows_for(result, data, where=where, need=_needed(model, locals, data),
                                 new_groups=new_groups)
    local_q = _locals_q(result, columns, training, locals, where, new_groups)
    n = _rows(columns)
    obs_streams = {v.name: np.random.default_rng([seed, len(model.latents) + k, 1])
                   for k, v in enumerate(model.observed)}
    out = {v.name: [] for v in model.observed + model.deterministics}
    for draw in draws(result, columns, local_q, num_samples, seed, new_groups=new_groups):
        for v in model.observed:
            family = v.dist.family
            out[v.name].append(densities.sample(family, _observed_params(v, draw.env),
                                                obs_streams[v.name], shape=(n,) + tuple(v.shape),
                                                component=v.dist.component))
        for v in model.deterministics:
            out[v.name].append(np.asarray(evaluate(v.expr, draw.env, NumpyOps), dtype=float))
    return {k: np.stack(a) for k, a in out.items()}


def _needed(model: Model, locals: Optional[str], data) -> set:
    """Columns ``predict`` cannot do without: every Data column, and the columns the
    encoders read with ``"encoder"`` (``"fit"`` names missing Observed itself)."""
    need = {v.name for v in model.data_vars}
    if locals == "encoder":
        need |= columns_read(model, [v.name for v in model.locals])
    return need


def evaluate_expr(result, expr, data=None, num_samples: int = 0, seed: int = 0,
                  locals: Optional[str] = None, new_groups: bool = False) -> np.ndarray:
    """``expr`` under q on the rows of ``data`` (see ``FitResult.evaluate``)."""
    where = "result.evaluate(data=...)"
    model = result.model
    names = variables_in(expr)
    unknown = [n for n in names if n not in model.vars]
    if unknown:
        raise ValueError(f"{where}: the expression reads {unknown}, which model "
                         f"{model.name!r} does not declare (it has {list(model.vars)})")
    reads_locals = any(model.vars[n].role == "local" for n in names)
    need = columns_read(model, names)
    if reads_locals and data is not None and locals in (None, "fit") and any(
            not v.amortized for v in model.locals):
        need |= {v.name for v in model.data_vars + model.observed}
    if data is None and not any(model.vars[n].per_row for n in names):
        columns, training = {}, False
    else:
        columns, training = rows_for(result, data, where=where, need=need,
                                     new_groups=new_groups)
    if reads_locals and locals is None and not training and all(
            v.amortized for v in model.locals):
        locals = "encoder"  # an encoder needs no fit: new rows take its q, as before
    local_q = (_locals_q(result, columns, training, locals, where, new_groups)
               if reads_locals else {})
    if num_samples <= 0:
        if new_groups:
            raise ValueError(f"{where}: new_groups=True draws the new groups' entries from "
                             "their prior, which has no single value; pass num_samples > 0")
        return _at_means(result, expr, columns, local_q, reads_locals, where)
    rows = columns or {"": np.zeros(1)}  # globals and Params only: one placeholder row
    return np.stack([np.asarray(evaluate(expr, d.env, NumpyOps))
                     for d in draws(result, rows, local_q, num_samples, seed,
                                    with_locals=reads_locals, new_groups=new_groups)])


def _at_means(result, expr, columns, local_q, reads_locals, where) -> np.ndarray:
    """``expr`` with the globals at q's mean in their own space and the locals at the
    mean of their q for these rows (an amortized local's encoder loc pushed through its
    transform, as ``evaluate`` always took it)."""
    model = result.model
    env = {**columns, **{v.name: result.params[v.name]["value"] for v in model.params}}
    for v in model.globals:
        env[v.name] = result.mean(v.name)
        if v.support == "corr_cholesky":  # E[L]'s rows are shorter than 1: unit rows again
            env[v.name] = env[v.name] / np.linalg.norm(env[v.name], axis=-1, keepdims=True)
    if reads_locals:
        for v in model.locals:
            if v.name not in local_q:
                raise ValueError(f"{where}: locals='prior' has no single value; pass "
                                 "num_samples > 0 to draw the locals from their prior")
            q = local_q[v.name]
            env[v.name] = (transforms.forward(v.support, q["loc"]) if v.amortized else
                           transforms.moments(v.support, q["loc"], q["scale"])[0])
    return np.asarray(evaluate(expr, env, NumpyOps))


def _check_count(num_samples, where: str) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or (
            num_samples < 1):
        raise ValueError(f"{where}: num_samples={num_samples!r} must be a positive integer "
                         "(the number of draws of q), e.g. num_samples=1000")


# -- held-out scores ---------------------------------------------------------------------
def _log_weights(result, data, num_samples: int, seed: int, locals: Optional[str],
                 where: str, new_groups: bool = False) -> tuple[np.ndarray, str]:
    """(num_samples, n) log w_di = log p(y_i | theta_d, z_di) + log p(z_di | theta_d) -
    log q(z_di): importance weights of p(y_i | training data) = E_q[w_i]."""
    model = result.model
    _check_count(num_samples, where)
    if not model.observed:
        raise ValueError(f"{where}: model {model.name!r} has no kq.Observed, so there is no "
                         "p(y_i | .) to score; a kq.Potential is an unnormalized term, not a "
                         "predictive density (write the likelihood as a kq.Observed, e.g. "
                         "with kq.Mixture, to score it)")
    need = {v.name for v in model.data_vars + model.observed}
    columns, training = rows_for(result, data, where=where, need=need, new_groups=new_groups)
    local_q = _locals_q(result, columns, training, locals, where, new_groups)
    n = _rows(columns)
    out = np.empty((num_samples, n))
    for d, draw in enumerate(draws(result, columns, local_q, num_samples, seed,
                                   new_groups=new_groups)):
        total = draw.log_ratio.copy()
        for v in model.observed:
            y = columns[v.name]
            logp = densities.logpdf(v.dist.family, y, _observed_params(v, draw.env),
                                    v.dist.component)
            total += _per_row(densities.per_value(v.dist.family, logp, y.shape), n)
        out[d] = total
    return out, locals_label(result, training, locals)


def _logmeanexp(a: np.ndarray) -> np.ndarray:
    top = np.max(a, axis=0)
    return top + np.log(np.mean(np.exp(a - top), axis=0))


def log_predictive_density(result, data=None, num_samples: int = 1000, seed: int = 0,
                           locals: Optional[str] = None,
                           new_groups: bool = False) -> LogPredictiveDensity:
    """Per-row log p(y_i | training data) ~= log (1/S) sum_d w_di, with its Monte-Carlo
    standard error (the delta method: sd_d(w_di / mean w_i) / sqrt(S))."""
    log_w, _ = _log_weights(result, data, num_samples, seed, locals,
                            "result.log_predictive_density(data=...)", new_groups)
    value = _logmeanexp(log_w)
    ratio = np.exp(log_w - value)
    se = ratio.std(axis=0, ddof=1) / np.sqrt(num_samples) if num_samples > 1 else np.full_like(
        value, np.nan)
    return LogPredictiveDensity(value, se, _ess(ratio))


def _ess(ratio: np.ndarray) -> np.ndarray:
    """Each row's importance-sampling effective sample size, (sum w)^2 / sum w^2."""
    return ratio.sum(axis=0) ** 2 / (ratio ** 2).sum(axis=0)


def elpd(result, data=None, num_samples: int = 1000, seed: int = 0,
         locals: Optional[str] = None, new_groups: bool = False) -> ELPD:
    """sum_i log p(y_i | training data) over the rows of ``data`` (see :class:`ELPD`)."""
    log_w, label = _log_weights(result, data, num_samples, seed, locals,
                                "result.elpd(data=...)", new_groups)
    per_row = _logmeanexp(log_w)
    ratio = np.exp(log_w - per_row)  # mean 1 over draws for each row
    n = len(per_row)
    if num_samples > 1:
        row_se = ratio.std(axis=0, ddof=1) / np.sqrt(num_samples)
        # the draws of the globals are shared by the rows: the sum's error is that of
        # sum_i (w_di / mean w_i), one figure per draw, not the rows' added in quadrature
        mc_se = float(ratio.sum(axis=1).std(ddof=1) / np.sqrt(num_samples))
    else:
        row_se, mc_se = np.full(n, np.nan), float("nan")
    se = float(np.sqrt(n) * per_row.std(ddof=1)) if n > 1 else float("nan")
    return ELPD(float(per_row.sum()), mc_se, se, per_row, row_se, num_samples, label,
                float(_ess(ratio).min()))
