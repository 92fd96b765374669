"""What a fit returns: q's parameters, per-step history and the state to resume from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import backends, transforms
from .problem import Problem, make_problem
from .steps import resolve_local_step

__all__ = ["FitResult", "FitState", "HISTORY_KEYS"]

HISTORY_KEYS = ("loss", "elbo", "loglik", "kl_global", "kl_local", "local_gain",
                "beta_global", "beta_local", "likelihood_weight", "skipped")


@dataclass
class FitState:
    """Where training stands: enough to resume exactly (plain arrays, no pickles)."""

    step: int
    optimizer: dict  # {name: NumPy array}: q's iterates and the optimizers' and rule's state
    backend: str
    rule: dict = field(default_factory=dict)  # the step rule (klqp.steps) it was trained with


@dataclass
class FitResult:
    """q after training.

    ``params``: ``{latent: {"loc", "scale"}}`` in unconstrained space (locals: N rows), as
    the fit reports q (``klqp.steps``): with the default global step the globals are the
    average of their iterates, and with a local step the locals come from a final pass
    at those globals. Training continues from ``state`` (the raw iterates).
    ``history``: per-step arrays ``loss, elbo, loglik, kl_global, kl_local, local_gain,
    beta_global, beta_local, likelihood_weight, skipped`` (figures in full-data nats; see
    klqp.objective; each step's estimate at that step's batch and at the TRAINING
    iterates, not at the averaged q the fit reports: ``elbo()`` gives the reported q's,
    the figure to compare two fits by; ``local_gain``: how much the local step raised the weighted
    objective of the batch's rows, (N/b) sum over the batch, 0 without a local step;
    ``skipped``: 1 where the step was not applied because something in it was NaN or
    inf, see klqp.guard; ``info["skipped_steps"]`` counts them).
    ``interrupted``: True when Ctrl-C stopped the run; the state is the last completed step.
    """

    problem: Problem
    backend: str
    params: dict
    history: dict
    state: FitState
    interrupted: bool = False
    info: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.problem.model

    @property
    def steps(self) -> int:
        return self.state.step

    def q(self, name: str) -> dict:
        """q of latent ``name`` in its unconstrained space: ``{"loc", "scale"}`` (locals:
        one row per training row). An amortized local's come from its encoder on the
        training data, so they need in-memory data."""
        spec = self.model.vars.get(name)
        if spec is None or spec.role not in ("global", "local"):
            raise KeyError(f"{name!r} is not a latent of model {self.model.name!r}; latents: "
                           f"{[v.name for v in self.model.latents]}")
        if not spec.amortized:
            return self.params[name]
        if self.problem.data is None:
            raise ValueError(f"{name!r} is amortized: its q on the training rows needs the "
                             "training data, and this fit streamed its batches; evaluate the "
                             "encoder on your rows with result.evaluate(...) instead")
        from .expr import NumpyOps, evaluate

        env = {**self.problem.data, **{v.name: self.params[v.name]["value"]
                                       for v in self.model.params}}
        loc, scale = (np.asarray(evaluate(e, env, NumpyOps), dtype=float) for e in spec.encoder)
        shape = (self.problem.total_size,) + tuple(spec.shape)
        return {"loc": np.broadcast_to(loc, shape), "scale": np.broadcast_to(scale, shape)}

    def _q(self, name: str):
        q = self.q(name)
        return self.model[name].support, q["loc"], q["scale"]

    def mean(self, name: str) -> np.ndarray:
        """Mean of q for ``name`` in the variable's own (constrained) space."""
        support, loc, scale = self._q(name)
        return transforms.moments(support, loc, scale)[0]

    def std(self, name: str) -> np.ndarray:
        """Standard deviation of q for ``name`` in the variable's own space."""
        support, loc, scale = self._q(name)
        return transforms.moments(support, loc, scale)[1]

    def sample(self, name: str, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
        """Draws from q for ``name``, shape (num_samples, *shape).

        Each latent has its own stream of ``seed`` (q is mean-field: latents are
        independent), so draws of several latents with one seed are joint draws from q."""
        support, loc, scale = self._q(name)
        position = [v.name for v in self.model.latents].index(name)
        rng = np.random.default_rng([seed, position])
        u = loc + scale * rng.standard_normal((num_samples,) + np.shape(loc))
        return transforms.forward(support, u)

    def log_likelihood(self, num_samples: int = 1000, seed: int = 0) -> dict:
        """Per-row log-likelihoods at draws from q, for LOO/WAIC: ``{observed name: array
        (num_samples, N)}``, entry [d, i] = log p(y_i | theta_d, z_i,d, x_i) summed over
        y_i's own axes. UNSCALED: no N/b, no likelihood weight, no cost scale (those
        belong to the training loss). Draws are ``sample``'s with the same seed.
        Needs the training data in memory; NumPy (and SciPy for gamma-function families).
        """
        from .densities import logpdf
        from .expr import NumpyOps, evaluate

        if self.problem.data is None:
            raise ValueError("log_likelihood needs the training data in memory; this fit "
                             "streamed its batches")
        model, data = self.model, self.problem.data
        draws = {v.name: self.sample(v.name, num_samples, seed) for v in model.latents}
        base = {**data, **{v.name: self.params[v.name]["value"] for v in model.params}}
        out = {v.name: np.empty((num_samples, self.problem.total_size)) for v in model.observed}
        for d in range(num_samples):
            env = {**base, **{k: a[d] for k, a in draws.items()}}
            for v in model.observed:
                p = {k: evaluate(e, env, NumpyOps) for k, e in v.dist.params}
                y = data[v.name]
                rows = np.broadcast_to(logpdf(v.dist.family, y, p), y.shape)
                out[v.name][d] = rows.reshape(len(y), -1).sum(axis=1)
        return out

    def evaluate(self, expr, data: Optional[dict] = None, num_samples: int = 0, seed: int = 0,
                 locals_at_mean: bool = True) -> np.ndarray:
        """Evaluate a model expression (``net(x)``, a distribution's parameter) with NumPy,
        for new ``data`` columns.

        Point params take their fitted values. Globals take q draws when ``num_samples``
        > 0 (result shape (num_samples, ...)), else q's mean in their own space. An
        amortized local takes its encoder's mean on ``data`` (``locals_at_mean``); a free
        local is only defined on the training rows and cannot be evaluated for new rows.

        >>> # logits on test inputs, averaged over 100 draws of a BNN's weights:
        >>> # probs = softmax(result.evaluate(logits_expr, {"x": X_test}, 100)).mean(0)
        """
        from .expr import NumpyOps, evaluate, variables_in

        data = {k: np.asarray(v) for k, v in (data or {}).items()}
        model = self.model
        base = {v.name: self.params[v.name]["value"] for v in model.params}
        base.update(data)

        def env_for(draw: Optional[int]):
            env = dict(base)
            for v in model.globals:
                env[v.name] = (self.mean(v.name) if draw is None else draws[v.name][draw])
            for v in model.locals:
                if v.amortized and locals_at_mean:
                    loc = evaluate(v.encoder[0], env, NumpyOps)
                    env[v.name] = transforms.forward(v.support, loc)
            return env

        needs = set(variables_in(expr))
        free = [v.name for v in model.free_locals if v.name in needs]
        if free:
            raise ValueError(f"cannot evaluate {expr!r} for new rows: it reads free local(s) "
                             f"{free}, which exist only for the training rows")
        if num_samples <= 0:
            return np.asarray(evaluate(expr, env_for(None), NumpyOps))
        draws = {v.name: self.sample(v.name, num_samples, seed) for v in model.globals}
        return np.stack([np.asarray(evaluate(expr, env_for(i), NumpyOps))
                         for i in range(num_samples)])

    def to_inference_data(self, num_samples: int = 1000, seed: int = 0,
                          log_likelihood: bool = False):
        """Draws from q as an ArviZ data tree (``posterior`` and ``observed_data`` groups;
        with ``log_likelihood=True`` also ``log_likelihood``: ``log_likelihood()`` at the
        same draws, one value per row, ready for ``az.loo`` / ``az.waic``).

        Names, dims and shapes depend only on the model, so both backends give the same
        structure: a local latent has dims ``(chain, draw, "row", ...)``; other axes are
        ``<name>_dim_<k>``. Needs ``arviz``.
        """
        import arviz as az

        posterior, dims = {}, {}
        for v in self.model.latents:
            posterior[v.name] = self.sample(v.name, num_samples, seed)[None]
            own = [f"{v.name}_dim_{k}" for k in range(len(v.shape))]
            dims[v.name] = (["row"] if v.role == "local" else []) + own
        observed = {}
        if self.problem.data is not None:
            for v in self.model.observed:
                arr = self.problem.data[v.name]
                observed[v.name] = arr
                dims[v.name] = ["row"] + [f"{v.name}_dim_{k}" for k in range(arr.ndim - 1)]
        groups = {"posterior": posterior}
        if observed:
            groups["observed_data"] = observed
        if log_likelihood:
            groups["log_likelihood"] = {k: a[None] for k, a in
                                        self.log_likelihood(num_samples, seed).items()}
        return az.from_dict(groups, dims=dims,
                            attrs={"/": {"klqp_backend": self.backend, "klqp_steps": self.steps}})

    def elbo(self, num_samples: int = 64, seed: int = 0) -> dict:
        """The ELBO of q AS REPORTED (``params``: the averaged globals, the locals after
        the final pass) on all N training rows, in full-data nats at beta = T = 1:
        ``{"elbo", "loglik", "kl_global", "kl_local"}`` (Monte-Carlo means over
        ``num_samples`` draws of q) and ``"elbo_se"``, the mean's standard error. Computed
        by this fit's backend with every row in one batch. Unlike ``history["elbo"]``
        (the training iterates, one batch a step), it ranks two fits of one model.
        Needs the training data in memory."""
        # What kq.compile(model, data, backend=, batch_size=n, total_size=n,
        # local_step=None) does, written out: klqp/api.py imports klqp/checkpoint.py,
        # which builds FitResults, so this module does not import klqp/api.py.
        if self.problem.data is None:
            raise ValueError("elbo() needs the training data in memory; this fit streamed "
                             "its batches")
        n, model = self.problem.total_size, self.model
        impl = backends.get(self.backend)
        problem = make_problem(model, self.problem.data, batch_size=n, total_size=n, beta=None,
                               beta_global=None, beta_local=None, likelihood_weight=1.0,
                               scale_cost_to_minibatch=False)
        objective = impl.compile(problem, local_step=resolve_local_step(None, model))
        params = {k: dict(p) for k, p in self.params.items() if k in model.vars}
        rng = np.random.default_rng([seed, 7])
        rows, figures = np.arange(n), []
        for _ in range(num_samples):
            noise = {v.name: rng.standard_normal(((n,) if v.role == "local" else ())
                                                 + tuple(v.shape)) for v in model.latents}
            figures.append(objective.terms(params, indices=rows, noise=noise))
        out = {k: float(np.mean([f[k] for f in figures]))
               for k in ("elbo", "loglik", "kl_global", "kl_local")}
        out["elbo_se"] = float(np.std([f["elbo"] for f in figures], ddof=1)
                               / np.sqrt(num_samples)) if num_samples > 1 else float("nan")
        return out

    def plot_history(self, path=None, smooth: int = 50):
        """Loss, loglik, the KL terms and the weights on a shared step axis (matplotlib).

        Curves are drawn raw (light) and as a running mean over ``smooth`` steps. Saves a
        PNG when ``path`` is given; returns the figure.
        """
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        h = self.history
        steps = np.arange(len(h["loss"]))
        panels = [("loss", ["loss"]), ("full-data nats\n(training iterates)", ["elbo", "loglik"]),
                  ("KL (nats)", ["kl_global", "kl_local"]),
                  ("weights", ["beta_global", "beta_local", "likelihood_weight"])]
        fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(7, 8.5))
        for ax, (label, keys) in zip(axes, panels):
            for key in keys:
                y = np.asarray(h[key], dtype=float)
                if label == "weights" or len(y) < 2 * smooth:
                    ax.plot(steps, y, label=key)
                    continue
                line, = ax.plot(steps, y, alpha=0.25)
                kernel = np.ones(smooth) / smooth
                ax.plot(steps[smooth - 1:], np.convolve(y, kernel, mode="valid"),
                        color=line.get_color(), label=f"{key} (mean of {smooth})")
            ax.set_ylabel(label)
            ax.legend(loc="best", fontsize="small")
        axes[-1].set_xlabel("step")
        fig.suptitle(f"{self.model.name} on {self.backend}: N={self.problem.total_size}, "
                     f"b={self.problem.batch_size}")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    def summary(self, max_rows: int = 5) -> str:
        """A short table of q's mean and sd per latent (locals: the first rows)."""
        lines = [f"{'latent':<12} {'role':<7} {'mean':>28} {'sd':>28}"]
        for v in self.model.latents:
            m, s = self.mean(v.name), self.std(v.name)
            fmt = lambda a: np.array2string(np.ravel(a)[:max_rows], precision=3, separator=", ")
            lines.append(f"{v.name:<12} {v.role:<7} {fmt(m):>28} {fmt(s):>28}")
        good = np.asarray(self.history["skipped"]) == 0  # skipped steps' figures are NaN or inf
        last = {k: float(np.mean(np.asarray(self.history[k])[good][-100:]))
                for k in ("elbo", "loglik", "kl_global", "kl_local")}
        lines.append(f"last 100 applied steps, mean: elbo {last['elbo']:.2f}, loglik {last['loglik']:.2f}, "
                     f"kl_global {last['kl_global']:.2f}, kl_local {last['kl_local']:.2f} (nats)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        flag = ", interrupted" if self.interrupted else ""
        return (f"FitResult(model={self.model.name!r}, backend={self.backend!r}, "
                f"steps={self.steps}{flag})")
