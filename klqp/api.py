"""``kq.compile`` and ``kq.fit``: validate, pick the backend plug-in, hand it the problem."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Iterable, Optional

from . import backends, checkpoint as _checkpoint, guard, schedules
from .problem import FitConfig, make_problem
from .steps import resolve_global_step, resolve_local_step
from .training import chunk_length

__all__ = ["compile", "fit"]


def compile(model, data, *, backend: str = "numpyro", batch_size=None, total_size=None,  # noqa: A001
            beta=None, beta_global=None, beta_local=None, likelihood_weight=1.0,
            scale_cost_to_minibatch: bool = False, local_step="auto",
            backend_options: Optional[dict] = None):
    """Lower ``model`` to ``backend`` and return its objective as functions of q's params.

    The returned object has ``init_params(seed)``, ``loss(params, indices=, noise=)``,
    ``grad(...)`` (same structure as params) and ``terms(...)`` (loss, elbo, loglik,
    kl_global, kl_local). With fixed indices and noise the loss is deterministic, which
    is what the cross-backend agreement tests use. The step rule's pieces are there too,
    deterministic for given rows: ``local_step(params, indices=)`` (the batch rows' q
    after one local step, ``local_step`` as in ``kq.fit``), ``local_expectations(...)``
    (each row's E[l], E[l'], E[l''] that step uses) and ``global_curvature(...)``.
    With ``local_step=kq.RowAdam(stl=True)``, ``grad`` is the sticking-the-landing
    gradient that rule trains the free locals with (the loss is the same).
    """
    impl = backends.get(backend)
    problem = make_problem(model, data, batch_size=batch_size, total_size=total_size, beta=beta,
                           beta_global=beta_global, beta_local=beta_local,
                           likelihood_weight=likelihood_weight,
                           scale_cost_to_minibatch=scale_cost_to_minibatch)
    local = resolve_local_step(local_step, model)
    return impl.compile(problem, local_step=local,
                        **_options(impl.compile, backend, backend_options, ("problem", "local_step")))


def fit(model, data, *, backend: str = "numpyro", steps: int = 1000, batch_size=None,
        total_size=None, beta=None, beta_global=None, beta_local=None, likelihood_weight=1.0,
        scale_cost_to_minibatch: bool = False, learning_rate=1e-2, seed: int = 0,
        progress: Optional[bool] = None, callbacks: Iterable[Callable] = (),
        chunk_size: Optional[int] = None, resume=None, init_scale: float = 0.1,
        local_step="auto", global_step="auto", max_nonfinite: int = guard.DEFAULT_MAX_NONFINITE,
        checkpoint=None, checkpoint_every: Optional[int] = None,
        backend_options: Optional[dict] = None):
    """Fit q by minimizing the klqp objective (see ``kq.explain``).

    data: a dict of arrays holding all N rows (klqp draws each minibatch on device,
    uniformly without replacement, a fresh permutation each epoch), or an iterable of
    batch dicts (streamed; needs ``total_size``; a model with Local latents needs the
    rows' numbers under ``"row_index"``).

    beta sets both KL weights; beta_global / beta_local set one block. Each weight, and
    likelihood_weight, is a number, a ``kq.Shared`` or a ``kq.schedules`` schedule.

    local_step: how the free local latents' q move (``klqp.steps``). "auto" (default):
    ``kq.LocalStep()``, a guarded Newton step on each batch's rows before the global
    step, by quadrature, plus a final pass over all rows when the fit ends;
    ``kq.LocalStep(iterations=, points=, max_change=, final_pass=)`` tunes it; None turns
    it off (row-wise Adam steps of the gradient, as klqp 0.1; ``kq.RowAdam(stl=,
    scale_by_visits=)`` for its variants).
    global_step: how the globals' q move. "auto" (default): ``kq.GlobalStep()``, natural-
    gradient steps with scales from the expected curvature over q (any number of
    globals; a dense curvature preconditions correlated blocks of up to 64 numbers),
    quadrature over the locals and an antithetic pair in the gradient, and the reported
    globals averaged over the iterates; None: Adam steps on every global number.
    learning_rate: Adam's step size, a number or a schedule of the step: for kq.Param
    values, for global numbers without a natural-gradient step, and for locals under
    RowAdam.
    callbacks: functions ``callback(step, result)`` run between compiled chunks of
    steps; they may change a ``kq.Shared`` or raise ``StopIteration`` to stop early.
    progress: a progress bar (default: on in a terminal, off when ``CI`` is set).
    resume: continue a fit to ``steps`` steps IN ALL (the steps already done count), from
    its step, parameters and optimizer state, with the same random stream, so the result
    equals an unbroken fit of ``steps`` steps. Either a previous FitResult of the same
    model (``kq.fit(..., steps=2000, resume=r)`` after ``r = kq.fit(..., steps=1000)``
    runs steps 1000..1999), or the path of a checkpoint file (see ``checkpoint``):
    rerunning the command that was killed finishes its job, bit for bit as an unbroken
    run on the same backend and machine; the file must come from this model, data,
    backend, seed and step rule (``klqp.checkpoint``).
    checkpoint, checkpoint_every: write the fit's state to the file ``checkpoint`` (plain
    npz + JSON, atomically) every ``checkpoint_every`` steps (default: every 1000), at
    the end, on Ctrl-C and on a NonFiniteError; ``kq.load_result(path)`` reads it back.
    Ctrl-C stops after the current chunk and returns the state so far
    (``result.interrupted``).
    max_nonfinite: a step whose loss, a term, a gradient or a new value is NaN or inf is
    not applied (``history["skipped"]``, ``info["skipped_steps"]``, one warning at the
    end); after this many such steps in a row the fit raises ``kq.NonFiniteError``,
    whose ``.result`` is the last good state (``klqp.guard``).
    """
    impl = backends.get(backend)
    backend_options = _options(impl.fit, backend, backend_options, ("problem", "config"))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} must be a non-negative integer")
    if isinstance(learning_rate, schedules.Schedule):
        if not float(learning_rate(0)) > 0:
            raise ValueError(f"learning_rate={learning_rate!r} must be positive at step 0")
    elif not (isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool)
              and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate={learning_rate!r} must be a positive number (e.g. 1e-2) "
                         "or a kq.schedules schedule (e.g. schedules.linear(1e-2, 1e-4, steps))")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    if not (isinstance(init_scale, (int, float)) and init_scale > 0):
        raise ValueError(f"init_scale={init_scale!r} must be a positive number")
    max_nonfinite = guard.check_max_nonfinite(max_nonfinite)
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(
            checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every={checkpoint_every!r} must be a positive integer "
                         "(steps between checkpoints)")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every= needs checkpoint='path/to/run.klqp' (where to write)")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint={checkpoint!r} must be a file path (str or os.PathLike)")
    if checkpoint is not None and not os.path.isdir(os.path.dirname(os.path.abspath(checkpoint))):
        raise ValueError(f"checkpoint={os.fspath(checkpoint)!r}: its folder does not exist")
    problem = make_problem(model, data, batch_size=batch_size, total_size=total_size, beta=beta,
                           beta_global=beta_global, beta_local=beta_local,
                           likelihood_weight=likelihood_weight,
                           scale_cost_to_minibatch=scale_cost_to_minibatch)
    local = resolve_local_step(local_step, model)
    glob = resolve_global_step(global_step, model)
    if glob is not None:  # a step size that depends on the batches per epoch learns them here
        glob = dataclasses.replace(glob, step_size=glob.step_size.bind(
            num_batches=problem.num_batches))
    total_steps = steps  # the run's planned end, counted from step 0 of a checkpointed run
    rule = FitConfig(local_step=local, global_step=glob).rule()
    if isinstance(resume, (str, os.PathLike)):
        saved = _checkpoint.read(resume)
        if steps < saved.step:
            raise ValueError(f"resume={os.fspath(resume)!r} is at step {saved.step}, past "
                             f"steps={steps}: with a checkpoint file, steps is the run's total")
        resume = _checkpoint.resumed_result(saved, problem, backend=backend, seed=int(seed),
                                            rule=rule)
        steps -= saved.step
    elif resume is not None:
        if steps <= resume.steps:
            raise ValueError(
                f"steps={steps} with resume= a FitResult at step {resume.steps}: steps counts "
                f"the run's steps IN ALL, those already done included (it used to count MORE "
                f"steps after a FitResult); pass steps={resume.steps} + the steps to "
                f"add, e.g. steps={resume.steps + max(steps, 1)}")
        steps -= resume.steps
    if resume is not None:
        if resume.model is not model:
            raise ValueError("resume= must be a FitResult of the same kq.Model object")
        if resume.backend != backend:
            raise ValueError(f"resume= comes from backend {resume.backend!r}, not {backend!r}")
    if progress is None:
        progress = not os.environ.get("CI") and os.isatty(2)
    if not isinstance(learning_rate, schedules.Schedule):
        learning_rate = schedules.constant(learning_rate)
    writer = None
    if checkpoint is not None:
        every = checkpoint_every or 1000
        # Chunks follow the run's planned length, so a resumed run cuts the same chunks.
        chunk_size = chunk_size or min(chunk_length(total_steps), every)
        writer = _checkpoint.Writer(checkpoint, every, first_step=resume.steps if resume else 0,
                                    seed=int(seed), steps_planned=total_steps,
                                    learning_rate=learning_rate)
        callbacks = (*callbacks, writer)
    config = FitConfig(steps=steps, learning_rate=learning_rate, seed=int(seed),
                       progress=bool(progress), callbacks=tuple(callbacks), chunk_size=chunk_size,
                       resume=resume, init_scale=float(init_scale), local_step=local,
                       global_step=glob, max_nonfinite=max_nonfinite)
    if resume is not None and resume.state.rule != config.rule():
        raise ValueError(f"resume= was fitted with {resume.state.rule}, this fit asks for "
                         f"{config.rule()}; resume with the same local_step= and global_step=")
    if writer is None:
        return impl.fit(problem, config, **backend_options)
    try:
        result = impl.fit(problem, config, **backend_options)
    except guard.NonFiniteError as err:
        writer.write(err.result)
        raise
    writer.write(result)
    return result


def _options(method, backend: str, options, taken) -> dict:
    """``backend_options`` checked against the keywords the backend's method takes, so
    a misspelt key is an error that lists the right ones, before anything compiles."""
    import inspect

    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"backend_options={options!r} must be a dict, e.g. {{'devices': 2}}")
    params = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    known = [name for name in params if name not in taken and name != "self"]
    for key in options:
        if key not in known:
            raise ValueError(f"backend_options: {key!r} is not an option of the {backend!r} "
                             f"backend here; it takes {known or 'none'}")
    return dict(options)
