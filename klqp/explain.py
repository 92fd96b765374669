"""``kq.explain``: the objective of one model, with every constant written out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .model import Model
from .objective import Shared, coefficients, cost_scale
from .problem import batches_per_epoch
from .objective import resolve_weights
from .steps import describe, resolve_global_step, resolve_local_step

__all__ = ["explain", "Explanation"]


@dataclass(frozen=True)
class Explanation:
    """``coefficients``: the factor in front of each raw minibatch sum of the loss;
    ``text``: the same, for a person (``print(explanation)``)."""

    coefficients: dict
    weights: dict
    total_size: int
    batch_size: int
    cost_scale: float
    text: str

    def __str__(self) -> str:
        return self.text


def _describe(w) -> str:
    if isinstance(w, Shared):
        return f"kq.Shared, now {w.value:g} (changed while training, never recompiled)"
    name = type(w).__name__
    if name == "Constant":
        return f"{w.value:g}"
    fields = ", ".join(f"{k}={v}" for k, v in w.__dict__.items())
    return f"schedule {name}({fields}), {float(w(0)):g} at step 0"


def explain(model: Model, *, total_size=None, batch_size=None, beta=None, beta_global=None,
            beta_local=None, likelihood_weight=1.0, scale_cost_to_minibatch: bool = False,
            step: int = 0, local_step="auto", global_step="auto") -> Explanation:
    """State the loss klqp minimizes for ``model``, with numbers, and how kq.fit moves q
    toward its optimum with these ``local_step`` / ``global_step`` settings (kq.fit's).

    Weights given as schedules are shown at ``step``.

    >>> import klqp as kq
    >>> with kq.Model("m") as m:
    ...     mu = kq.Global("mu", kq.Normal(0, 1))
    ...     kq.Observed("y", kq.Normal(mu, 1))
    >>> kq.explain(m, total_size=1000, batch_size=100, scale_cost_to_minibatch=True).coefficients
    {'loglik': 1.0, 'kl_global': 0.1, 'kl_local': 1.0, 'potential_rows': 1.0, 'potential_global': 0.1}
    """
    n = total_size if total_size is not None else model.total_size
    if n is None:
        raise ValueError("explain needs total_size=N (or a model declared with total_size)")
    b = n if batch_size is None else batch_size
    if not 1 <= b <= n:
        raise ValueError(f"batch_size={b} must be between 1 and total_size={n}")
    weights = resolve_weights(beta=beta, beta_global=beta_global, beta_local=beta_local,
                              likelihood_weight=likelihood_weight,
                              num_batches=batches_per_epoch(n, b, False))
    values = {k: float(v) for k, v in weights.at(step).items()}
    coef = coefficients(total_size=n, batch_size=b, scale_cost_to_minibatch=scale_cost_to_minibatch,
                        **values)
    s = cost_scale(n, b, scale_cost_to_minibatch)
    g = ", ".join(v.name for v in model.globals) or "none"
    l = ", ".join(v.name for v in model.locals) or "none"
    o = ", ".join(v.name for v in model.observed) or "none"
    per_row = [v.name for v in model.potentials if v.per_row]
    whole = [v.name for v in model.potentials if not v.per_row]
    potential_lines = (
        (["               - (N/b) * sum_B f_i(theta, z_i, x_i)"] if per_row else [])
        + (["               - f(theta)"] if whole else []))
    lines = [
        f"klqp objective for model {model.name!r}",
        f"  N = total_size = {n}, b = batch_size = {b}, N/b = {n / b:g}",
        f"  global latents (theta below): {g}",
        f"  local latents (z_i below, one per row): {l}",
        f"  observed (y_i below): {o}",
        *([f"  potentials (kq.Potential, weight 1): per row f_i = {' + '.join(per_row)}"]
          if per_row else []),
        *([f"  potentials (kq.Potential, weight 1): global f = {' + '.join(whole)}"]
          if whole else []),
        "",
        "  loss = s * [ -T * (N/b) * sum_B log p(y_i | theta, z_i, x_i)",
        *potential_lines,
        "               + beta_global * (log q(theta) - log p(theta))",
        "               + beta_local * (N/b) * sum_B (log q(z_i) - log p(z_i | theta, x_i)) ]",
        "",
        f"  s = {f'b/N = {s:g}' if scale_cost_to_minibatch else '1'}   "
        f"(scale_cost_to_minibatch={scale_cost_to_minibatch}: rescales the whole loss, "
        "never the optimum)",
        f"  T = likelihood_weight = {_describe(weights.likelihood_weight)}",
        f"  beta_global = {_describe(weights.beta_global)}",
        f"  beta_local  = {_describe(weights.beta_local)}",
        "",
        f"  factor on sum_B log p(y_i|.)           : -s*T*N/b       = {-coef['loglik']:.6g}",
        f"  factor on log q(theta) - log p(theta)  : s*beta_global  = {coef['kl_global']:.6g}"
        + ("" if model.globals else "   (no global latents)"),
        f"  factor on sum_B (log q(z_i) - log p(z_i|.)) : s*beta_local*N/b = {coef['kl_local']:.6g}"
        + ("" if model.locals else "   (no local latents)"),
        *([f"  factor on sum_B f_i                    : -s*N/b         = {-coef['potential_rows']:.6g}"]
          if per_row else []),
        *([f"  factor on f                            : -s             = {-coef['potential_global']:.6g}"]
          if whole else []),
        "",
        "  Reported figures are full-data nats, whatever s and b: elbo = loglik - kl_global - "
        "kl_local" + (" + potential," if model.potentials else ","),
        "  with loglik = (N/b) sum_B log p(y_i|.) (no T), kl_* the (N/b-scaled) KL estimates"
        + (",\n  potential = the kq.Potential terms (per-row ones scaled by N/b, beta and T never "
           "apply)." if model.potentials else "."),
    ]
    simplex = [v.name for v in model.globals if v.dist.family == "Dirichlet"]
    if simplex:
        lines += [f"  Dirichlet globals {', '.join(simplex)}: q is Gaussian in K numbers (x, a): "
                  "p = softmax([x, 0]) (K - 1 numbers, the",
                  "  log-Jacobian sum(log p) in log p(theta)) and an auxiliary a ~ N(0, 1) that "
                  "nothing reads: q(a) -> N(0, 1), its KL -> 0."]
    corr = [v.name for v in model.globals if v.dist.family == "LKJCholesky"]
    if corr:
        lines += [f"  LKJCholesky globals {', '.join(corr)}: q is Gaussian in the K x K numbers u: "
                  "L's partial correlations are tanh of u's",
                  "  strictly lower triangle (the log-Jacobian in log p(theta)); the other "
                  "K (K + 1) / 2 are auxiliaries ~ N(0, 1) that",
                  "  nothing reads: their q -> N(0, 1), their KL -> 0."]
    if values["beta_global"] != values["beta_local"] and model.globals and model.locals:
        lines.append("  beta_global != beta_local: the global and the local KL are weighted apart.")
    lines.append("")
    glob = resolve_global_step(global_step, model)
    if glob is not None:  # the step size as the fit binds it (batches per epoch)
        glob = dataclasses.replace(glob, step_size=glob.step_size.bind(
            num_batches=batches_per_epoch(n, b, False)))
    lines += describe(model, resolve_local_step(local_step, model), glob)
    return Explanation(coefficients=coef, weights=values, total_size=n, batch_size=b,
                       cost_scale=s, text="\n".join(lines))
