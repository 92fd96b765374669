"""Non-finite steps: caught inside the compiled step, counted on the host.

A training step whose loss, one of its terms, a gradient or a new parameter value is NaN
or inf is not applied: q's parameters and the optimizer's state stay those of the last
good step (each backend selects old or new values inside its compiled step, with no
round trip to the host). The step still counts (its batch and noise are used up, as in
an unbroken run), and ``history["skipped"]`` marks it. After ``max_nonfinite`` such
steps in a row the fit stops and raises ``NonFiniteError``, which carries the FitResult
of the last good state; isolated skips are counted in ``result.info["skipped_steps"]``
and warned about once when the fit ends.

``diagnosis`` is the in-graph part, written for any array namespace ``xp`` (NumPy,
``jax.numpy``, ``pytensor.tensor``); ``Watch`` is the host's.

>>> import numpy as np
>>> ok, term, var = diagnosis(np, {"loss": np.nan, "loglik": np.nan, "kl_global": 1.0,
...                                "kl_local": 0.0, "potential": 0.0},
...                           [[np.ones(2)], [np.array([np.inf])]])
>>> bool(ok), TERMS[int(term)], int(var)   # the loglik went first; variable 1's values
(False, 'loglik', 1)
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

__all__ = ["NonFiniteError", "TERMS", "DEFAULT_MAX_NONFINITE", "checked_variables",
           "diagnosis", "Watch", "check_max_nonfinite"]

#: What a diagnosis names, in this order: the loss's terms; then "loss" (the terms are
#: finite, their weighted sum is not: an overflow); then "gradient" (the loss is finite,
#: a gradient or a new parameter value is not).
TERMS = ("loglik", "kl_global", "kl_local", "potential", "loss", "gradient")
DEFAULT_MAX_NONFINITE = 20


class NonFiniteError(FloatingPointError):
    """A fit stopped after ``max_nonfinite`` non-finite steps in a row.

    ``result``: the FitResult of the last good state (its ``steps`` is the first bad
    step), so nothing fitted is lost; ``step``: the first step of the run;
    ``term``: which of ``TERMS`` went non-finite first; ``variable``: the first latent or
    parameter (model order) whose gradient or new value was non-finite, or None.
    """

    def __init__(self, message: str, *, result, step: int, term: str, variable: Optional[str]):
        super().__init__(message)
        self.result, self.step, self.term, self.variable = result, step, term, variable


def check_max_nonfinite(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"max_nonfinite={value!r} must be a positive integer: the number of "
                         "non-finite steps in a row after which a fit stops (default "
                         f"{DEFAULT_MAX_NONFINITE})")
    return int(value)


def checked_variables(model) -> list[str]:
    """The variables whose gradients and new values a step checks, in model order: the
    globals, the point parameters and the free locals (an amortized local has no
    parameters of its own: its encoder's are kq.Params)."""
    return [v.name for v in model.vars.values()
            if v.role in ("global", "param") or (v.role == "local" and not v.amortized)]


def _first(xp, flags):
    """Index of the first True of a list of boolean scalars, or -1. (Only operators and
    functions that NumPy, jax.numpy and pytensor.tensor all have.)"""
    stacked = xp.stack([xp.where(f, 1, 0) for f in flags])
    return xp.where(xp.max(stacked) > 0, xp.argmax(stacked), -1)


def _all_finite(xp, arrays):
    out = xp.all(xp.isfinite(arrays[0]))
    for a in arrays[1:]:
        out = out & xp.all(xp.isfinite(a))
    return out


def diagnosis(xp, figures: dict, per_variable: list):
    """(ok, term, variable) of one step, as scalars of ``xp``.

    figures: the step's ``loss`` and its terms (``TERMS`` up to "loss", scalars);
    per_variable: for each of ``checked_variables(model)``, the arrays that must be finite
    (its gradients and its new values). ok: everything finite. term: index into TERMS of
    the first non-finite term ("loss" for the loss alone, "gradient" for gradients or
    values alone), -1 when ok.
    variable: index of the first variable with a non-finite array, -1 when none.
    """
    term_bad = [~xp.isfinite(figures[k]) for k in TERMS[:TERMS.index("loss")]]
    var_bad = [~_all_finite(xp, arrays) for arrays in per_variable if len(arrays)]
    term = _first(xp, term_bad)
    variable = _first(xp, var_bad) if var_bad else term * 0 - 1
    loss_ok = xp.isfinite(figures["loss"])
    ok = loss_ok & (term < 0) & (variable < 0)
    term = xp.where(term >= 0, term, xp.where(loss_ok, xp.where(ok, -1, TERMS.index("gradient")),
                                              TERMS.index("loss")))
    return ok, term, variable


class Watch:
    """The host's count of non-finite steps in a fit: how many in a row, how many in all.

    >>> w = Watch(["theta"], max_in_row=2)
    >>> w.see(10, skipped=[0, 1, 0], term=[-1, 0, -1], variable=[-1, 0, -1]) is None
    True
    >>> w.see(13, skipped=[1, 1, 0], term=[0, 4, -1], variable=[0, 0, -1])   # steps 13-14
    13
    >>> w.total, w.stop_term, w.stop_variable
    (3, 'loglik', 'theta')
    """

    def __init__(self, names: list, max_in_row: int, in_row: int = 0, run_start: int = 0,
                 advice=None):
        self.names, self.max_in_row = list(names), int(max_in_row)
        self.advice = advice  # variable name or None -> the settings that drive its step
        self.in_row, self.run_start = int(in_row), int(run_start)
        self.total, self.first = 0, None
        self.stop_term: Optional[str] = None
        self.stop_variable: Optional[str] = None
        self._run_term, self._run_variable = None, None

    def see(self, first_step: int, skipped, term, variable) -> Optional[int]:
        """Take the flags of steps first_step, first_step + 1, ...; return the first
        step of a run of ``max_in_row`` non-finite steps when one completes (the fit
        must stop there), else None."""
        for i, bad in enumerate(np.asarray(skipped, dtype=float)):
            step = first_step + i
            if not bad:
                self.in_row = 0
                continue
            if self.in_row == 0:
                self.run_start = step
                self._run_term = TERMS[int(np.asarray(term)[i])]
                v = int(np.asarray(variable)[i])
                self._run_variable = self.names[v] if v >= 0 else None
            self.in_row += 1
            self.total += 1
            self.first = step if self.first is None else self.first
            if self.in_row >= self.max_in_row:
                self.stop_term, self.stop_variable = self._run_term, self._run_variable
                return self.run_start
        return None

    def message(self) -> str:
        what = {"loss": "the loss terms stayed finite, their weighted sum did not (an "
                        "overflow: a weight or N/b too large for the terms)",
                "gradient": "the loss stayed finite, a gradient or a new parameter value "
                            "did not"}.get(self.stop_term,
                                           f"the loss term {self.stop_term!r} went NaN or inf first")
        who = (f"; the first variable (model order) with a non-finite gradient or value: "
               f"{self.stop_variable!r}" if self.stop_variable else "")
        return (f"{self.max_in_row} non-finite steps in a row from step {self.run_start}: "
                f"{what}{who}. "
                "No bad step was applied; error.result holds the last good state. Fix: "
                + (self.advice(self.stop_variable) if self.advice is not None else
                   "a smaller learning_rate (or a decaying schedule)")
                + ", tighter priors or a smaller init_scale, or check the data for extreme "
                "values; then resume with kq.fit(..., resume=error.result)")

    def warn(self) -> None:
        """Warn once, at the end of a fit, when isolated steps were skipped."""
        if self.total:
            warnings.warn(f"{self.total} non-finite step(s) were skipped (not applied), the "
                          f"first at step {self.first}; result.history['skipped'] marks "
                          "them. Many of them mean the step size is too large for this model",
                          RuntimeWarning, stacklevel=3)


def step_advice(model, config, variable: Optional[str]) -> str:
    """The settings that drive the step of ``variable`` (None: every step) in a fit with
    ``config`` (klqp.problem.FitConfig), for NonFiniteError's fix.

    >>> import klqp as kq
    >>> from klqp.problem import FitConfig
    >>> with kq.Model("m") as m:
    ...     mu = kq.Global("mu", kq.Normal(0.0, 1.0))
    ...     _ = kq.Observed("y", kq.Normal(mu, 1.0))
    >>> step_advice(m, FitConfig(global_step=kq.GlobalStep()), "mu")[:60]
    "global 'mu' takes the natural-gradient step: a smaller kq.Gl"
    """
    from .steps import GlobalStep, LocalStep, RowAdam

    spec = model.vars.get(variable) if variable is not None else None
    global_step, local_step = config.global_step, config.local_step
    if spec is None:
        return ("a smaller learning_rate (Params, encoders, numbers without a positive "
                "curvature) or a smaller kq.GlobalStep(step_size=...) for the globals")
    if spec.role == "global" and isinstance(global_step, GlobalStep) and global_step.curvature:
        return (f"global {variable!r} takes the natural-gradient step: a smaller "
                "kq.GlobalStep(step_size=...) (a number or a schedule) or max_change=...; "
                "learning_rate moves it only where its curvature is not positive")
    if spec.role == "local" and not spec.amortized and isinstance(local_step, LocalStep):
        return (f"local {variable!r} takes the guarded local step: a smaller "
                "kq.LocalStep(max_change=...), or local_step=None (row-wise Adam of "
                "learning_rate)")
    if spec.role == "local" and not spec.amortized and isinstance(local_step, RowAdam):
        return f"local {variable!r} takes row-wise Adam steps: a smaller learning_rate"
    what = {"param": "point parameter", "global": "global"}.get(spec.role, "amortized local")
    return f"{what} {variable!r} takes Adam steps: a smaller learning_rate (or a decaying schedule)"
