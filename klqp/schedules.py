"""Schedules of a weight (beta, the likelihood weight): tiny pure functions of the step.

Every schedule is a frozen dataclass called as ``schedule(step, xp=numpy)``. ``xp`` is
the array namespace the step lives in, so the same object is evaluated by NumPy (for
``explain`` and tests), inside a jitted JAX loop (``xp=jax.numpy``, step traced) and
inside a PyTensor graph (``xp=pytensor.tensor``, step a shared counter). Changing the
step therefore never recompiles anything. Steps count from 0.

>>> from klqp import schedules
>>> warm = schedules.linear_warmup(steps=100)
>>> [float(warm(t)) for t in (0, 50, 100, 200)]
[0.0, 0.5, 1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

__all__ = ["Schedule", "constant", "linear", "linear_warmup", "sigmoid", "cyclical", "blundell",
           "robbins_monro", "natural_step", "beta_norm", "beta_from_norm"]


class Schedule:
    """Base class: subclasses define ``__call__(step, xp=numpy) -> value``."""

    def bind(self, *, num_batches: int) -> "Schedule":
        """Fill in facts of the run the schedule needs (only Blundell needs any)."""
        return self

    def to_dict(self) -> dict:
        return {"schedule": type(self).__name__, **self.__dict__}


@dataclass(frozen=True)
class Constant(Schedule):
    value: float

    def __call__(self, step, xp: Any = np):
        return xp.zeros_like(step * 1.0) + self.value


@dataclass(frozen=True)
class Linear(Schedule):
    steps: int
    start: float = 0.0
    end: float = 1.0

    def __call__(self, step, xp: Any = np):
        frac = xp.minimum(step / max(self.steps, 1), 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class Sigmoid(Schedule):
    midpoint: float
    rate: float
    end: float = 1.0

    def __call__(self, step, xp: Any = np):
        return self.end / (1.0 + xp.exp(-self.rate * (step - self.midpoint)))


@dataclass(frozen=True)
class Cyclical(Schedule):
    total_steps: int
    cycles: int = 4
    ratio: float = 0.5
    end: float = 1.0

    def __call__(self, step, xp: Any = np):
        period = self.total_steps / self.cycles
        phase = (step % period) / period  # position in the current cycle, in [0, 1)
        return self.end * xp.minimum(phase / self.ratio, 1.0)


@dataclass(frozen=True)
class RobbinsMonro(Schedule):
    start: float
    delay: float
    power: float = 0.5

    def __call__(self, step, xp: Any = np):
        return self.start * (1.0 + step / self.delay) ** (-self.power)


@dataclass(frozen=True)
class NaturalStep(Schedule):
    start: float = 1.0
    delay: float = 50.0
    num_batches: Optional[int] = None

    def bind(self, *, num_batches: int) -> "Schedule":
        return self if self.num_batches is not None else replace(self, num_batches=int(num_batches))

    def __call__(self, step, xp: Any = np):
        sampled = 0.0 if self.num_batches is None else 1.0 - 1.0 / self.num_batches
        return self.start * ((1.0 + step / self.delay) * (1.0 + sampled * step / self.delay)) ** -0.5


@dataclass(frozen=True)
class Blundell(Schedule):
    num_batches: Optional[int] = None

    def bind(self, *, num_batches: int) -> "Schedule":
        return self if self.num_batches is not None else replace(self, num_batches=int(num_batches))

    def __call__(self, step, xp: Any = np):
        if self.num_batches is None:
            raise ValueError("blundell(): num_batches is unknown; the compiler binds it from "
                             "total_size and batch_size, or pass blundell(num_batches=M)")
        m = self.num_batches
        i = step % m + 1  # batch number within the epoch, 1..M
        # pi_i = 2^(M-i) / (2^M - 1) = 2^-i / (1 - 2^-M); the right side cannot overflow.
        return xp.exp2(-1.0 * i) / (1.0 - 2.0 ** (-m))


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    return Constant(float(value))


def linear_warmup(steps: int, start: float = 0.0, end: float = 1.0) -> Schedule:
    """Rise linearly from ``start`` to ``end`` over ``steps`` steps, then stay at ``end``
    (KL warm-up: Bowman et al. 2015; Sonderby et al. 2016)."""
    if steps < 1:
        raise ValueError(f"linear_warmup: steps={steps} must be >= 1")
    return Linear(int(steps), float(start), float(end))


def linear(start: float, end: float, steps: int) -> Schedule:
    """From ``start`` to ``end`` linearly over ``steps`` steps, then ``end``; e.g. a
    learning-rate decay ``linear(1e-2, 1e-4, 5000)``."""
    if steps < 1:
        raise ValueError(f"linear: steps={steps} must be >= 1")
    return Linear(int(steps), float(start), float(end))


def sigmoid(midpoint: float, rate: float = 0.01, end: float = 1.0) -> Schedule:
    """``end / (1 + exp(-rate (step - midpoint)))`` (Bowman et al. 2015)."""
    return Sigmoid(float(midpoint), float(rate), float(end))


def cyclical(total_steps: int, cycles: int = 4, ratio: float = 0.5, end: float = 1.0) -> Schedule:
    """``cycles`` cycles over ``total_steps``; each rises linearly from 0 to ``end`` over
    the first ``ratio`` of the cycle, then stays at ``end`` (Fu et al. 2019)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"cyclical: ratio={ratio} must be in (0, 1]")
    if cycles < 1 or total_steps < cycles:
        raise ValueError(f"cyclical: need 1 <= cycles ({cycles}) <= total_steps ({total_steps})")
    return Cyclical(int(total_steps), int(cycles), float(ratio), float(end))


