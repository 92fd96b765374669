"""The benchmark's models, each written the three ways the benchmark times.

A ``Case`` holds one model on one data set: its klqp spec, the NumPyro program a user
would write by hand for the same objective (model + guide with
``numpyro.plate("rows", N, subsample_size=b)``), and the PyMC model a user would write
for ``pm.fit`` (``pm.Minibatch`` + ``total_size``), or the reason PyMC cannot express it.

Same objective everywhere: klqp's default ``scale_cost_to_minibatch=False`` and beta = T = 1
is -ELBO with N/b on the likelihood (and on the local KL), 1 on the global KL. NumPyro's
``Trace_ELBO`` under a subsampled plate and PyMC's ``total_size`` put the same constants on
the same terms. q is mean-field Normal in each latent's unconstrained space everywhere
(log space for a positive latent), scales parameterized by softplus as in klqp.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import klqp as kq

REPO = Path(__file__).resolve().parent.parent
INIT_SCALE = 0.1  # klqp's default init_scale: q's starting standard deviation


@dataclass
class Case:
    """One model on one data set, in every language the benchmark times."""

    name: str
    description: str
    rows: int
    batch: int
    data: dict
    klqp_model: Callable[[], kq.Model]
    # () -> (model, guide, args). model(*args, idx=None) and guide(*args, idx=None) use the
    # plate's own subsample when idx is None, else the given row indices (the plate then
    # only supplies N/b: NumPyro's documented use of subsample_size with external batches).
    numpyro_program: Callable[[], tuple]
    pymc_model: Optional[Callable[[], object]] = None  # () -> pm.Model, or None
    pymc_unavailable: str = ""  # why there is no hand-written PyMC baseline
    sizes: dict = field(default_factory=dict)


def _initial_locs(seed: int, shapes: dict) -> dict:
    """Starting q means like klqp's init_params: 0.1 * standard normal, in float64."""
    rng = np.random.default_rng(seed)
    return {name: 0.1 * rng.standard_normal(shape) for name, shape in shapes.items()}


def _load_example(name: str):
    """An example script as a module (examples/ is not a package)."""
    path = REPO / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"klqp_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- (a) logistic regression: globals only -----------------------------------------------

def logistic_data(rows: int, dim: int, seed: int = 0) -> dict:
    """rows x dim standard-normal inputs, Bernoulli outcomes from a random weight vector."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    x = rng.normal(size=(rows, dim))
    p = 1.0 / (1.0 + np.exp(-(x @ w + 0.3)))
    return {"x": x, "y": (rng.random(rows) < p).astype(float)}


def logistic_klqp(dim: int) -> kq.Model:
    """w ~ N(0, 1)^dim, intercept ~ N(0, 5), y_i ~ Bernoulli(logit = x_i . w + intercept).
    examples/minibatch_logistic.py has this model with dim fixed at 4, hence a copy."""
    with kq.Model("logistic_regression") as model:
        x = kq.Data("x", shape=(dim,))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(dim,))
        intercept = kq.Global("intercept", kq.Normal(0.0, 5.0))
        kq.Observed("y", kq.Bernoulli(logits=x @ w + intercept))
    return model


def logistic_numpyro(data: dict, batch: int, seed: int = 0) -> tuple:
    """The hand-written NumPyro program: model, guide and the arguments both take."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    rows, dim = x.shape
    init = _initial_locs(seed, {"w": (dim,), "intercept": ()})

    def model(x, y, idx=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([dim]).to_event(1))
        intercept = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
        with numpyro.plate("rows", rows, subsample_size=batch) as drawn:
            idx = drawn if idx is None else idx
            numpyro.sample("y", dist.Bernoulli(logits=x[idx] @ w + intercept), obs=y[idx])

    def guide(x, y, idx=None):
        w_loc = numpyro.param("w_loc", jnp.asarray(init["w"]))
        w_scale = numpyro.param("w_scale", jnp.full(dim, INIT_SCALE),
                                constraint=constraints.softplus_positive)
        numpyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
        c_loc = numpyro.param("intercept_loc", jnp.asarray(init["intercept"]))
        c_scale = numpyro.param("intercept_scale", jnp.asarray(INIT_SCALE),
                                constraint=constraints.softplus_positive)
        numpyro.sample("intercept", dist.Normal(c_loc, c_scale))

    return model, guide, (x, y)


def logistic_pymc(data: dict, batch: int):
    """The hand-written PyMC model for ``pm.fit``: pm.Minibatch and total_size."""
    import pymc as pm

    rows, dim = data["x"].shape
    with pm.Model() as model:
        x_batch, y_batch = pm.Minibatch(data["x"], data["y"], batch_size=batch)
        w = pm.Normal("w", 0.0, 1.0, shape=dim)
        intercept = pm.Normal("intercept", 0.0, 5.0)
        pm.Bernoulli("y", logit_p=x_batch @ w + intercept, observed=y_batch, total_size=rows)
    return model


