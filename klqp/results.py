"""What a fit returns: q's parameters, per-step history and the state to resume from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import backends, transforms
from .problem import Problem, make_problem
from .steps import resolve_local_step

__all__ = ["FitResult", "FitState", "HISTORY_KEYS"]

HISTORY_KEYS = ("loss", "elbo", "loglik", "kl_global", "kl_local", "potential", "local_gain",
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
    ``history``: per-step arrays ``loss, elbo, loglik, kl_global, kl_local, potential,
    local_gain,
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

    def _deterministic(self, name: str) -> bool:
        return name in self.model.deterministic_vars

    def mean(self, name: str) -> np.ndarray:
        """Mean of q for ``name`` in the variable's own (constrained) space (a
        kq.Deterministic: the mean of 1,000 draws, ``sample(name)``'s with seed 0)."""
        if self._deterministic(name):
            return self.sample(name).mean(axis=0)
        support, loc, scale = self._q(name)
        return transforms.moments(support, loc, scale)[0]

    def std(self, name: str) -> np.ndarray:
        """Standard deviation of q for ``name`` in the variable's own space (a
        kq.Deterministic: over 1,000 draws, as ``mean``)."""
        if self._deterministic(name):
            return self.sample(name).std(axis=0)
        support, loc, scale = self._q(name)
        return transforms.moments(support, loc, scale)[1]

    def sample(self, name: str, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
        """Draws from q for ``name``, shape (num_samples, *shape) (a local or a
        per-row kq.Deterministic: (num_samples, N, *shape), on the training rows).

        Each latent has its own stream of ``seed`` (q is mean-field: latents are
        independent), so draws of several latents with one seed are joint draws from q,
        and a Deterministic's draws are its expression at those same draws."""
        if self._deterministic(name):
            from .predict import evaluate_expr
            return evaluate_expr(self, self.model[name].expr, None, num_samples, seed)
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
        from .densities import logpdf, per_value
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
                rows = per_value(v.dist.family, logpdf(v.dist.family, y, p, v.dist.component),
                                 y.shape)
                out[v.name][d] = rows.reshape(len(y), -1).sum(axis=1)
        return out

    def evaluate(self, expr, data: Optional[dict] = None, num_samples: int = 0, seed: int = 0,
                 locals: Optional[str] = None, new_groups: bool = False) -> np.ndarray:
        """Evaluate a model expression (``net(x)``, a distribution's parameter) with NumPy
        on the rows of ``data`` (None: the training rows, or no rows for an expression of
        globals and Params alone).

        Point params take their fitted values. With ``num_samples`` > 0 the latents take
        joint draws from q (result shape (num_samples, ...); ``sample``'s streams), else
        q's mean in their own space (an amortized local: its encoder's loc pushed through
        its transform). Locals on new rows come from ``locals`` (see ``predict``); by
        default a free local is fitted to the rows' observations (``fit_locals``) and an
        amortized one takes its encoder's q. ``data`` is checked as kq.fit checks it; it
        needs only the columns the expression reads; ``new_groups`` as in ``predict``.

        >>> # logits on test inputs, averaged over 100 draws of a BNN's weights:
        >>> # probs = softmax(result.evaluate(logits_expr, {"x": X_test}, 100)).mean(0)
        """
        from .predict import evaluate_expr
        return evaluate_expr(self, expr, data, num_samples, seed, locals, new_groups)

    def predict(self, data: Optional[dict] = None, num_samples: int = 1000, seed: int = 0,
                locals: Optional[str] = None, new_groups: bool = False) -> dict:
        """Posterior predictive draws for the rows of ``data``: ``{name: array
        (num_samples, n, ...)}`` for every kq.Observed and kq.Deterministic, globals and
        Params from q, observations drawn from the likelihood (NumPy samplers of every
        family, ``klqp.densities.sample``).

        The locals of the rows: ``data=None``: the training rows' q. Otherwise
        ``locals="fit"`` (default): q(z_i) fitted to each new row's observations by the
        local step at q(globals), which it never changes (an amortized local: its
        encoder's q, refined); ``"encoder"``: an amortized local's encoder's q as is;
        ``"prior"``: z_i drawn from p(z_i | globals, x_i), for rows with no
        observations yet (a new group). The Observed columns are needed only to fit
        or encode locals. ``new_groups=True``: a row whose group index is past the end
        of the Global it indexes (``a[county]`` with county = G for a G-entry ``a``)
        belongs to a group the fit never saw; its entry is drawn from that Global's
        prior at each draw of the hyperparameters (a new county; PyMC's new
        coordinates, Bambi's ``sample_new_groups``). Allowed for index columns that
        index only Globals whose prior is the same for every entry; otherwise such a
        row is refused as in kq.fit. Same seed, same draws; on either backend for the
        same q.

        >>> # draws = result.predict({"x": x_new}, num_samples=500)
        >>> # draws["y"].mean(0), np.percentile(draws["y"], [5, 95], axis=0)
        """
        from .predict import predict
        return predict(self, data, num_samples, seed, locals, new_groups)

    def fit_locals(self, data: dict, refine: bool = True, max_iterations: int = 200,
                   tol: Optional[float] = None) -> dict:
        """q(z_i) for the rows of ``data`` from their observations, ``{local: {"loc",
        "scale"}}`` in unconstrained space (as ``q``), the globals untouched: free
        locals by the local step until no row's objective rises by more than ``tol``
        nats an iteration (default 1e-3 in float64, 1e-2 in float32); amortized ones by
        their encoder, refined by the local step when ``refine`` (needs the fit's
        backend; see klqp.predict.fit_locals)."""
        from .predict import fit_locals
        return fit_locals(self, data, refine=refine, max_iterations=max_iterations, tol=tol)

    def log_predictive_density(self, data: Optional[dict] = None, num_samples: int = 1000,
                               seed: int = 0, locals: Optional[str] = None,
                               new_groups: bool = False):
        """Per-row log p(y_i | training data) for the rows of ``data`` (held-out rows;
        None: the training rows), ``(value, mc_se, ess)`` arrays of shape (n,) (see
        :class:`klqp.predict.LogPredictiveDensity`): the log of the mean over
        ``num_samples`` joint draws of q of p(y_i | theta, z_i) p(z_i | theta) /
        q(z_i), i.e. the locals integrated out with their q as importance proposal
        (``locals`` as in ``predict``; "prior": no weights), with each estimate's
        Monte-Carlo standard error and its weights' effective sample size. Unscaled: no
        N/b, beta or T. ``new_groups``: as
        in ``predict`` (a new group's entries from their prior)."""
        from .predict import log_predictive_density
        return log_predictive_density(self, data, num_samples, seed, locals, new_groups)

    def elpd(self, data: Optional[dict] = None, num_samples: int = 1000, seed: int = 0,
             locals: Optional[str] = None, new_groups: bool = False):
        """The held-out expected log predictive density of the rows of ``data``: the sum of
        ``log_predictive_density`` with its Monte-Carlo error and the rows' s.e.
        (:class:`klqp.predict.ELPD`). Compare two models on the same held-out rows."""
        from .predict import elpd
        return elpd(self, data, num_samples, seed, locals, new_groups)

    def to_inference_data(self, num_samples: int = 1000, seed: int = 0,
                          log_likelihood: bool = False, posterior_predictive: bool = False,
                          predictions: Optional[dict] = None,
                          predictions_locals: Optional[str] = None):
        """Draws from q as an ArviZ data tree, in ArviZ's layout.

        Groups: ``posterior`` (every latent and kq.Deterministic), ``observed_data`` and
        ``constant_data`` (the training rows' Observed and Data columns, when in memory);
        with ``log_likelihood=True`` also ``log_likelihood`` (``log_likelihood()`` at the
        same draws, one value per row: ``az.loo``); with ``posterior_predictive=True``
        ``posterior_predictive`` (``predict()`` on the training rows, at the same draws:
        ``az.plot_ppc_dist``); with ``predictions=data`` the groups ``predictions``
        (``predict(data, locals=predictions_locals)``) and ``predictions_constant_data``
        (its Data columns).

        Names, dims and shapes depend only on the model, so both backends give the same
        structure: per-row variables have dims ``(chain, draw, "row", ...)``; other
        axes are ``<name>_dim_<k>``. A per-row Deterministic is left out of
        ``posterior`` when the fit streamed its batches. Needs ``arviz``.
        """
        import arviz as az

        model, data = self.model, self.problem.data
        dims = {}

        def put(group: dict, name: str, array, per_row: bool, draws: bool = True):
            array = np.asarray(array)
            own = array.ndim - (1 if draws else 0) - (1 if per_row else 0)
            group[name] = array[None] if draws else array
            dims[name] = (["row"] if per_row else []) + [f"{name}_dim_{k}" for k in range(own)]

        posterior = {}
        for v in model.latents:
            put(posterior, v.name, self.sample(v.name, num_samples, seed), v.role == "local")
        for v in model.deterministics:
            if v.row_wise and data is None:
                continue
            put(posterior, v.name, self.sample(v.name, num_samples, seed), v.row_wise)
        groups = {"posterior": posterior}
        if data is not None:
            groups["observed_data"], groups["constant_data"] = {}, {}
            for v in model.observed:
                put(groups["observed_data"], v.name, data[v.name], True, draws=False)
            for v in model.data_vars:
                put(groups["constant_data"], v.name, data[v.name], True, draws=False)
            if not groups["constant_data"]:
                del groups["constant_data"]
        if log_likelihood:
            groups["log_likelihood"] = {k: a[None] for k, a in
                                        self.log_likelihood(num_samples, seed).items()}
        if posterior_predictive:
            draws = self.predict(None, num_samples, seed)
            groups["posterior_predictive"] = {v.name: draws[v.name][None] for v in model.observed}
        pred_dims = {}
        if predictions is not None:
            from .predict import rows_for

            draws = self.predict(predictions, num_samples, seed, predictions_locals)
            groups["predictions"] = {}
            for v in model.observed + [v for v in model.deterministics if v.row_wise]:
                put(groups["predictions"], v.name, draws[v.name], True)
            columns, _ = rows_for(self, predictions, where="to_inference_data(predictions=...)")
            constant = {}
            for v in model.data_vars:
                if v.name in columns:
                    put(constant, v.name, columns[v.name], True, draws=False)
            if constant:
                groups["predictions_constant_data"] = constant
            pred_dims = {k: dims[k] for k in list(groups["predictions"]) + list(constant)}
        return az.from_dict(groups, dims=dims, pred_dims=pred_dims,
                            attrs={"/": {"klqp_backend": self.backend, "klqp_steps": self.steps}})

    def elbo(self, num_samples: int = 64, seed: int = 0) -> dict:
        """The ELBO of q AS REPORTED (``params``: the averaged globals, the locals after
        the final pass) on all N training rows, in full-data nats at beta = T = 1:
        ``{"elbo", "loglik", "kl_global", "kl_local", "potential"}`` (Monte-Carlo means over
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
               for k in ("elbo", "loglik", "kl_global", "kl_local", "potential")}
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
        nats = ["elbo", "loglik"] + (["potential"] if self.model.potentials else [])
        panels = [("loss", ["loss"]), ("full-data nats\n(training iterates)", nats),
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
        potential = (f", potential {np.mean(np.asarray(self.history['potential'])[good][-100:]):.2f}"
                     if self.model.potentials else "")
        lines.append(f"last 100 applied steps, mean: elbo {last['elbo']:.2f}, loglik {last['loglik']:.2f}, "
                     f"kl_global {last['kl_global']:.2f}, kl_local {last['kl_local']:.2f}{potential} "
                     "(nats)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        flag = ", interrupted" if self.interrupted else ""
        return (f"FitResult(model={self.model.name!r}, backend={self.backend!r}, "
                f"steps={self.steps}{flag})")