def natural_step(start: float = 1.0, delay: float = 50.0,
                 num_batches: Optional[int] = None) -> Schedule:
    """The global step's default step size: ``start * ((1 + t/delay) (1 + f t/delay))^-1/2``
    with f = 1 - 1/M, M batches an epoch (the compiler binds M). A full batch (f = 0)
    decays as 1/sqrt(t): its gradient's only noise is q's draws, averaged out by the
    iterate average. Minibatches (f -> 1) decay as 1/t, as Newton's method needs under
    sampling noise: a step of constant size leaves a noisy iterate whose average is
    biased wherever the objective is not quadratic (a hierarchical scale).

    >>> [round(float(natural_step(1.0, 50, num_batches=1)(t)), 4) for t in (0, 150)]
    [1.0, 0.5]
    >>> [round(float(natural_step(1.0, 50, num_batches=400)(t)), 4) for t in (0, 150)]
    [1.0, 0.2502]
    """
    if not (start > 0 and delay > 0) or (num_batches is not None and num_batches < 1):
        raise ValueError(f"natural_step: start={start} and delay={delay} must be positive, "
                         f"num_batches={num_batches} at least 1")
    return NaturalStep(float(start), float(delay), num_batches)


def robbins_monro(start: float = 1.0, delay: float = 50.0, power: float = 0.5) -> Schedule:
    """``start * (1 + step / delay) ** -power``: a Robbins-Monro step size (the sum of the
    steps diverges, the sum of their squares converges for 0.5 < power <= 1; power 0.5
    with iterate averaging is Polyak-Ruppert), the default of the global
    natural-gradient step.

    >>> [round(float(robbins_monro(1.0, 50)(t)), 4) for t in (0, 150)]
    [1.0, 0.5]
    """
    if not (start > 0 and delay > 0 and power > 0):
        raise ValueError(f"robbins_monro: start={start}, delay={delay} and power={power} "
                         "must all be positive")
    return RobbinsMonro(float(start), float(delay), float(power))


def blundell(num_batches: Optional[int] = None) -> Schedule:
    """Blundell et al. (2015) minibatch weights: batch i of the M in an epoch gets
    ``pi_i = 2^(M-i) / (2^M - 1)``, which sums to 1 over the epoch. M defaults to the
    run's batches per epoch."""
    return Blundell(None if num_batches is None else int(num_batches))


def beta_norm(beta: float, latent_dim: int, input_dim: int) -> float:
    """Higgins et al. (2017): ``beta_norm = beta * M / N`` for an M-dimensional code of
    an N-dimensional input (:func:`beta_from_norm` goes back)."""
    if latent_dim <= 0 or input_dim <= 0:
        raise ValueError("beta_norm: latent_dim and input_dim must be positive")
    return float(beta) * latent_dim / input_dim


def beta_from_norm(beta_norm_value: float, latent_dim: int, input_dim: int) -> float:
    """The beta that klqp takes for a ``beta_norm`` reported in a paper: ``beta_norm * N / M``."""
    if latent_dim <= 0 or input_dim <= 0:
        raise ValueError("beta_from_norm: latent_dim and input_dim must be positive")
    return float(beta_norm_value) * input_dim / latent_dim
