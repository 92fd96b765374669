"""The fit loop, written once for every backend: a backend compiles a ``Program``, this
module runs it.

A backend's ``fit(problem, config)`` compiles (or takes from ``klqp.cache``) the step of
one problem and hands it to ``run``. The loop owns everything around the step: the
chunks of in-memory steps and the batches of a stream, the progress bar, the callbacks
between chunks, Ctrl-C (a flag: a step is never cut in half), the non-finite watch
(``klqp.guard``), the history, resume, and the result. A ``Program`` only runs steps
and reports its state; ``klqp.steps`` is the arithmetic of a step.

One fit, in the order it happens::

    kq.fit (klqp/api.py: checks, FitConfig)
      -> backend.fit (compile or reuse a Program)
      -> klqp.loop.run: chunks -> Program.run_steps -> the backend's compiled step
                        (klqp.objective, klqp.steps) -> records -> Run.record
      -> Run.result: Program.report (the reported q) -> FitResult
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Optional, Protocol

import numpy as np
from tqdm.auto import tqdm

from . import guard
from .problem import FitConfig, Problem
from .results import HISTORY_KEYS, FitResult, FitState
from .training import History, checked_batches, chunk_length, run_callbacks

__all__ = ["Program", "Run", "run", "resume_arrays"]


def resume_arrays(saved: dict, expected: dict, backend: str) -> dict:
    """The arrays of a saved state (``FitState.optimizer``: {name: array}) checked by name
    and shape against the state this fit expects ({name: shape}); an error names what
    differs. Returns {name: array} in ``expected``'s order.

    >>> import numpy as np
    >>> resume_arrays({"q/mu": np.zeros(2)}, {"q/mu": (3,)}, "numpyro")
    Traceback (most recent call last):
    ...
    ValueError: resume= array 'q/mu' has shape (2,), this fit's numpyro state expects (3,); resume a FitResult or checkpoint of the same model, data size and step rule
    """
    if not isinstance(saved, dict):
        raise ValueError("resume= holds its state by position (klqp before named state); "
                         "resume a FitResult or checkpoint written by this klqp")
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        raise ValueError(f"resume= holds the state arrays {sorted(saved)}, this fit's {backend} "
                         f"state has {list(expected)} (missing {missing}, unexpected "
                         f"{unexpected}); resume a FitResult or checkpoint of the same model, "
                         "backend and step rule")
    out = {}
    for name, shape in expected.items():
        a = np.asarray(saved[name])
        if a.shape != tuple(shape):
            raise ValueError(f"resume= array {name!r} has shape {a.shape}, this fit's {backend} "
                             f"state expects {tuple(shape)}; resume a FitResult or checkpoint "
                             "of the same model, data size and step rule")
        out[name] = a
    return out


class Program(Protocol):
    """What a backend compiles for one fit (its ``fit`` builds one, ``run`` drives it).

    Every ``run_*`` returns the steps' figures: ``HISTORY_KEYS`` plus
    ``nonfinite_term`` and ``nonfinite_variable`` (``klqp.guard.diagnosis``), one entry
    per step (arrays). A step that is not finite applies nothing; after
    ``config.max_nonfinite`` of them in a row (counting ``in_row`` from before the
    call) a program applies no further step of the call.
    """

    backend: str

    def run_steps(self, step: int, count: int, length: int, in_row: int,
                  stop: Callable[[], bool]) -> dict:
        """In-memory data: steps ``step`` .. ``step + count - 1`` (``length``: the run's
        chunk length, the same for every call, so a compiled chunk is reused). It may end
        early when ``stop()`` turns True; the figures say how many steps ran."""

    def run_batch(self, step: int, columns: dict, rows: Optional[np.ndarray],
                  size: int) -> dict:
        """A stream: step ``step`` on one checked batch of ``size`` rows (``rows``: the
        rows' numbers, None without locals)."""

    def state(self) -> dict:
        """The state to resume from, as named host arrays (``FitState.optimizer``)."""

    def report(self, step: int) -> dict:
        """q as the fit reports it after ``step`` steps (``klqp.steps``)."""

    def info(self) -> dict:
        """What the result's ``info`` says about the program (compiles, dtype, ...)."""

    def close(self) -> None:
        """The fit is over (the result has been read): release or cache the program."""


class Run:
    """The state of one fit as it goes: what a result, a callback or Ctrl-C sees."""

    def __init__(self, problem: Problem, config: FitConfig, program: Program):
        self.problem, self.config, self.program = problem, config, program
        self.step = 0
        self.history = History(HISTORY_KEYS)
        self.watch = guard.Watch(guard.checked_variables(problem.model), config.max_nonfinite,
                                 advice=lambda v: guard.step_advice(problem.model, config, v))
        if config.resume is not None:
            self.step = int(config.resume.state.step)
            self.history = History(HISTORY_KEYS, previous=config.resume.history)

    def record(self, figures: dict, count: Optional[int] = None) -> int:
        """Keep the first ``count`` steps' figures (all: None); stop the fit
        (NonFiniteError) when they end in ``max_nonfinite`` non-finite steps in a row.
        Returns the steps kept."""
        figures = {k: np.atleast_1d(np.array(v)) for k, v in figures.items()}  # copies
        n = len(figures["loss"]) if count is None else min(count, len(figures["loss"]))
        stop = self.watch.see(self.step, figures["skipped"][:n], figures["nonfinite_term"][:n],
                              figures["nonfinite_variable"][:n])
        if stop is not None:
            n = stop - self.step  # the run's steps applied nothing: the state is stop's
        self.history.append({k: figures[k][:n] for k in HISTORY_KEYS})
        self.step += n
        if stop is not None:
            raise guard.NonFiniteError(self.watch.message(), result=self.result(),
                                       step=stop, term=self.watch.stop_term,
                                       variable=self.watch.stop_variable)
        return n

    def result(self, interrupted: bool = False) -> FitResult:
        hist = self.history.arrays()
        backend = self.program.backend
        return FitResult(problem=self.problem, backend=backend,
                         params=self.program.report(self.step), history=hist,
                         state=FitState(step=self.step, optimizer=self.program.state(),
                                        backend=backend, rule=self.config.rule()),
                         interrupted=interrupted,
                         info={**self.program.info(), "skipped_steps": int(hist["skipped"].sum()),
                               **self.config.rule()})

    def callbacks_say_stop(self) -> bool:
        """Run the user's callbacks; True when one raises StopIteration."""
        return run_callbacks(self.config.callbacks, self.step, self.result)


class Interrupt:
    """Ctrl-C during a fit: the handler only raises a flag, so a step is never cut in half
    (a step's updates land together) and the loop stops between steps or chunks."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum=None, frame=None):
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals only reach the main thread; a KeyboardInterrupt still stops
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def run(problem: Problem, config: FitConfig, program: Program) -> FitResult:
    """Fit: ``config.steps`` more steps of ``program`` (from the resumed step), then the
    result. Ctrl-C and a callback's StopIteration end it early with the state of the last
    whole step; a run of non-finite steps raises ``kq.NonFiniteError``."""
    fit_run = Run(problem, config, program)
    bar = tqdm(total=config.steps, disable=not config.progress,
               desc=f"klqp[{program.backend}]", unit="step", dynamic_ncols=True)
    interrupt = Interrupt()
    end = fit_run.step + config.steps
    try:
        try:
            with interrupt.installed():
                loop = _in_memory if problem.data is not None else _stream
                loop(fit_run, end, bar, interrupt)
        except KeyboardInterrupt:
            interrupt()
        finally:
            bar.close()
        fit_run.watch.warn()
        return fit_run.result(interrupt.requested)
    finally:
        program.close()


def _after(fit_run: Run, bar, done: int) -> bool:
    """Progress and callbacks after a chunk (or a streamed step); True to stop."""
    bar.update(done)
    if len(fit_run.history):
        bar.set_postfix(elbo=f"{fit_run.history.last('elbo'):.5g}")
    return fit_run.callbacks_say_stop()


def _in_memory(fit_run: Run, end: int, bar, interrupt: Interrupt) -> None:
    length = chunk_length(fit_run.config.steps, fit_run.config.chunk_size)
    while fit_run.step < end and not interrupt.requested:
        count = min(length, end - fit_run.step)
        figures = fit_run.program.run_steps(fit_run.step, count, length, fit_run.watch.in_row,
                                            lambda: interrupt.requested)
        done = fit_run.record(figures, count)
        if interrupt.requested or _after(fit_run, bar, done):
            return


def _stream(fit_run: Run, end: int, bar, interrupt: Interrupt) -> None:
    for columns, rows, size in checked_batches(fit_run.problem, fit_run.step, end):
        if interrupt.requested:
            return
        fit_run.record(fit_run.program.run_batch(fit_run.step, columns, rows, size))
        if _after(fit_run, bar, 1):
            return
