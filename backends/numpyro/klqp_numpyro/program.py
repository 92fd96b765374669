"""One NumPyro fit: the compiled trainer (``klqp_numpyro.train``) and its state, driven
by the core's loop (``klqp.loop.run``). A trainer compiled by an earlier fit of the same
structure is reused (``klqp.cache``).
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np

from klqp import loop
from klqp.cache import backend_cache
from klqp.problem import FitConfig, Problem, init_params
from klqp.results import FitResult

from .state import OptState, _NAME, _runtime_weights, _to_variables, state_names
from .train import Trainer

#: Compiled trainers kept across fits (``klqp.cache``): a second fit of a model of the
#: same structure and shapes starts without compiling.
TRAINERS = backend_cache()


def trainer_key(problem: Problem, config: FitConfig):
    """Everything a compiled trainer reads as a constant besides the model's structure
    (``klqp.cache.ProgramCache.take_for`` adds it): N, b, the weights (schedules by value;
    a constant or a kq.Shared is an argument, ``Weights.compile_key``), the data's shapes
    and dtypes, the step rule, the learning rate and JAX's float dtype."""
    columns = (None if problem.data is None else
               tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in problem.data.items()))
    return (jnp.result_type(float).name, problem.total_size, problem.batch_size,
            problem.weights.compile_key(), problem.scale_cost_to_minibatch, columns,
            config.learning_rate,
            config.local_step, config.global_step, config.max_nonfinite)


class Program:
    """One fit's compiled trainer and its state (``klqp.loop.Program``): the core's loop
    (``klqp.loop.run``) calls it chunk by chunk."""

    backend = _NAME

    def __init__(self, problem: Problem, config: FitConfig, trainer: Trainer, key=None):
        self.problem, self.config, self.trainer = problem, config, trainer
        self.cache_key = key  # where the trainer goes back to (klqp.cache), or None
        self.counts_before = collections.Counter(trainer.trace_counts)  # a reused trainer's
        # a row table is made where the storage keeps it (it may not fit the device)
        new_table = trainer.storage.new_table
        self.variables = _to_variables(
            problem, init_params(problem, config.seed, config.init_scale),
            rows_array=lambda a: new_table(np.asarray(a, dtype=jnp.result_type(float))))
        self.opt_state = trainer.init_state(self.variables)
        self.step, self.in_row = 0, 0
        if config.resume is not None:  # the saved arrays, by name, in this state's places
            prev = config.resume
            tree = {"q": self.variables, **self.opt_state._asdict()}
            names = state_names(self.variables, self.opt_state)
            saved = loop.resume_arrays(prev.state.optimizer, dict(zip(names, (
                np.shape(a) for a in jax.tree.leaves(tree)))), _NAME)
            tree = jax.tree.unflatten(jax.tree.structure(tree), [
                new_table(np.array(saved[k])) for k in names])
            self.variables = tree.pop("q")
            self.opt_state = OptState(**tree)
            self.step = prev.state.step
        self.variables, self.opt_state = trainer.place_state(self.variables, self.opt_state)
        self.key = jax.random.PRNGKey(config.seed)
        self.noise_key = jax.random.split(self.key)[1]

    def run_steps(self, step: int, count: int, length: int, in_row: int, stop) -> dict:
        """``count`` steps as one compiled chunk of ``length`` (a chunk is never cut)."""
        self.step, self.in_row = step, in_row
        trainer = self.trainer
        (variables, opt_state, _), figures = trainer._chunk(
            *trainer.chunk_arguments(self, self.key, count, length), length=length)
        self.variables, self.opt_state = trainer.chunk_result(self, variables, opt_state)
        return figures

    def run_batch(self, step: int, columns: dict, rows, size: int) -> dict:
        indices = rows if rows is not None else np.arange(size)
        indices, columns = self.trainer.storage.stream_batch(indices, columns, step)
        self.variables, self.opt_state, figures = self.trainer._step(
            self.variables, self.opt_state, columns, indices,
            jax.random.fold_in(self.noise_key, step), jnp.asarray(step),
            _runtime_weights(self.problem))
        return figures

    def state(self) -> list:
        return self.trainer.state_arrays(self.variables, self.opt_state)

    def report(self, step: int) -> dict:
        data = None if self.problem.data is None else self.trainer.device_data()
        return self.trainer.reported_params(self.variables, self.opt_state, data, step,
                                            _runtime_weights(self.problem))

    def info(self) -> dict:
        counts = self.trainer.trace_counts - self.counts_before  # this fit's compiles
        return {"compiles": counts["chunk"] + counts["stream_step"],
                "dtype": jnp.result_type(float).name, "trace_counts": dict(counts)}

    def close(self) -> None:
        if self.cache_key is not None:
            TRAINERS.give_back_for(self.problem, self.cache_key, self.trainer)
            self.cache_key = None


def fit(problem: Problem, config: FitConfig, trainer: Trainer | None = None,
        place=None, host=None) -> FitResult:
    """``place``: a ``klqp_numpyro.sharding.Placement`` (several devices), or None;
    ``host``: a ``klqp_numpyro.host_table.HostTable`` (the row table in host memory).
    One device and a device table: the trainer compiled by an earlier fit of the same
    structure is reused (``TRAINERS``)."""
    key = trainer_key(problem, config) if trainer is None and place is None and host is None \
        else None
    cached = None if key is None else TRAINERS.take_for(problem, key)
    trainer = trainer or cached or Trainer(problem, config, place, host)
    return loop.run(problem, config, Program(problem, config, trainer, key))
