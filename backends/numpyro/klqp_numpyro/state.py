"""The NumPyro fit's state, by name, and its randomness.

The optimizer moves two groups of variables (``_to_variables``): "dense" (each global's q
and each ``kq.Param``, plain Adam) and "rows" (each free local's N-row q, row-wise Adam);
``OptState`` holds the optimizers' and the global step's state; ``state_names`` names every
array of the pair as checkpoints store it. Each weight is evaluated at the traced step
(``_weights_at``); the noise and the curvature's probe come from the step's key
(``draw_noise``, ``draw_probe``), so they depend only on (seed, step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klqp import transforms
from klqp.problem import Problem

_NAME = "numpyro"


def _weights_at(problem: Problem, step, runtime_weights: dict) -> dict:
    """Every weight at ``step`` (traced): schedules are evaluated with jnp; a runtime weight
    (a kq.Shared or a constant) comes in as a traced argument, so changing it recompiles
    nothing."""
    return problem.weights.evaluate(step, runtime_weights, jnp)


def _runtime_weights(problem: Problem) -> dict:
    """The compiled programs' weight arguments (``klqp.objective.Weights.runtime``)."""
    return {name: jnp.asarray(value) for name, value in problem.weights.runtime().items()}


class OptState(NamedTuple):
    """The optimizers' state of a fit, by name (checkpoints store it by these names)."""

    adam: Any         # optax's scale_by_adam state of the "dense" variables (globals, Params)
    row_adam: Any     # kq.RowAdam's RowAdamState of the free locals' N-row table, or None
    global_step: dict  # the global step's running curvature and averages ({} when off)


def state_names(variables, opt_state) -> list[str]:
    """Each state array's name: its path in {"q": variables, **opt_state's fields} as
    "a/b/c" (dict keys, NamedTuple fields), e.g. "q/dense/theta/loc", "adam/mu/theta/loc",
    "global_step/curvature/diagonal/theta"."""
    def part(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)
    tree = {"q": variables, **opt_state._asdict()}
    return ["/".join(part(k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def named_state(variables, opt_state, to_array) -> dict:
    """{name: array} of the state (``state_names``)."""
    tree = {"q": variables, **opt_state._asdict()}
    return dict(zip(state_names(variables, opt_state),
                    (to_array(a) for a in jax.tree.leaves(tree))))


def draw_noise(problem: Problem, key, b: int) -> dict:
    keys = jax.random.split(key, max(1, len(problem.model.latents)))
    noise = {v.name: jax.random.normal(k, ((b,) if v.role == "local" else ()) + tuple(v.shape))
             for k, v in zip(keys, problem.model.latents)}
    # computed once into buffers: else XLA fuses the draw (an erf_inv polynomial) into
    # every one of its consumers, and the step's program compiles several times slower
    return jax.lax.optimization_barrier(noise)


def draw_probe(problem: Problem, key):
    """The global curvature's Rademacher probe ({global: +-1 of its shape}) of the step with
    ``key``: a key of its own, so the latents' noise is that of a fit without it."""
    keys = jax.random.split(jax.random.fold_in(key, 0x9E37), max(1, len(problem.model.globals)))
    return {v.name: jax.random.rademacher(k, tuple(v.shape), dtype=jnp.result_type(float))
            for k, v in zip(keys, problem.model.globals)}


def _to_variables(problem: Problem, params: dict, rows_array=jnp.asarray) -> dict:
    """Parameters -> what the optimizer moves, in two groups: "dense" (globals' q and
    point params, plain Adam) and "rows" (free locals' q, row-wise Adam). A q scale is
    moved as raw_scale, scale = softplus(raw_scale)."""
    def as_var(p, array=jnp.asarray):
        if "value" in p:
            return {"value": array(p["value"])}
        return {"loc": array(p["loc"]), "raw_scale": array(transforms.softplus_inverse(np.asarray(p["scale"])))}
    model = problem.model
    dense = [v for v in model.vars.values() if v.role in ("global", "param")]
    return {"dense": {v.name: as_var(params[v.name]) for v in dense},
            "rows": {v.name: as_var(params[v.name], rows_array) for v in model.free_locals}}


def _as_params(group: dict, to_array=lambda a: a) -> dict:
    """Optimizer variables -> the params structure of the objective (scale, not raw)."""
    return {k: ({"value": to_array(p["value"])} if "value" in p else
                {"loc": to_array(p["loc"]), "scale": to_array(jax.nn.softplus(p["raw_scale"]))})
            for k, p in group.items()}