def logistic_case(rows: int, dim: int, batch: int) -> Case:
    data = logistic_data(rows, dim)
    return Case(
        name="logistic",
        description=f"logistic regression, N={rows:,}, D={dim}, batch {batch} (globals only)",
        rows=rows, batch=batch, data=data,
        klqp_model=lambda: logistic_klqp(dim),
        numpyro_program=lambda: logistic_numpyro(data, batch),
        pymc_model=lambda: logistic_pymc(data, batch),
        sizes={"rows": rows, "dim": dim, "batch": batch})


# -- (b) the hierarchical model of examples/hierarchical.py: globals + one local per row --

def hierarchical_numpyro(data: dict, batch: int, seed: int = 0) -> tuple:
    """examples/hierarchical.py by hand: theta, sigma global; z_i local with its own
    q mean and scale per row (N-row params), read at the plate's subsample indices."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import ExpTransform

    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    rows = x.shape[0]
    init = _initial_locs(seed, {"theta": (), "sigma": (), "z": (rows,)})

    def model(x, y, idx=None):
        theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        with numpyro.plate("rows", rows, subsample_size=batch) as drawn:
            idx = drawn if idx is None else idx
            z = numpyro.sample("z", dist.Normal(theta * x[idx], 0.7))
            numpyro.sample("y", dist.Normal(z, sigma), obs=y[idx])

    def guide(x, y, idx=None):
        positive = constraints.softplus_positive
        t_loc = numpyro.param("theta_loc", jnp.asarray(init["theta"]))
        t_scale = numpyro.param("theta_scale", jnp.asarray(INIT_SCALE), constraint=positive)
        numpyro.sample("theta", dist.Normal(t_loc, t_scale))
        # sigma's q is Normal in log space, as klqp's (and PyMC's) log transform makes it.
        s_loc = numpyro.param("sigma_loc", jnp.asarray(init["sigma"]))
        s_scale = numpyro.param("sigma_scale", jnp.asarray(INIT_SCALE), constraint=positive)
        numpyro.sample("sigma", dist.TransformedDistribution(dist.Normal(s_loc, s_scale),
                                                             ExpTransform()))
        z_loc = numpyro.param("z_loc", jnp.asarray(init["z"]))
        z_scale = numpyro.param("z_scale", jnp.full(rows, INIT_SCALE), constraint=positive)
        with numpyro.plate("rows", rows, subsample_size=batch) as drawn:
            idx = drawn if idx is None else idx
            numpyro.sample("z", dist.Normal(z_loc[idx], z_scale[idx]))

    return model, guide, (x, y)


PYMC_NO_LOCALS = ("n/a: PyMC 6 accepts total_size on observed variables only and has had no "
                  "local (per-row) variational groups since PyMC 4, so pm.fit cannot minibatch "
                  "the per-row latents z_i; a hand-written version would be klqp's own PyMC "
                  "lowering")


def hierarchical_case(rows: int, batch: int) -> Case:
    example = _load_example("hierarchical")
    data, _truth = example.make_data(rows, seed=0)
    return Case(
        name="hierarchical",
        description=(f"examples/hierarchical.py, N={rows:,}, batch {batch} "
                     "(2 globals + 1 local per row)"),
        rows=rows, batch=batch, data=data,
        klqp_model=example.build_model,
        numpyro_program=lambda: hierarchical_numpyro(data, batch),
        pymc_unavailable=PYMC_NO_LOCALS,
        sizes={"rows": rows, "batch": batch})


# -- (c) Poisson counts with a log-normal per-row effect: a non-conjugate local ------------

def poisson_data(rows: int, seed: int = 0) -> dict:
    """x_i = (1, N(0, 1), N(0, 1)): an intercept column and two inputs; u_i ~ N(0, 0.6);
    k_i ~ Poisson(exp(x_i . (0.5, 0.3, -0.4) + u_i))."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(rows), rng.normal(size=(rows, 2))])
    u = 0.6 * rng.normal(size=rows)
    return {"x": x, "k": rng.poisson(np.exp(x @ np.array([0.5, 0.3, -0.4]) + u))}


def poisson_klqp() -> kq.Model:
    """w ~ N(0, 1)^3 (intercept included), tau ~ HalfNormal(1), u_i ~ N(0, tau),
    k_i ~ Poisson(exp(x_i . w + u_i))."""
    with kq.Model("poisson_lognormal") as model:
        x = kq.Data("x", shape=(3,))
        w = kq.Global("w", kq.Normal(0.0, 1.0), shape=(3,))
        tau = kq.Global("tau", kq.HalfNormal(1.0))
        u = kq.Local("u", kq.Normal(0.0, tau))
        kq.Observed("k", kq.Poisson(kq.exp(x @ w + u)))
    return model


