"""The PyMC fit's state as plain arrays, and its host-side randomness.

The state (``FitState.optimizer``) is a list of NumPy arrays in ``state_layout``'s order,
named by it: q's parameters (what ``pm.adam`` moves: the global group's flat mu and rho and
each ``kq.Param``; what the row-wise Adam moves: each free local's N-row loc and rho), the
optimizers' moments and counts, and the global step's running curvature and averages.
``initial_state``, ``params_from_state`` and ``check_state`` convert it from q's initial
parameters, to q's reported parameters and from a resumed fit's named arrays. The compiled
step (``klqp_pymc.train``) holds the same arrays in shared variables.

Randomness lives on the host and depends only on (seed, step): in-memory rows come from
``klqp.training.epoch_order`` (a fresh permutation each epoch, N // b batches per epoch,
uniform without replacement; the NumPyro backend takes the same rows; drawn by
``klqp_pymc.program``), noise from a generator seeded with (seed, step) (``draw_noise``,
``draw_probe``). A resumed run therefore continues the random stream of an unbroken one,
in every mode.

Rows are not ``pm.Minibatch``'s: docs/backends.md ("PyMC") says why.
"""

from __future__ import annotations

import numpy as np

from klqp import loop
from klqp.problem import Problem
from klqp.steps import Rule

from .tensors import as_float, float_dtype, inv_softplus

_NAME = "pymc"

# -- parameters <-> the optimizer's state, as plain arrays ----------------------------------

def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def dense_layout(problem: Problem) -> list[tuple[str, tuple]]:
    """What pm.adam moves: the global group's flat mu and rho, then each kq.Param."""
    spec = problem.model
    d = sum(_size(v.shape) for v in spec.globals)
    out = [("global_mu", (d,)), ("global_rho", (d,))] if spec.globals else []
    return out + [(f"param_{v.name}", tuple(v.shape)) for v in spec.params]


def row_layout(problem: Problem) -> list[tuple[str, tuple]]:
    """What the row-wise Adam moves: each free local's N-row loc and rho."""
    n = problem.total_size
    return [(f"{v.name}_{p}", (n,) + tuple(v.shape))
            for v in problem.model.free_locals for p in ("loc", "rho")]


def state_layout(problem: Problem, rule: "Rule") -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of every state array, in FitState.optimizer's order: the dense
    variables, the row variables, pm.adam's moments (m, v per dense variable) and step
    count, the row-wise Adam's per-row count and moments (RowAdam only), the global
    step's running curvature and averages (when on). Independent of the batch size;
    floats are in PyTensor's floatX."""
    dense, rows, floatx = dense_layout(problem), row_layout(problem), float_dtype()
    out = [(k, s, floatx) for k, s in dense + rows]
    if dense:
        out += [(f"adam_{m}_{k}", s, floatx) for k, s in dense for m in ("m", "v")]
        out += [("adam_t", (), floatx)]
    if rows and rule.row_adam:
        out += [("row_count", (problem.total_size,), "int64")]
        out += [(f"{k}_{m}", s, floatx) for k, s in rows for m in ("m", "v")]
    d = sum(_size(v.shape) for v in problem.model.globals)
    if rule.curvature:
        out += [("global_curvature", (d,), floatx)]
    if rule.dense:
        out += [(f"global_curvature_{k}", (d, d), floatx) for k in ("matrix", "inverse")]
    if rule.average:
        out += [("average_mu", (d,), floatx), ("average_scale", (d,), floatx)]
    return out


def initial_state(problem: Problem, params: dict, rule: "Rule") -> list[np.ndarray]:
    """State arrays for ``params`` (klqp.problem.init_params' structure) and a fresh
    optimizer."""
    spec = problem.model
    given = {}
    if spec.globals:
        given["global_mu"] = np.concatenate([np.ravel(params[v.name]["loc"]) for v in spec.globals])
        given["global_rho"] = np.concatenate([np.ravel(inv_softplus(params[v.name]["scale"]))
                                              for v in spec.globals])
        given["average_mu"] = given["global_mu"]
        given["average_scale"] = np.concatenate([np.ravel(params[v.name]["scale"])
                                                 for v in spec.globals])
    for v in spec.params:
        given[f"param_{v.name}"] = params[v.name]["value"]
    for v in spec.free_locals:
        given[f"{v.name}_loc"] = params[v.name]["loc"]
        given[f"{v.name}_rho"] = inv_softplus(params[v.name]["scale"])
    return [np.asarray(given[name], dtype=dt).reshape(shape) if name in given
            else np.zeros(shape, dtype=dt) for name, shape, dt in state_layout(problem, rule)]


def params_from_state(problem: Problem, state: list, rule: "Rule") -> dict:
    """{latent: {"loc", "scale"}} (scale = softplus(rho)) and {param: {"value"}}: the raw
    iterates, except that the globals are their running average when the rule averages."""
    spec = problem.model
    # Results are float64 whatever floatX the state is in.
    arrays = {name: np.asarray(a, dtype=float)
              for (name, _, _), a in zip(state_layout(problem, rule), state)}
    out, offset = {}, 0
    for v in spec.globals:
        k = _size(v.shape)
        if rule.average:
            loc = arrays["average_mu"][offset:offset + k].reshape(v.shape)
            scale = arrays["average_scale"][offset:offset + k].reshape(v.shape)
        else:
            loc = arrays["global_mu"][offset:offset + k].reshape(v.shape)
            scale = np.logaddexp(0.0, arrays["global_rho"][offset:offset + k].reshape(v.shape))
        out[v.name] = {"loc": np.array(loc, dtype=float), "scale": np.array(scale, dtype=float)}
        offset += k
    for v in spec.params:
        out[v.name] = {"value": np.array(arrays[f"param_{v.name}"], dtype=float)}
    for v in spec.free_locals:
        out[v.name] = {"loc": np.array(arrays[f"{v.name}_loc"], dtype=float),
                       "scale": np.logaddexp(0.0, arrays[f"{v.name}_rho"])}
    return {v.name: out[v.name] for v in spec.vars.values() if v.name in out}


def check_state(problem: Problem, state: dict, rule: "Rule") -> list[np.ndarray]:
    """State arrays from a FitResult ({name: array}), checked by name and shape against
    this problem's layout; returned in the layout's order."""
    layout = state_layout(problem, rule)
    arrays = loop.resume_arrays(state, {name: shape for name, shape, _ in layout}, _NAME)
    return [arrays[name].astype(dtype) for name, _, dtype in layout]


# -- host-side randomness: a function of (seed, step) only ----------------------------------

def draw_noise(problem: Problem, seed: int, step: int, rows: int) -> list[np.ndarray]:
    """Standard-normal noise for each latent (model order); locals get ``rows`` rows.
    Drawn in float64 whatever floatX is, so float32 runs see the same (rounded) draws."""
    rng = np.random.default_rng([seed, 1, step])
    return [as_float(rng.standard_normal(((rows,) if v.role == "local" else ()) + tuple(v.shape)))
            for v in problem.model.latents]


def draw_probe(problem: Problem, seed: int, step: int) -> np.ndarray:
    """The global curvature's Rademacher probe (flat, D numbers) at ``step``: a stream of
    its own, so the latents' noise is that of a fit without it."""
    d = sum(_size(v.shape) for v in problem.model.globals)
    rng = np.random.default_rng([seed, 2, step])
    return as_float(rng.integers(0, 2, size=d) * 2.0 - 1.0)
