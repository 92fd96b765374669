"""How a fit moves q: the local step and the global step, one rule for every backend.

``klqp.objective`` fixes WHAT a fit minimizes; this module fixes HOW q gets there. Its
functions are arithmetic on arrays of any namespace ``xp`` (NumPy, ``jax.numpy``,
``pytensor.tensor``), so both backends take exactly the same steps; a backend only
supplies the row log-densities and their derivatives, with its own autodiff.

One step on a minibatch B of b rows:

1. **Local step** (free local latents). Rows are independent given the globals, so each
   batch row's q(z_i) = N(m_i, s_i^2) (unconstrained space) is improved on its own,
   with the globals held at their q location and the point parameters at their values.
   Let l_i(u) = T log p(y_i | ., u) + beta_local (log p(u | .) + log|J|) be the row's
   weighted log joint and E the expectation over q(z_i), taken by deterministic
   quadrature (Gauss-Hermite nodes for one scalar local per row, a 2K-point cubature
   rule for K local numbers per row), so the step has no Monte-Carlo noise floor. With
   g = E[l'(u)] and h = -E[l''(u)] (diagonal), one Newton iteration in q's natural
   parameters is::

       s_i^2 <- beta_local / h,    m_i <- m_i + g / h

   the optimum of the row's part of the objective when l_i is quadratic (a Normal local
   with Normal children: the closed form in one iteration). Where h <= 0 the row takes
   the natural-gradient step at its current precision (h := beta_local / s_i^2) and
   keeps its scale. The guard: each row tries the full step, then the step clipped to
   ``max_change`` (in m and in log s) at 1, 1/2 and 1/4 of its length, and keeps the
   candidate that raises its objective ``f_i = E[l_i] + beta_local * sum log s_i`` most,
   or stays where it is: no row's objective ever falls. The rows' new q are stored and
   warm-start the next visit; the cost is O(b) per step.

2. **Global step**, on the same batch with the locals' new q. The gradient integrates
   each row's locals with the same quadrature nodes (each node a virtual row weighted by
   its quadrature weight, so N/b and s stay those of the b real rows) and averages an
   antithetic pair of global draws theta = m +- s * eps. The curvature that sets q is
   the EXPECTED one, c = E_q[-diag d^2 J / d theta^2], J the weighted full-data log
   joint (estimated from the batch, x N/b): at the optimum of the objective each
   scale satisfies 1/s^2 = c / beta_global with exactly this expectation (Price's /
   Bonnet's theorem), so a curvature taken at q's mean instead is wrong wherever the
   curvature varies over q's width (hyperparameters, funnels). Each step estimates it
   at the same antithetic pair of draws, by one scaled Hutchinson probe (Rademacher r,
   v = s * r)::

       c_sample = -(r / s) * (H(m + s eps) v + H(m - s eps) v) / 2

   unbiased for the diagonal (E[r r^T] = I), at the cost of two Hessian-vector
   products whatever the number of global numbers D (never D of them). The samples are
   averaged over steps (a plain mean at first, then an exponential average whose weight
   on the newest sample, ``curvature_weight``, shrinks like the step size with
   minibatches: a fixed horizon would keep a floor of sampling noise in c, and with it a
   bias in s = sqrt(beta / c) that no number of steps removes). Each global number with c > 0 then takes a natural-gradient
   step m <- m + rho_t * dJ/dm / c, rho_t capped at the exact line search's optimum
   along that direction (``line_step_size``: one more Hessian-vector product, so that
   numbers the curvature couples, which the diagonal step moves together, never
   overshoot jointly), and moves its scale toward the one the objective's
   optimum has at that curvature, s = sqrt(beta_global / c) (c at least beta_global /
   sigma^2 where the prior is a kq.Normal with constant parameters: ``prior_curvature``;
   both changes clipped to ``max_change``); a number whose averaged curvature is not positive takes Adam's step
   of ``learning_rate`` and keeps its scale's Adam step. A block of up to ``dense_max``
   numbers also keeps the whole curvature matrix, one exact column a step, and where
   it is correlated preconditions the mean step with it. Every kq.Param takes Adam steps
   of ``learning_rate`` (a natural-gradient step on the diagonal of the loss's Hessian
   in the Params was measured worse on probabilistic PCA: bench/README.md).

3. **What a fit reports**: the global q averaged over the iterates with weights that
   favour recent steps (polynomial-decay averaging, Shamir & Zhang 2013, eta = 3), and
   the local q after a final pass of the local step over all N rows at those globals.
   Training itself continues from the raw iterates (``FitResult.state``), so a resumed
   fit equals an unbroken one.

None of this changes the objective: at a fixed point of the local step every row's q is
the optimum of its part of the loss given the globals, and the global step is a
stochastic gradient method on the same loss.

>>> import numpy as np
>>> nodes, weights = quadrature(1, 8)
>>> round(float(weights @ nodes[:, 0] ** 2), 12), round(float(weights @ nodes[:, 0] ** 4), 12)
(1.0, 3.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from . import schedules as _schedules

__all__ = ["LocalStep", "RowAdam", "GlobalStep", "Rule", "resolve_local_step", "resolve_global_step",
           "describe", "quadrature",
           "LocalLayout", "local_layout", "row_objective", "newton_candidates", "keep_better",
           "curvature_average", "curvature_weight", "probe_curvature", "column_average",
           "dense_inverse", "eager_when", "prior_curvature",
           "line_step_size",
           "coupling",
           "natural_gradient_loc", "curvature_scale", "global_update", "row_adam",
           "running_average",
           "AVERAGE_POWER", "MIN_CURVATURE"]

AVERAGE_POWER = 3.0   # eta of polynomial-decay averaging: the weight of step t is ~ t^eta
MIN_CURVATURE = 1e-30  # divides by curvature never see 0 (representable in float32 too)
COLUMN_DECAY = 0.3     # the dense curvature's weight on a column's newest visit (at least)


def _int_in(owner: str, name: str, value, low: int, high: Optional[int], fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{owner}: {name}={value!r} must be an integer {bound}; {fix}")
    return int(value)


def _positive(owner: str, name: str, value, fix: str, high: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or (
            not math.isfinite(value) or value <= 0 or (high is not None and value > high)):
        bound = "a positive number" if high is None else f"a number in (0, {high:g}]"
        raise ValueError(f"{owner}: {name}={value!r} must be {bound}; {fix}")
    return float(value)


@dataclass(frozen=True)
class LocalStep:
    """Settings of the local step (see the module docstring). ``kq.fit(local_step=...)``
    takes one of these, ``"auto"`` (the defaults below when the model has free locals)
    or ``None`` (no local step: locals take row-wise Adam steps of the gradient).

    iterations: Newton iterations on a batch's rows per training step.
    points: Gauss-Hermite nodes for a row with one scalar local (2..64); rows with K > 1
        local numbers use the 2K-point cubature rule, exact for polynomials of degree 3.
    max_change: the trust region of the clipped candidates, in unconstrained units, for
        m and for log s alike.
    final_pass: Newton iterations over ALL rows at the reported globals when a fit ends
        (0: none; then the locals are the training iterates).

    >>> LocalStep(iterations=2)
    LocalStep(iterations=2, points=8, max_change=1.0, final_pass=3)
    """

    iterations: int = 1
    points: int = 8
    max_change: float = 1.0
    final_pass: int = 3

    def __post_init__(self):
        owner = "kq.LocalStep"
        object.__setattr__(self, "iterations", _int_in(
            owner, "iterations", self.iterations, 1, 100, "one Newton iteration per visit is "
            "usually enough (rows are revisited every epoch); e.g. iterations=1"))
        object.__setattr__(self, "points", _int_in(
            owner, "points", self.points, 2, 64, "Gauss-Hermite nodes per scalar local; 2 is "
            "exact for cubic log-densities, 8 (the default) for degree 15"))
        object.__setattr__(self, "max_change", _positive(
            owner, "max_change", self.max_change, "it bounds a clipped step in unconstrained "
            "units, e.g. max_change=1.0"))
        object.__setattr__(self, "final_pass", _int_in(
            owner, "final_pass", self.final_pass, 0, 100, "Newton iterations over all rows at "
            "the end of a fit; 0 turns the pass off"))

    def describe(self) -> str:
        return (f"{self.iterations} guarded Newton iteration(s) per step on the batch's rows "
                f"(|clipped change| <= {self.max_change:g}), a final pass of {self.final_pass} "
                "over all rows" if self.final_pass else
                f"{self.iterations} guarded Newton iteration(s) per step on the batch's rows, "
                "no final pass")


@dataclass(frozen=True)
class RowAdam:
    """No local step: each batch row's q(z_i) takes a row-wise (lazy) Adam step of the
    loss's reparameterization gradient, of ``learning_rate``; a row's moments and step
    count change only when the batch holds it. ``kq.fit(local_step=None)`` is
    ``RowAdam(stl=False, scale_by_visits=False)``, the rule of klqp 0.1.

    stl: "sticking the landing" (Roeder et al. 2017): the rows' log q is taken with q's
        parameters held constant, so the gradient has no score term, whose noise does
        not vanish at the optimum.
    scale_by_visits: multiply the rows' step size by sqrt(N/b). A row is visited once per
        epoch, so lazy Adam moves it ~lr per epoch where dense Adam's momentum moves it
        ~lr * sqrt(N/b).

    >>> RowAdam()
    RowAdam(stl=True, scale_by_visits=True)
    """

    stl: bool = True
    scale_by_visits: bool = True

    def __post_init__(self):
        for name in ("stl", "scale_by_visits"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"kq.RowAdam: {name}={getattr(self, name)!r} must be True or False")

    def describe(self) -> str:
        extra = [x for x, on in (("sticking-the-landing gradient", self.stl),
                                 ("step size x sqrt(N/b)", self.scale_by_visits)) if on]
        return "row-wise Adam steps of the gradient" + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class GlobalStep:
    """Settings of the global step (see the module docstring). ``kq.fit(global_step=...)``
    takes one of these, ``"auto"`` (these defaults) or ``None`` (every global number
    takes Adam steps of ``learning_rate``, one draw, no averaging: klqp before 0.2).

    curvature: natural-gradient steps and curvature-set scales for every global number
        whose averaged expected curvature is positive (any number of globals: the
        estimate costs two Hessian-vector products a step).
    dense_max: a global block of at most this many numbers keeps the whole expected
        curvature matrix, one exact column a step (round robin), and preconditions its
        mean step with it (correlated posteriors); larger blocks keep the diagonal, by
        a Hutchinson probe. 0: always the diagonal.
    dense_every: the dense step's preconditioner (``dense_inverse``, an eigendecomposition
        of the running matrix) is recomputed every this many steps and kept in between:
        it costs as much as the rest of a step (about 30 us at D = 21 and 240 us at
        D = 64 on a CPU core) while the matrix changes by one column a step.
    dense_threshold: the dense matrix preconditions the mean step only while the
        curvature's coupling, max_j sum_{k != j} |C_jk| / sqrt(C_jj C_kk), exceeds this
        (at most 1: the diagonal step is stable, and less noisy).
    step_size: rho_t of the natural-gradient step, a number or a schedule of the step
        (default ``kq.schedules.natural_step(1.0, 50)``: 1 / sqrt(1 + t / 50) for a full
        batch, ~1 / (1 + t / 50) for minibatches, where sampling noise must be averaged
        away).
    curvature_decay: weight of the newest batch in the running curvature (0 < d <= 1),
        once 1/d steps have been averaged with equal weights; with minibatches and the
        default step size it is d x min(rho_t, 1) (``curvature_weight``).
    antithetic: average the global gradient over the pair theta = m +- s * eps.
    average: report the polynomial-decay average of the global iterates.
    max_change: a natural-gradient step moves a location, and the log of a scale, by at
        most this much (unconstrained units).

    >>> GlobalStep(curvature=False).curvature
    False
    """

    curvature: bool = True
    dense_max: int = 64
    dense_every: int = 8
    dense_threshold: float = 1.0
    step_size: Any = field(default_factory=lambda: _schedules.natural_step(1.0, 50))
    curvature_decay: float = 0.1
    antithetic: bool = True
    average: bool = True
    max_change: float = 1.0

    def __post_init__(self):
        owner = "kq.GlobalStep"
        object.__setattr__(self, "max_change", _positive(
            owner, "max_change", self.max_change, "it bounds a natural-gradient step in "
            "unconstrained units, e.g. max_change=1.0"))
        for name in ("curvature", "antithetic", "average"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{owner}: {name}={getattr(self, name)!r} must be True or False")
        object.__setattr__(self, "dense_max", _int_in(
            owner, "dense_max", self.dense_max, 0, 1024, "global blocks of up to this many "
            "numbers keep a dense curvature (a D x D matrix); e.g. dense_max=64, or 0"))
        object.__setattr__(self, "dense_every", _int_in(
            owner, "dense_every", self.dense_every, 1, None, "the dense step recomputes its "
            "preconditioner every this many steps, e.g. dense_every=8 (1: every step)"))
        object.__setattr__(self, "dense_threshold", _positive(
            owner, "dense_threshold", self.dense_threshold, "a curvature coupling, e.g. 1.0"))
        object.__setattr__(self, "curvature_decay", _positive(
            owner, "curvature_decay", self.curvature_decay, "the newest batch's weight in the "
            "running curvature, e.g. 0.1", high=1.0))
        step = self.step_size
        if isinstance(step, _schedules.Schedule):
            if not float(step(0)) > 0:
                raise ValueError(f"{owner}: step_size={step!r} must be positive at step 0")
        else:
            step = _schedules.constant(_positive(owner, "step_size", step, "rho_t of the "
                                                 "natural-gradient step, e.g. 0.5 or "
                                                 "kq.schedules.robbins_monro(1.0, 50)", 2.0))
        object.__setattr__(self, "step_size", step)

    def uses_curvature(self, global_size: int) -> bool:
        """Whether a global block of ``global_size`` numbers gets curvature steps."""
        return bool(self.curvature) and global_size > 0

    def uses_dense(self, global_size: int) -> bool:
        """Whether a global block of ``global_size`` numbers keeps a dense curvature."""
        return self.uses_curvature(global_size) and global_size <= self.dense_max


@dataclass(frozen=True)
class Rule:
    """Which parts of the step rule a fit runs, decided once for every backend from the
    model and the two settings (``kq.fit``'s ``local_step`` and ``global_step``).

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     mu = kq.Global("mu", kq.Normal(0.0, 1.0), shape=(3,))
    >>> rule = Rule.of(m, None, GlobalStep())
    >>> rule.global_size, rule.curvature, rule.dense, rule.average, rule.row_adam
    (3, True, True, True, False)
    """

    rows: Any            # LocalStep, RowAdam, or None (no free locals / plain Adam)
    globals: Any         # GlobalStep, or None (plain Adam)
    global_size: int     # the number of global numbers
    curvature: bool      # natural-gradient steps with the expected curvature
    dense: bool          # ... and the dense curvature matrix
    antithetic: bool     # the global draws as an antithetic pair
    average: bool        # the reported globals averaged over the iterates

    @classmethod
    def of(cls, model, local_step, global_step) -> "Rule":
        size = sum(int(np.prod(v.shape, dtype=int)) for v in model.globals)
        on = global_step is not None
        return cls(local_step, global_step, size,
                   curvature=on and global_step.uses_curvature(size),
                   dense=on and global_step.uses_dense(size),
                   antithetic=on and global_step.antithetic,
                   average=on and global_step.average and bool(model.globals))

    @property
    def local_step(self) -> bool:
        """The free locals take the local step."""
        return isinstance(self.rows, LocalStep)

    @property
    def row_adam(self) -> bool:
        """The free locals take row-wise Adam steps."""
        return isinstance(self.rows, RowAdam)

    @property
    def stl(self) -> bool:
        """The free locals' gradient is the sticking-the-landing one (RowAdam(stl=True))."""
        return self.row_adam and self.rows.stl


def resolve_local_step(value, model):
    """``kq.fit``'s ``local_step=`` as the rule the free locals follow: a LocalStep, a
    RowAdam, or None when the model has no free local latent (nothing to step).
    "auto" (or True) is ``LocalStep()``; None (or False) is
    ``RowAdam(stl=False, scale_by_visits=False)``."""
    if value is None or value is False:
        value = RowAdam(stl=False, scale_by_visits=False)
    elif isinstance(value, str) and value == "auto" or value is True:
        value = LocalStep()
    if not isinstance(value, (LocalStep, RowAdam)):
        raise TypeError(f"local_step={value!r}: give 'auto' (the default), None (row-wise Adam "
                        "steps, no local step), kq.LocalStep(iterations=..., points=..., "
                        "max_change=..., final_pass=...) or kq.RowAdam(stl=..., "
                        "scale_by_visits=...)")
    return value if model.free_locals else None


#: Likelihood families whose log density is piecewise linear in its location: their
#: curvature is 0 almost everywhere, so the curvature step cannot see the data.
FLAT_CURVATURE = ("Laplace",)
#: Operators that are piecewise linear: a kq.Potential built with one (-|y - w x|) may
#: have 0 curvature almost everywhere too (measured: q's scales stayed at the prior's).
PIECEWISE_OPS = ("abs", "relu", "maximum", "minimum", "where")


def flat_curvature_likelihoods(model) -> list[str]:
    """The Observed of ``model`` whose curvature autodiff sees as 0 (``FLAT_CURVATURE``,
    alone or as a kq.Mixture's components), and the kq.Potential terms that may be (an
    operator of ``PIECEWISE_OPS`` anywhere in the expression: erring toward Adam steps,
    which are right, only slower, where the curvature step's scales would be wrong)."""
    def piecewise(expr) -> bool:
        stack = [expr]
        while stack:
            node = stack.pop()
            if node.op in PIECEWISE_OPS:
                return True
            stack.extend(node.args)
        return False
    return ([v.name for v in model.observed
             if v.dist.family in FLAT_CURVATURE or v.dist.component in FLAT_CURVATURE]
            + [v.name for v in model.potentials if piecewise(v.expr)])


def resolve_global_step(value, model=None) -> Optional[GlobalStep]:
    """``kq.fit``'s ``global_step=`` as a GlobalStep, or None (plain Adam). ``"auto"``
    is the curvature step, except for a model with a Laplace likelihood, or a
    kq.Potential written with a piecewise-linear operator (``flat_curvature_likelihoods``):
    its Hessian is 0 almost everywhere, so q's scales would come from the prior alone
    (measured: a location 1.9 +- 5.0 for data with median 1.17; with -|y - w x - b| / 0.5
    as a Potential, q sds 5.0, the prior's); Adam fits them (1.16 +- 0.04; sds 0.024, as
    the Laplace Observed's)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value == "auto" or value is True:
        if model is not None and value == "auto" and flat_curvature_likelihoods(model):
            return None
        return GlobalStep()
    if not isinstance(value, GlobalStep):
        raise TypeError(f"global_step={value!r}: give 'auto' (the default), None (plain Adam) "
                        "or kq.GlobalStep(curvature=..., step_size=..., average=...)")
    return value


def describe(model, local_step, global_step) -> list[str]:
    """How a fit moves q for ``model`` under these (resolved) settings, for kq.explain."""
    lines = ["  How q is fitted (kq.fit's local_step= and global_step=):"]
    free = [v.name for v in model.free_locals]
    amortized = [v.name for v in model.locals if v.amortized]
    if isinstance(local_step, LocalStep):
        k = sum(int(np.prod(v.shape, dtype=int)) for v in model.free_locals)
        rule = (f"{local_step.points}-point Gauss-Hermite quadrature" if k == 1 else
                f"the {2 * k}-point cubature rule (degree 3)")
        lines += [f"    local {', '.join(free)}: a local step before each global step: "
                  f"{local_step.iterations} guarded Newton iteration(s) on the batch's rows,",
                  f"      E over each row's q ({k} number(s)) by {rule}; "
                  + (f"a final pass of {local_step.final_pass} over all rows at the reported "
                     "globals" if local_step.final_pass else "no final pass")]
    elif isinstance(local_step, RowAdam):
        lines.append(f"    local {', '.join(free)}: {local_step.describe()} (no local step)")
    else:
        lines.append("    no free local latent: no local step")
    if amortized:
        lines.append(f"    amortized {', '.join(amortized)}: q from the encoder, whose weights "
                     "take Adam steps")
    globals_ = [v.name for v in model.globals]
    size = sum(int(np.prod(v.shape, dtype=int)) for v in model.globals)
    if not globals_:
        lines.append("    no global latent")
    elif global_step is None:
        lines.append(f"    global {', '.join(globals_)}: Adam steps of learning_rate, one draw")
        flat = flat_curvature_likelihoods(model)
        if flat:
            lines.append(f"      (global_step='auto' chose Adam: the log density of "
                         f"{', '.join(flat)} (a Laplace likelihood, or a kq.Potential with abs, "
                         "relu, maximum, minimum or where) may have 0 curvature almost "
                         "everywhere, which the curvature step cannot use)")
    else:
        if global_step.uses_curvature(size):
            lines.append(f"    global {', '.join(globals_)} ({size} numbers): natural-gradient "
                         f"steps (step size {_schedule_text(global_step.step_size)}, capped at "
                         "the line search's optimum along the step taken), q's scales "
                         "from the expected curvature E_q[-diag H],")
            batches = getattr(global_step.step_size, "num_batches", None)
            weight = (f"{global_step.curvature_decay:g} x min(step size, 1) on the newest, "
                      "as there are minibatches" if batches is not None and batches > 1 else
                      f"{global_step.curvature_decay:g} on the newest" + (
                          ", fixed for a full batch" if batches == 1 else
                          ", times min(step size, 1) with minibatches"))
            lines.append("      estimated at the global draws by one scaled Hutchinson probe "
                         f"(two Hessian-vector products a step), averaged over steps (weight "
                         f"{weight}); a number whose curvature is not positive takes Adam steps")
            floored = [v.name for v in model.globals
                       if np.all(np.isfinite(_constant_normal_sigma(v)))]
            if floored:
                lines.append(f"      {', '.join(floored)}: curvature at least beta_global / "
                             "sigma^2 of the constant Normal prior, so q is never wider")
            if global_step.uses_dense(size):
                lines.append(f"      dense curvature ({size} <= dense_max={global_step.dense_max}): "
                             "one exact column a step; where the curvature's coupling "
                             f"exceeds {global_step.dense_threshold:g}, the mean step is "
                             "preconditioned by the whole matrix (its inverse recomputed every "
                             f"dense_every={global_step.dense_every} steps) and the scales take "
                             "its diagonal")
            else:
                lines.append(f"      diagonal curvature only ({size} numbers > dense_max="
                             f"{global_step.dense_max}): correlated numbers move more slowly")
        else:
            lines.append(f"    global {', '.join(globals_)} ({size} numbers): Adam steps of "
                         "learning_rate (curvature=False)")
        extra = [x for x, on in (("an antithetic pair of global draws", global_step.antithetic),
                                 ("the locals by the local step's quadrature",
                                  isinstance(local_step, LocalStep))) if on]
        if extra:
            lines.append(f"      gradient: {' and '.join(extra)}")
        if global_step.average:
            lines.append("      reported q: the average of the iterates, recent steps weighted "
                         "most (polynomial decay, eta = 3)")
    if model.params:
        names = ", ".join(v.name for v in model.params)
        lines.append(f"    point parameters {names}: Adam steps of learning_rate")
    return lines


def _schedule_text(schedule) -> str:
    if isinstance(schedule, _schedules.NaturalStep):
        if schedule.num_batches is None:
            return f"natural_step({schedule.start:g}, {schedule.delay:g})"
        if schedule.num_batches == 1:
            return f"{schedule.start:g} / sqrt(1 + t/{schedule.delay:g})"
        f = 1.0 - 1.0 / schedule.num_batches
        return (f"{schedule.start:g} / sqrt((1 + t/{schedule.delay:g}) "
                f"(1 + {f:.3g} t/{schedule.delay:g}))")
    if isinstance(schedule, _schedules.RobbinsMonro):
        return (f"{schedule.start:g} / (1 + t/{schedule.delay:g})^{schedule.power:g}")
    if isinstance(schedule, _schedules.Constant):
        return f"{schedule.value:g}"
    return repr(schedule)


# -- quadrature over a row's locals ----------------------------------------------------------

def quadrature(dim: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (P, dim) and weights (P,) with sum_p w_p f(xi_p) ~ E f(xi), xi ~ N(0, I_dim).

    dim = 1: Gauss-Hermite with ``points`` nodes (exact for polynomials of degree
    2 * points - 1). dim > 1: the third-degree spherical-radial cubature rule
    (Arasaratnam & Haykin 2009), nodes +-sqrt(dim) e_k with equal weights.

    >>> nodes, weights = quadrature(3, 8)
    >>> nodes.shape, round(float(weights.sum()), 12)
    ((6, 3), 1.0)
    """
    if dim == 1:
        x, w = np.polynomial.hermite_e.hermegauss(points)
        return x[:, None], w / w.sum()
    eye = np.sqrt(dim) * np.eye(dim)
    return np.concatenate([eye, -eye]), np.full(2 * dim, 1.0 / (2 * dim))


@dataclass(frozen=True)
class LocalLayout:
    """Where each free local's numbers sit in a row's flat coordinate vector (K numbers),
    and the quadrature over them."""

    names: tuple       # free locals, model order
    shapes: tuple      # each one's per-row shape
    offsets: tuple     # start of each in the flat vector
    size: int          # K
    nodes: np.ndarray  # (P, K) standard-normal nodes
    weights: np.ndarray  # (P,)

    @property
    def num_nodes(self) -> int:
        return int(self.weights.shape[0])

    def block(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + int(np.prod(self.shapes[i], dtype=int)))


def local_layout(model, local_step) -> Optional[LocalLayout]:
    """The layout of ``model``'s free locals for ``local_step`` (None: no local step)."""
    if not isinstance(local_step, LocalStep) or not model.free_locals:
        return None
    names, shapes, offsets, k = [], [], [], 0
    for v in model.free_locals:
        names.append(v.name)
        shapes.append(tuple(v.shape))
        offsets.append(k)
        k += int(np.prod(v.shape, dtype=int))
    nodes, weights = quadrature(k, local_step.points)
    return LocalLayout(tuple(names), tuple(shapes), tuple(offsets), k, nodes, weights)


# -- the local step's arithmetic ---------------------------------------------------------------

def row_objective(xp, values, weights, log_scale, beta_local):
    """f_i = sum_p w_p l_i(u_ip) + beta_local * sum_k log s_ik: each row's part of the
    (weighted, negated) loss up to a constant. values (P, R); weights (P,); log_scale
    (R, K). A NaN (an overflowing candidate) counts as -inf, so it is never kept."""
    f = xp.sum(values * weights[:, None], axis=0) + beta_local * xp.sum(log_scale, axis=-1)
    return xp.where(xp.isnan(f), -np.inf, f)


def newton_candidates(xp, loc, log_scale, grad, hess, beta_local, max_change) -> list:
    """The guarded step's candidates for each row: [(loc, log_scale), ...], the full
    natural-parameter Newton step first, then the clipped step at 1, 1/2 and 1/4.

    loc, log_scale: (R, K), q's current location and log scale; grad = E[l'], hess =
    E[l''] (the diagonal), (R, K); beta_local: the local KL weight at this step.

    >>> import numpy as np
    >>> # l(u) = -(u - 2)^2 / 2 (a unit Normal likelihood): E[l'] = 2 - m, E[l''] = -1
    >>> full = newton_candidates(np, np.zeros((1, 1)), np.zeros((1, 1)), np.full((1, 1), 2.0),
    ...                          np.full((1, 1), -1.0), 1.0, 1.0)[0]
    >>> float(full[0][0, 0]), float(full[1][0, 0])   # the optimum: m = 2, log s = 0
    (2.0, 0.0)
    """
    curvature = -hess
    usable = curvature > 0
    precision_now = beta_local * xp.exp(-2.0 * log_scale)
    h = xp.maximum(xp.where(usable, curvature, precision_now), MIN_CURVATURE)
    d_loc = grad / h
    d_log_scale = xp.where(usable, 0.5 * (xp.log(beta_local) - xp.log(h)) - log_scale, 0.0)
    clipped_loc = xp.clip(d_loc, -max_change, max_change)
    clipped_log_scale = xp.clip(d_log_scale, -max_change, max_change)
    out = [(loc + d_loc, log_scale + d_log_scale)]
    for t in (1.0, 0.5, 0.25):
        out.append((loc + t * clipped_loc, log_scale + t * clipped_log_scale))
    return out


def keep_better(xp, best: tuple, candidate: tuple) -> tuple:
    """Row by row, the candidate (loc, log_scale, f) where its f is strictly larger."""
    better = candidate[2] > best[2]
    pick = lambda new, old: xp.where(better[:, None], new, old)
    return pick(candidate[0], best[0]), pick(candidate[1], best[1]), xp.where(
        better, candidate[2], best[2])


# -- the global step's arithmetic --------------------------------------------------------------

def curvature_average(xp, previous, sample, decay, step):
    """The running curvature at ``step`` (from 0): the plain mean of the samples while
    1/(step + 1) > ``decay``, then an exponential average with weight ``decay`` on the
    newest one (a single probe is noisy: the first samples get equal weights). A
    non-finite sample leaves it unchanged.

    >>> import numpy as np
    >>> c = 0.0
    >>> for t, x in enumerate([1.0, 3.0, 5.0]):
    ...     c = curvature_average(np, c, np.array(x), 0.1, t)
    >>> float(c)
    3.0
    """
    sample = xp.where(xp.isfinite(sample), sample, previous)
    weight = xp.maximum(decay, 1.0 / (step + 1.0))
    return (1.0 - weight) * previous + weight * sample


def probe_curvature(xp, hessian_probe, probe, scale):
    """One scaled Hutchinson estimate of -diag H: ``-(probe / scale) * hessian_probe``,
    where ``hessian_probe`` = H v at v = scale * probe, probe a Rademacher (+-1) vector
    (or a unit vector e_j, which gives -H_jj exactly at j and 0 elsewhere). Unbiased
    since E[probe probe^T] = I; scaling by q's scales makes the noise of coordinate j,
    sum_k H_jk s_k / s_j r_k, relative to q's own widths.

    >>> import numpy as np
    >>> H = np.array([[-4.0, 1.0], [1.0, -9.0]])
    >>> s = np.array([0.5, 1 / 3])
    >>> probes = [np.array(r, float) for r in ([1, 1], [1, -1], [-1, 1], [-1, -1])]
    >>> np.mean([probe_curvature(np, H @ (s * r), r, s) for r in probes], axis=0)
    array([4., 9.])
    """
    return -(probe / scale) * hessian_probe


def column_average(xp, previous, column, index, visits, decay):
    """The running dense curvature (D, D) with its column ``index`` averaged with the
    newest exact ``column`` (D,), -H e_index at this step's draws: the round robin visits
    each column every D steps, and column j's ``visits``-th visit (from 0) takes weight
    max(decay, COLUMN_DECAY, 1/(visits + 1)): a horizon of a few visits (a column taken
    while q was still far off must not linger for D/decay steps: a funnel's scale
    collapsed under one), each visit's column being exact at its draws. A non-finite
    column leaves it unchanged.

    >>> import numpy as np
    >>> c = np.zeros((2, 2))
    >>> c = column_average(np, c, np.array([2.0, 1.0]), 0, 0, 0.1)
    >>> column_average(np, c, np.array([1.0, 3.0]), 1, 0, 0.1)
    array([[2., 1.],
           [1., 3.]])
    """
    size = previous.shape[-1]
    is_column = xp.eq(xp.arange(size), index) if hasattr(xp, "eq") else xp.arange(size) == index
    old = previous[:, index]
    column = xp.where(xp.isfinite(column), column, old)
    weight = xp.maximum(xp.maximum(decay, COLUMN_DECAY), 1.0 / (visits + 1.0))
    new = old + weight * (column - old)
    return xp.where(is_column[None, :], new[:, None], previous)


def dense_inverse(xp, curvature_matrix, relative_floor=1e-10):
    """The dense step's preconditioner P^-1 (D, D): P = the symmetric part of
    ``curvature_matrix`` with each eigenvalue lambda that is not positive replaced by
    max(|lambda|, the Rayleigh quotient v^T diag v of the matrix's diagonal along its
    eigenvector v), floored at ``relative_floor`` x the largest. Columns taken at
    different steps make the matrix indefinite while q moves; along such a direction the
    step is then no longer than the diagonal step's there. (|lambda| alone, as
    saddle-free Newton, made a Student-t regression's fit cycle for good in 3 of 8 runs:
    bench/classic_models.py "robust".)

    >>> import numpy as np
    >>> P = np.array([[1.0, 0.999], [0.999, 1.0]])   # a 0.999-correlated posterior
    >>> np.round(dense_inverse(np, P) @ (P @ np.array([3.0, -2.0])), 6)
    array([ 3., -2.])
    """
    sym = 0.5 * (curvature_matrix + curvature_matrix.T)
    values, vectors = xp.linalg.eigh(sym)
    # along a direction the estimate calls non-positive, the curvature the diagonal
    # step would use there (its Rayleigh quotient), never less
    diagonal = xp.maximum(xp.diagonal(sym), MIN_CURVATURE)
    along = xp.sum(vectors * vectors * diagonal[:, None], axis=0)
    magnitude = xp.where(values > 0, values, xp.maximum(xp.abs(values), along))
    magnitude = xp.maximum(magnitude, relative_floor * xp.max(magnitude) + MIN_CURVATURE)
    return xp.dot(vectors / magnitude[None, :], vectors.T)


def prior_curvature(model) -> np.ndarray:
    """Each global number's prior curvature where it is known before any step, flat in
    model order (D,): 1 / sigma^2 for a kq.Normal prior whose parameters read no variable
    (its q lives on the value itself), 0 elsewhere (no floor). Where a number's averaged
    curvature is positive, the global step never takes one below beta_global x this
    (``global_update``), so its q is never wider than the prior (a number whose curvature
    is not positive keeps Adam's step): where the likelihood is log-concave the expected
    curvature is at least the prior's, and elsewhere a Hutchinson estimate near 0 (a
    10,000-weight network's) would set scales far beyond the prior's and let the fit
    drift away.

    >>> import klqp as kq
    >>> with kq.Model("m") as model:
    ...     w = kq.Global("w", kq.Normal(0.0, 2.0), shape=(2,))
    ...     s = kq.Global("s", kq.HalfNormal(1.0))
    ...     z = kq.Global("z", kq.Normal(w[0], 1.0))
    >>> prior_curvature(model)
    array([0.25, 0.25, 0.  , 0.  ])
    """
    parts = [np.broadcast_to(1.0 / np.square(_constant_normal_sigma(v)), v.shape).ravel()
             for v in model.globals]
    return np.concatenate(parts) if parts else np.zeros(0)


def _constant_normal_sigma(v) -> np.ndarray:
    """sigma of ``v``'s prior where it is a kq.Normal whose parameters read no variable,
    on the value itself; else inf."""
    from .distributions import transform_kind
    from .expr import NumpyOps, evaluate, variables_in

    d = v.dist
    if (d is None or d.family != "Normal" or transform_kind(d.support) != "identity"
            or any(variables_in(e) for _, e in d.params)):
        return np.array(np.inf)
    return np.asarray(evaluate(d.param_dict["sigma"], {}, NumpyOps), dtype=float)


def eager_when(condition, compute, keep):
    """``compute()`` where ``condition`` holds, else ``keep``: the NumPy form of the
    conditional ``global_update`` takes. A backend passes its lazy one (``jax.lax.cond``,
    PyTensor's ``ifelse``) so that a step that keeps the value does not compute it."""
    return compute() if bool(condition) else keep


def coupling(xp, curvature_matrix):
    """max_j sum_{k != j} |C_jk| / sqrt(C_jj C_kk) of the dense curvature (0 until every
    diagonal entry is positive). Below 1 the diagonal step (rho_t <= 1) is stable: the
    largest eigenvalue of the normalized curvature is at most 1 + coupling < 2
    (Gershgorin); above, the diagonal step overshoots along correlated directions.

    >>> import numpy as np
    >>> round(float(coupling(np, np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.3], [0.0, 0.3, 1.0]]))), 6)
    0.8
    """
    sym = 0.5 * (curvature_matrix + curvature_matrix.T)
    diagonal = xp.diagonal(sym)
    root = xp.sqrt(xp.maximum(diagonal, MIN_CURVATURE))
    corr = xp.abs(sym) / (root[:, None] * root[None, :])
    size = sym.shape[-1]
    off = xp.where(xp.eye(size) > 0, 0.0, corr)
    return xp.where(xp.all(diagonal > 0), xp.max(xp.sum(off, axis=1)), 0.0)


def line_step_size(xp, step_size, ascent, direction, curvature_along):
    """rho_t capped at the exact line search's optimum along the step's direction u
    (the diagonal step's dJ/dm / c, or the dense step's P^-1 dJ/dm) for the quadratic
    model of J there: t* = (dJ/dm . u) / (u^T (-H) u), ``curvature_along`` = u^T (-H) u
    (a Hessian-vector product at the step's draws). Where the curvature that made u is
    -H (a diagonal H for the diagonal step), t* = 1: nothing changes; where the numbers
    are coupled (a random walk's increments, a funnel's scale and its effects) or the
    dense step's running matrix lags q, the step overshoots by 1 / t* and is cut to the
    line's optimum. Never lengthened; unchanged where u^T (-H) u <= 0.

    >>> import numpy as np
    >>> H = -np.array([[1.0, 0.9], [0.9, 1.0]])          # two coupled numbers
    >>> g = np.array([1.0, 1.0]); u = g / -np.diag(H)
    >>> round(float(line_step_size(np, 1.0, g, u, u @ (-H) @ u)), 4)   # 1 / (1 + 0.9)
    0.5263
    """
    slope = xp.sum(ascent * direction)
    usable = (curvature_along > 0) & (slope > 0)
    optimum = slope / xp.where(usable, curvature_along, 1.0)
    return xp.where(usable, xp.minimum(step_size, optimum), step_size)


def natural_gradient_loc(xp, loc, ascent, curvature, step_size, fallback, max_change):
    """loc + step_size * ascent / curvature where the curvature is positive, else
    ``fallback`` (Adam's step). ``ascent`` = dJ/dloc, J the weighted log joint (minus
    the loss's gradient over the cost scale). The change is clipped to ``max_change``:
    far from the optimum a curvature can be tiny (a Poisson rate underestimated by the
    current q) and its Newton step would overshoot."""
    usable = curvature > 0
    step = step_size * ascent / xp.maximum(curvature, MIN_CURVATURE)
    return xp.where(usable, loc + xp.clip(step, -max_change, max_change), fallback)


def curvature_scale(xp, curvature, beta_global, scale, fallback, max_change):
    """q's scale at the optimum for this curvature, sqrt(beta_global / c), where c > 0,
    else ``fallback``; the log of the current ``scale`` moves by at most ``max_change``.
    beta_global = 0 (no global KL: a point estimate) gives a scale of ~1e-6 / sqrt(c)
    rather than 0, so log q stays finite."""
    usable = curvature > 0
    target = xp.sqrt(xp.maximum(beta_global, 1e-12) / xp.maximum(curvature, MIN_CURVATURE))
    change = xp.clip(xp.log(target) - xp.log(scale), -max_change, max_change)
    return xp.where(usable, scale * xp.exp(change), fallback)


def curvature_weight(xp, rule: GlobalStep, step_size):
    """The running curvature's weight on the newest sample: with minibatches (the default
    step size bound to M > 1 batches an epoch) ``curvature_decay`` x min(rho_t, 1), rho_t
    this step's size, so the horizon grows as the steps shrink and sampling noise leaves
    the curvature as it leaves the means (a fixed horizon keeps a noise floor in c, and a
    Jensen bias in sqrt(beta / c) that no number of steps removes); with a full batch, or
    another step-size schedule, ``curvature_decay``: there the curvature must follow q as
    it moves (a funnel's scale).

    >>> from klqp import schedules
    >>> full = GlobalStep(step_size=schedules.natural_step(1.0, 50, num_batches=1))
    >>> mini = GlobalStep(step_size=schedules.natural_step(1.0, 50, num_batches=10))
    >>> float(curvature_weight(np, full, 0.2)), round(float(curvature_weight(np, mini, 0.2)), 4)
    (0.1, 0.02)
    """
    if (getattr(rule.step_size, "num_batches", None) or 1) > 1:
        return rule.curvature_decay * xp.minimum(step_size, 1.0)
    return rule.curvature_decay


def global_update(xp, rule: GlobalStep, step, step_size, loc, scale, ascent, sample, running,
                  beta_global, fallback_loc, fallback_scale, matrix=None, column=None,
                  inverse=None, when=eager_when, curvature_along=None, floor=0.0):
    """One global step on the flat global block (D numbers; the module docstring, 2.):
    returns (new loc, new scale, new running curvature, new dense matrix or None, new
    dense preconditioner or None).

    ``sample``: this step's curvature sample (D,); ``running``: the running curvature
    before it; ``ascent`` = dJ/dloc; ``fallback_*``: Adam's new values, kept where the
    curvature is not positive. With a dense matrix (``matrix``: the running D x D one,
    ``column``: this step's exact column step mod D), once every column has been seen
    and the curvature's coupling exceeds ``rule.dense_threshold``, the mean step is
    preconditioned by the whole matrix and the scales take its exact diagonal. The
    preconditioner (``inverse``: the last ``dense_inverse``) is recomputed when every
    column has been seen and then every ``rule.dense_every`` steps, through ``when``
    (condition, compute, keep): the backend's lazy conditional. ``floor``: the prior's
    curvature (``prior_curvature``); the step's curvature is at least beta_global x it.

    >>> import numpy as np
    >>> loc, scale = np.zeros(2), np.ones(2)
    >>> new = global_update(np, GlobalStep(), 0, 1.0, loc, scale, ascent=np.array([2.0, -1.0]),
    ...                     sample=np.array([4.0, 1.0]), running=np.zeros(2), beta_global=1.0,
    ...                     fallback_loc=loc, fallback_scale=scale)
    >>> new[0], new[1], new[2]   # m + g / c (clipped to 1), s = sqrt(1 / c), c averaged
    (array([ 0.5, -1. ]), array([0.5, 1. ]), array([4., 1.]))
    """
    running = curvature_average(xp, running, sample, curvature_weight(xp, rule, step_size), step)
    curvature = running
    if matrix is not None:
        size = loc.shape[0]
        matrix = column_average(xp, matrix, column, step % size, step // size,
                                rule.curvature_decay)
        # where the curvature is strongly correlated (every column seen): the mean step
        # preconditioned by the whole matrix, the scales from its diagonal
        complete = step >= size - 1
        correlated = complete & (coupling(xp, matrix) > rule.dense_threshold)
        curvature = xp.where(correlated, xp.diagonal(matrix), curvature)
        # a preconditioner from every column, refreshed every dense_every steps after
        refresh = complete & xp.equal((step + 1 - size) % rule.dense_every, 0)
        inverse = when(refresh, lambda: dense_inverse(xp, matrix), inverse)
    # q no wider than the prior where the curvature step runs (Adam's where c <= 0)
    curvature = xp.where(curvature > 0, xp.maximum(curvature, beta_global * floor), curvature)
    direction = xp.where(curvature > 0, ascent / xp.maximum(curvature, MIN_CURVATURE), 0.0)
    if matrix is not None:
        dense = xp.dot(inverse, ascent)
        direction = xp.where(correlated, dense, direction)
    line_size = step_size
    if curvature_along is not None:  # the step taken, cut at its line's optimum
        line_size = line_step_size(xp, step_size, ascent, direction, curvature_along(direction))
    new_loc = natural_gradient_loc(xp, loc, ascent, curvature, line_size, fallback_loc,
                                   rule.max_change)
    if matrix is not None:
        # the dense step too: its running matrix lags q, and along a funnel's direction
        # (a non-centred scale and its group effects) a step of rho_t ran off to ELBO -1e11
        new_loc = xp.where(correlated, loc + xp.clip(line_size * dense, -rule.max_change,
                                                     rule.max_change), new_loc)
    new_scale = curvature_scale(xp, curvature, beta_global, scale, fallback_scale,
                                rule.max_change)
    return new_loc, new_scale, running, matrix, inverse


ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # Adam's constants (optax's, pm.adam's)


def row_adam(xp, grad, first, second, count, learning_rate):
    """Row-wise lazy Adam (``kq.RowAdam``) on a batch's rows: returns (new first moment,
    new second moment, the step to add to the rows). ``grad``, ``first``, ``second``:
    (b, ...) for the batch rows; ``count``: (b,) each row's steps so far, this one
    included (a row's moments and count change only on steps that take it: dense Adam
    would keep moving a row through its momentum after it left the batch, with a second
    moment that decays between rare visits). The backends gather and scatter the rows.

    >>> import numpy as np
    >>> m, v, step = row_adam(np, np.array([2.0, -4.0]), np.zeros(2), np.zeros(2),
    ...                       np.array([1.0, 1.0]), 0.1)
    >>> np.round(step, 6)   # Adam's first step: -learning_rate * sign(grad)
    array([-0.1,  0.1])
    """
    shape = (-1,) + (1,) * (grad.ndim - 1)
    first = ADAM_B1 * first + (1 - ADAM_B1) * grad
    second = ADAM_B2 * second + (1 - ADAM_B2) * grad * grad
    first_hat = first / (1 - ADAM_B1 ** count).reshape(shape)
    second_hat = second / (1 - ADAM_B2 ** count).reshape(shape)
    return first, second, -learning_rate * first_hat / (xp.sqrt(second_hat) + ADAM_EPS)


def running_average(xp, average, value, step):
    """Polynomial-decay averaging: avg <- avg + (eta + 1) / (t + 1 + eta) * (value - avg)
    at step t (counted from 0, so step 0 sets the average to the value).

    >>> import numpy as np
    >>> avg = 0.0
    >>> for t, x in enumerate([4.0, 0.0, 0.0, 0.0]):
    ...     avg = running_average(np, avg, x, t)
    >>> round(float(avg), 6)   # recent steps weigh more: 4 * (1 - 4/5)(1 - 4/6)(1 - 4/7)
    0.114286
    """
    weight = (AVERAGE_POWER + 1.0) / (step + 1.0 + AVERAGE_POWER)
    return average + weight * (value - average)