def poisson_numpyro(data: dict, batch: int, seed: int = 0) -> tuple:
    """The Poisson model by hand: w, tau global; u_i local with N-row q params."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import ExpTransform

    x, k = jnp.asarray(data["x"]), jnp.asarray(data["k"])
    rows = x.shape[0]
    init = _initial_locs(seed, {"w": (3,), "tau": (), "u": (rows,)})

    def model(x, k, idx=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        with numpyro.plate("rows", rows, subsample_size=batch) as drawn:
            idx = drawn if idx is None else idx
            u = numpyro.sample("u", dist.Normal(0.0, tau))
            numpyro.sample("k", dist.Poisson(jnp.exp(x[idx] @ w + u)), obs=k[idx])

    def guide(x, k, idx=None):
        positive = constraints.softplus_positive
        w_loc = numpyro.param("w_loc", jnp.asarray(init["w"]))
        w_scale = numpyro.param("w_scale", jnp.full(3, INIT_SCALE), constraint=positive)
        numpyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
        t_loc = numpyro.param("tau_loc", jnp.asarray(init["tau"]))
        t_scale = numpyro.param("tau_scale", jnp.asarray(INIT_SCALE), constraint=positive)
        numpyro.sample("tau", dist.TransformedDistribution(dist.Normal(t_loc, t_scale),
                                                           ExpTransform()))
        u_loc = numpyro.param("u_loc", jnp.asarray(init["u"]))
        u_scale = numpyro.param("u_scale", jnp.full(rows, INIT_SCALE), constraint=positive)
        with numpyro.plate("rows", rows, subsample_size=batch) as drawn:
            idx = drawn if idx is None else idx
            numpyro.sample("u", dist.Normal(u_loc[idx], u_scale[idx]))

    return model, guide, (x, k)


# -- (d) a Bayesian neural net: 10,101 global weights (steps/s where the curvature runs) --

def bnn_data(rows: int, n_in: int = 200, hidden: int = 50, seed: int = 0):
    rng = np.random.default_rng([seed, rows, n_in])
    x = rng.normal(size=(rows, n_in))
    w0 = rng.normal(size=(n_in, hidden)) / np.sqrt(n_in)
    w1 = rng.normal(size=(hidden, 1)) * 2 / np.sqrt(hidden)
    logits = (np.tanh(x @ w0) @ w1)[:, 0]
    return {"x": x, "y": (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(float)}


def bnn_klqp(n_in: int = 200, hidden: int = 50):
    with kq.Model("bnn") as model:
        x = kq.Data("x", shape=(n_in,))
        net = kq.nn.MLP("net", [n_in, hidden, 1], activation="tanh", prior=kq.Normal(0.0, 1.0))
        kq.Observed("y", kq.Bernoulli(logits=net(x)[..., 0]))
    return model


def bnn_numpyro(data: dict, batch: int, seed: int = 0):
    """The hand-written NumPyro program (this file's conventions: softplus scales at 0.1,
    means 0.1 * N(0, 1); ``idx`` rows from outside or the plate's subsample)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    rows, n_in = x.shape
    hidden = 50
    shapes = {"W0": (n_in, hidden), "b0": (hidden,), "W1": (hidden, 1), "b1": (1,)}
    rng = np.random.default_rng(seed)
    init = {k: 0.1 * rng.standard_normal(s) for k, s in shapes.items()}

    def model(x, y, idx=None):
        w = {k: numpyro.sample(k, dist.Normal(0.0, 1.0).expand(list(s)).to_event(len(s)))
             for k, s in shapes.items()}
        with numpyro.plate("rows", rows, subsample_size=batch) as drawn:
            idx = drawn if idx is None else idx
            logits = (jnp.tanh(x[idx] @ w["W0"] + w["b0"]) @ w["W1"] + w["b1"])[:, 0]
            numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y[idx])

    def guide(x, y, idx=None):
        for k, s in shapes.items():
            loc = numpyro.param(f"{k}_loc", jnp.asarray(init[k]))
            scale = numpyro.param(f"{k}_scale", jnp.full(s, 0.1),
                                  constraint=constraints.softplus_positive)
            numpyro.sample(k, dist.Normal(loc, scale).to_event(len(s)))

    return model, guide, (x, y)


def bnn_pymc(data: dict, batch: int):
    import pymc as pm
    import pytensor.tensor as pt

    rows, n_in = data["x"].shape
    hidden = 50
    with pm.Model() as model:
        xb, yb = pm.Minibatch(data["x"], data["y"], batch_size=batch)
        w0 = pm.Normal("W0", 0.0, 1.0, shape=(n_in, hidden))
        b0 = pm.Normal("b0", 0.0, 1.0, shape=(hidden,))
        w1 = pm.Normal("W1", 0.0, 1.0, shape=(hidden,))
        b1 = pm.Normal("b1", 0.0, 1.0)
        logits = pt.tanh(xb @ w0 + b0) @ w1 + b1
        pm.Bernoulli("y", logit_p=logits, observed=yb, total_size=rows)
    return model


def bnn_case(rows: int, batch: int) -> Case:
    data = bnn_data(rows)
    return Case(
        name="bnn",
        description=f"Bayesian neural net 200-50-1 tanh, 10,101 global weights, N={rows:,}, "
                    f"batch {batch} (globals only)",
        rows=rows, batch=batch, data=data, klqp_model=bnn_klqp,
        numpyro_program=lambda: bnn_numpyro(data, batch),
        pymc_model=lambda: bnn_pymc(data, batch), sizes={"rows": rows, "batch": batch})
