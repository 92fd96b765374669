"""Bad input, fuzzed: random specs and data are either fitted or refused by klqp itself.

Each random case is a model (Data, Global, Local, Param and Observed variables, shapes,
distribution families, simple expressions), data for it (in memory, or a stream of
batch dicts, ragged or not; dtypes vary) and fit arguments, with at most one deliberate
mistake drawn from ``MUTATIONS`` (a constant parameter outside its support, NaN in a
column, an empty array, a batch larger than total_size, a duplicated ``row_index``, a
negative weight, ...). The properties:

* a case without a mistake is accepted, and (``test_valid_random_specs_fit_finite``)
  fits a few steps on both backends with a finite history, no skipped steps and finite
  parameters;
* a case with one is refused before any backend is asked to compile: a kq.ModelError,
  ValueError or TypeError raised from klqp's own code (the traceback's last frame is in
  the ``klqp`` package, not in JAX, PyTensor, NumPy, NumPyro or PyMC) whose message
  names the offending variable or argument.

The hand-picked bad inputs are at the end as parametrized cases (more in test_spec.py).

The default run is derandomized (the same cases every time; under a minute on 2 cores,
most of it compiling): FUZZ_CHECKS = 1000 random cases checked without fitting (a stand-in
backend records what klqp accepted) and FUZZ_FITS = 3 valid ones fitted on each
installed backend. A longer, freshly random run::

    KLQP_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest -p no:xdist -o addopts="" tests/test_fuzz.py

checks 500 cases and fits 50 (``KLQP_FUZZ_FITS=`` sets that number; compiles dominate,
~5 s per fit and backend); a failure prints the case and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest

import klqp as kq
from klqp.model import ROW_INDEX, ModelError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, event, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LONG = int(os.environ.get("KLQP_FUZZ_EXAMPLES", "0"))
FUZZ_CHECKS = _LONG or 1000
FUZZ_FITS = int(os.environ.get("KLQP_FUZZ_FITS", "0")) or (max(1, _LONG // 10) if _LONG else 3)
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
CHECKS = settings(max_examples=FUZZ_CHECKS, derandomize=not _LONG, **_COMMON)
# Fits are not shrunk (each try compiles twice; shrinking took minutes): a failure prints
# the case as drawn.
FITS = settings(max_examples=FUZZ_FITS, derandomize=not _LONG,
                phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON)

# PyTensor raises the recursion limit when a PyMC fit first imports it; hypothesis says so
pytestmark = pytest.mark.filterwarnings(
    "ignore:The recursion limit will not be reset:hypothesis.errors.HypothesisWarning")

KLQP_DIR = os.path.dirname(os.path.abspath(kq.__file__)) + os.sep
BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]
FIT_STEPS = 3

OBSERVED_FAMILIES = ("Normal", "StudentT", "LogNormal", "Bernoulli", "Poisson", "Binomial",
                     "Categorical", "Gamma", "Exponential", "HalfNormal", "Beta",
                     "ContinuousBernoulli", "NegativeBinomial", "ZeroInflatedPoisson",
                     "ZeroInflatedNegativeBinomial", "Laplace", "Cauchy", "HalfCauchy",
                     "Weibull", "Mixture", "OrderedLogistic", "MvNormal", "Dirichlet")

# -- the random case ---------------------------------------------------------------------
SPEC_MUTATIONS = ("bad_constant", "bad_shape", "unknown_variable", "duplicate_name",
                  "global_reads_row", "discrete_latent", "mixes_data_axis", "float_index",
                  "categorical_without_axis", "observed_rows_axis", "unread_param")
DATA_MUTATIONS = ("nan", "empty", "short_column", "extra_column", "missing_column",
                  "row_shape", "dtype", "outside_support", "index_out_of_range",
                  "row_index_in_memory", "not_a_dict")
ARG_MUTATIONS = ("batch_size", "total_size", "weight", "fit_argument")
STREAM_MUTATIONS = ("no_row_index", "row_index_float", "row_index_range", "row_index_duplicate",
                    "row_index_length", "empty_batch", "empty_stream", "batch_over_total",
                    "batch_not_a_dict", "stream_nan", "stream_without_total_size")
MUTATIONS = SPEC_MUTATIONS + DATA_MUTATIONS + ARG_MUTATIONS + STREAM_MUTATIONS


@dataclass
class Case:
    """A random model + data + arguments; ``build()`` declares and returns them afresh
    (a stream is an iterator that a fit uses up)."""

    spec: dict
    mutation: Optional[str] = None
    names: tuple = ()              # what a refusal's message must name (any one of them)
    declare_extra: Optional[Callable] = None    # a spec mutation, run inside the model
    change_data: Optional[Callable] = None      # (columns) -> data, a data mutation
    change_kwargs: dict = field(default_factory=dict)
    change_stream: Optional[Callable] = None    # (list of batches) -> data

    def build(self):
        s = self.spec
        with kq.Model("fuzz") as model:
            v = declare(s)
            if self.declare_extra is not None:
                self.declare_extra(v)
        columns = make_columns(s)
        kwargs = {"batch_size": s["batch_size"], **s["weights"]}
        if s["stream"]:
            batches = make_batches(s, columns, need_rows=bool(model.free_locals))
            if self.change_stream is not None:
                data = self.change_stream(batches)
            else:
                data = iter(batches) if s["stream"] == "iterator" else batches
            kwargs["total_size"] = s["n"]
        else:
            data = self.change_data(columns) if self.change_data else columns
        kwargs.update(self.change_kwargs)
        return model, data, kwargs


def declare(s: dict) -> dict:
    """Declare the valid part of the spec; returns its variables' expressions."""
    v = {}
    if s["x"] is not None:
        v["x"] = kq.Data("x", shape=s["x"], dtype="float")
    if s["groups"]:
        v["g"] = kq.Data("g", dtype="int")
    v["b0"] = kq.Global("b0", kq.Normal(0.0, s["prior_scale"]))
    if s["x"] is not None:
        v["w"] = kq.Global("w", kq.Normal(0.0, 1.0), shape=s["x"] or None)
    if s["groups"]:
        v["a"] = kq.Global("a", kq.Normal(0.0, 1.0), shape=(s["groups"],))
    pos = {"HalfNormal": lambda c: kq.HalfNormal(c), "Exponential": lambda c: kq.Exponential(c),
           "Gamma": lambda c: kq.Gamma(2.0, c), "LogNormal": lambda c: kq.LogNormal(0.0, c),
           "HalfCauchy": lambda c: kq.HalfCauchy(c), "HalfStudentT": lambda c: kq.HalfStudentT(3.0, c),
           "Weibull": lambda c: kq.Weibull(2.0, c), "Uniform": lambda c: kq.Uniform(0.0, 1.0 + 9.0 * c)}
    if s["scale_prior"] in pos:
        v["s"] = kq.Global("s", pos[s["scale_prior"]](s["scale_const"]))
    if s["param"]:
        v["c"] = kq.Param("c", (), init=s["param_init"])
    eta = [kq.exp(0.0) * 0.0 + s["offset"], v["b0"]]
    if s["x"] == ():
        eta.append(v["w"] * v["x"])
    elif s["x"] == (2,):
        eta.append(v["x"] @ v["w"] if s["dot"] else kq.sum(v["x"] * v["w"], -1))
    if s["groups"]:
        eta.append(v["a"][v["g"]])
    if s["local"] is not None:
        loc = (v["w"] * v["x"]) if s["x"] == () and s["local_reads_x"] else 0.0
        z_scale = v.get("s", s["scale_const"])
        if s["local"] == "Normal":
            v["z"] = kq.Local("z", kq.Normal(loc, z_scale))
            eta.append(v["z"])
        elif s["local"] == "LogNormal":
            v["z"] = kq.Local("z", kq.LogNormal(loc, z_scale))
            eta.append(kq.log(v["z"]))
        elif s["local"] == "Beta":
            v["z"] = kq.Local("z", kq.Beta(2.0, 2.0))
            eta.append(v["z"] - 0.5)
        elif s["local"] == "amortized" and s["x"] == (2,):
            enc = kq.nn.MLP("enc", [2, 2], activation="tanh")
            v["z"] = kq.Local("z", kq.Normal(0.0, 1.0), shape=(1,),
                              encoder=kq.nn.amortize(enc, "x"))
            eta.append(v["z"][0])
    if s["param"]:
        eta.append(0.1 * v["c"])
    lin = eta[0]
    for term in eta[1:]:
        lin = lin + term
    if s["squash"]:
        lin = kq.tanh(lin)
    v["eta"] = lin
    sigma = {"global": v.get("s"), "const": s["scale_const"],
             "param": kq.softplus(v["c"]) + 0.1 if s["param"] else None}[s["sigma_from"]]
    sigma = s["scale_const"] if sigma is None else sigma
    fam = s["family"]
    if s["vector_y"]:
        lin = v["x"] * v["w"] + v["b0"] + (0.1 * v["c"] if s["param"] else 0.0)  # (rows, 2)
    rate = kq.exp(0.5 * lin)
    obs = {"Normal": lambda: kq.Normal(lin, sigma),
           "StudentT": lambda: kq.StudentT(s["nu"], lin, sigma),
           "LogNormal": lambda: kq.LogNormal(lin, sigma),
           "Bernoulli": lambda: (kq.Bernoulli(logits=lin) if s["logits"]
                                 else kq.Bernoulli(probs=kq.sigmoid(lin))),
           "Poisson": lambda: kq.Poisson(rate),
           "Binomial": lambda: kq.Binomial(s["trials"], logits=lin),
           "Categorical": lambda: kq.Categorical(logits=categorical_logits(s, v)),
           "Gamma": lambda: kq.Gamma(s["nu"], rate),
           "Exponential": lambda: kq.Exponential(rate),
           "HalfNormal": lambda: kq.HalfNormal(kq.exp(0.2 * lin)),
           "Beta": lambda: kq.Beta(rate, 2.0),
           "ContinuousBernoulli": lambda: kq.ContinuousBernoulli(logits=lin),
           "NegativeBinomial": lambda: kq.NegativeBinomial(rate, 2.0),
           "ZeroInflatedPoisson": lambda: kq.ZeroInflatedPoisson(0.7, rate),
           "ZeroInflatedNegativeBinomial": lambda: kq.ZeroInflatedNegativeBinomial(0.7, rate, 2.0),
           "Laplace": lambda: kq.Laplace(lin, sigma),
           "Cauchy": lambda: kq.Cauchy(lin, sigma),
           "HalfCauchy": lambda: kq.HalfCauchy(kq.exp(0.2 * lin)),
           "Weibull": lambda: kq.Weibull(1.5, rate),
           "Mixture": lambda: kq.Mixture(kq.stack([kq.sigmoid(lin), 1.0 - kq.sigmoid(lin)], -1),
                                         [kq.Normal(lin, sigma), kq.Normal(lin + 1.0, sigma)]),
           "OrderedLogistic": lambda: kq.OrderedLogistic(lin, np.array([-1.0, 0.5])),
           "MvNormal": lambda: kq.MvNormal(kq.stack([lin, lin + 1.0], -1),
                                           np.array([[1.0, 0.0], [0.3, 0.8]]) * sigma),
           "Dirichlet": lambda: kq.Dirichlet(kq.exp(kq.stack([0.5 * lin, -0.5 * lin, 0.0 * lin],
                                                             -1)) + 0.5),
           }[fam]
    kq.Observed("y", obs())
    if s["free"] is not None:  # random shapes: refused by klqp, or fitted
        f = s["free"]
        rd = kq.Data("rd", shape=f["data"])
        rs = kq.Global("rs", kq.Normal(0.0, 1.0), shape=f["global"] or None)
        if not f["global"]:
            rs = rs * 1.0
        mean = {"mul": lambda: rs * rd, "add": lambda: rs + rd, "matmul": lambda: rd @ rs,
                "sum": lambda: kq.sum(rs * rd, -1), "last": lambda: (rs * rd)[0],
                "slice": lambda: (rs * rd)[0:1], "logsumexp": lambda: kq.logsumexp(rs * rd, -1),
                "cumsum": lambda: kq.cumsum(rs * rd, -1), "maximum": lambda: kq.maximum(rs, rd),
                "new_axis": lambda: (rs * rd)[..., None],
                "stack": lambda: kq.stack([rs * rd, rd], -1),
                "where": lambda: kq.where(rd > rs, rs * rd, -rd),
                "column": lambda: (rs * rd)[:, 0],
                "reshape": lambda: rs * kq.reshape(rd, (int(np.prod(f["data"], dtype=int)),)),
                "potential": lambda: _with_potential(rs, rd)}[f["op"]]()
        kq.Observed("ro", kq.Normal(mean, 1.0))
    return v


def _with_potential(rs, rd):
    """A per-row kq.Potential on the random shapes; the mean is rs * rd."""
    kq.Potential("rp", -0.5 * (rs * rd) ** 2)  # any per-row shape: each row's sum
    return rs * rd


def categorical_logits(s, v):
    bias = kq.Global("bc", kq.Normal(0.0, 1.0), shape=(s["classes"],))
    if s["param"]:
        bias = bias + 0.1 * v["c"]
    if s["x"] == (2,):
        wc = kq.Global("wc", kq.Normal(0.0, 1.0), shape=(2, s["classes"]))
        return v["x"] @ wc + bias
    return bias


def make_columns(s: dict) -> dict:
    rng = np.random.default_rng(s["seed"])
    n = s["n"]
    cols = {}
    if s["x"] is not None:
        cols["x"] = rng.normal(size=(n,) + s["x"]).astype(s["x_dtype"])
    if s["groups"]:
        g = rng.integers(0, s["groups"], size=n)
        cols["g"] = g.astype(float) if s["g_float"] else g.astype(np.int32)
    fam = s["family"]
    shape = (n, 2) if s["vector_y"] else (n,)
    y = {"Normal": lambda: rng.normal(size=shape), "StudentT": lambda: rng.standard_t(3, shape),
         "LogNormal": lambda: rng.lognormal(size=shape),
         "Bernoulli": lambda: rng.integers(0, 2, size=shape),
         "Poisson": lambda: rng.poisson(2.0, size=shape),
         "Binomial": lambda: rng.binomial(s["trials"], 0.4, size=shape),
         "Categorical": lambda: rng.integers(0, s["classes"], size=shape),
         "Gamma": lambda: rng.gamma(2.0, size=shape) + 0.01,
         "Exponential": lambda: rng.exponential(size=shape),
         "HalfNormal": lambda: np.abs(rng.normal(size=shape)),
         "Beta": lambda: rng.uniform(0.05, 0.95, size=shape),
         "ContinuousBernoulli": lambda: rng.uniform(0.0, 1.0, size=shape),
         "NegativeBinomial": lambda: rng.negative_binomial(2, 0.5, size=shape),
         "ZeroInflatedPoisson": lambda: rng.poisson(2.0, size=shape) * (rng.random(shape) < 0.7),
         "ZeroInflatedNegativeBinomial": lambda: rng.negative_binomial(2, 0.5, size=shape)
         * (rng.random(shape) < 0.7),
         "Laplace": lambda: rng.laplace(size=shape), "Cauchy": lambda: rng.standard_cauchy(shape),
         "HalfCauchy": lambda: np.abs(rng.standard_cauchy(shape)),
         "Weibull": lambda: rng.weibull(1.5, size=shape) + 0.01,
         "Mixture": lambda: rng.normal(size=shape),
         "OrderedLogistic": lambda: rng.integers(0, 3, size=shape),
         "MvNormal": lambda: rng.normal(size=(n, 2)),   # one draw of 2 coordinates per row
         "Dirichlet": lambda: rng.dirichlet([1.0, 2.0, 3.0], size=n)}[fam]()
    if s["y_as_float"]:
        y = y.astype(float)
    if fam == "Bernoulli" and s["y_as_bool"]:
        y = y.astype(bool)
    cols["y"] = y
    if s["free"] is not None:
        cols["rd"] = rng.normal(size=(n,) + s["free"]["data"])
        cols["ro"] = rng.normal(size=(n,) + s["free"]["rows"])
    return cols


def make_batches(s: dict, cols: dict, need_rows: bool) -> list:
    """The rows, shuffled, cut into batches of the drawn sizes (a ragged stream)."""
    order = np.random.default_rng(s["seed"] + 1).permutation(s["n"])
    out, start = [], 0
    for size in s["batch_sizes"]:
        rows = order[start:start + size]
        start += size
        batch = {k: c[rows] for k, c in cols.items()}
        if need_rows or s["row_index_anyway"]:
            batch[ROW_INDEX] = rows.astype(np.int64)
        out.append(batch)
    return out


@st.composite
def specs(draw, small=False):
    n = draw(st.integers(1, 6 if small else 10))
    x = draw(st.sampled_from([None, (), (2,)]))
    family = draw(st.sampled_from(OBSERVED_FAMILIES))
    local = draw(st.sampled_from([None, None, "Normal", "LogNormal", "Beta", "amortized"]))
    if local == "amortized" and x != (2,):
        local = None
    vector_y = (x == (2,) and family in ("Normal", "StudentT", "Poisson") and local is None
                and draw(st.booleans()))
    scale_prior = draw(st.sampled_from(["none", "HalfNormal", "Exponential", "Gamma",
                                        "LogNormal", "HalfCauchy", "HalfStudentT", "Weibull",
                                        "Uniform"]))
    stream = draw(st.sampled_from([None, None, "list", "iterator"]))
    sizes = []
    if stream:
        left = n
        while left:
            size = draw(st.integers(1, left))
            sizes.append(size)
            left -= size
    batch_size = None if stream else draw(st.one_of(st.none(), st.integers(1, n)))
    # beta_local=0 held constant is accepted, but not fitted here: the local step's scale
    # beta_local / h is then 0 (PyMC: kl_local = inf, every step skipped; NumPyro shrinks it)
    weights = draw(st.sampled_from([{}, {"beta": 0.5}, {"beta_local": 0.05 if small else 0.0},
                                    {"beta": kq.Shared(1.0)},
                                    {"likelihood_weight": 2.0},
                                    {"beta_global": kq.schedules.linear_warmup(10)}]))
    shapes = st.sampled_from([(), (1,), (2,), (3,), (2, 3), (3, 2)])
    free = draw(st.one_of(st.none(), st.none(), st.fixed_dictionaries(
        {"global": shapes, "data": shapes, "rows": shapes,
         "op": st.sampled_from(["mul", "add", "matmul", "sum", "last", "slice", "logsumexp",
                                "cumsum", "maximum", "new_axis", "stack", "where", "column",
                                "reshape", "potential"])})))
    return dict(
        free=free, n=n, x=x, x_dtype=draw(st.sampled_from(["float64", "float32"])),
        groups=draw(st.sampled_from([0, 0, 2, 3])), g_float=draw(st.booleans()),
        prior_scale=draw(st.sampled_from([0.5, 1.0, 10.0])),
        offset=draw(st.sampled_from([0.0, 0.3])),
        scale_prior=scale_prior, scale_const=draw(st.sampled_from([0.5, 1.0, 2.0])),
        param=draw(st.booleans()), param_init=draw(st.sampled_from([0.0, -0.5, "zeros"])),
        dot=draw(st.booleans()), local=local, local_reads_x=draw(st.booleans()),
        squash=draw(st.booleans()),
        sigma_from=draw(st.sampled_from(["global", "const", "param"])),
        family=family, vector_y=vector_y, nu=draw(st.sampled_from([1.5, 4.0])),
        logits=draw(st.booleans()), trials=draw(st.sampled_from([1, 3, 10])),
        classes=draw(st.sampled_from([2, 3])), y_as_float=draw(st.booleans()),
        y_as_bool=draw(st.booleans()), seed=draw(st.integers(0, 1000)),
        stream=stream, batch_sizes=sizes, row_index_anyway=draw(st.booleans()),
        batch_size=batch_size, weights=weights,
    )


def _outside_value(draw, s):
    """(column value that lies outside the observed family's support, or None)."""
    fam = s["family"]
    options = {"Bernoulli": [2, -1], "Poisson": [-1, 0.5], "Binomial": [s["trials"] + 1, -1, 1.5],
               "Categorical": [s["classes"], -1, 0.5], "Gamma": [-1.0, 0.0],
               "LogNormal": [-0.5, 0.0], "Exponential": [-1.0], "HalfNormal": [-0.1],
               "Beta": [0.0, 1.0, 1.5], "ContinuousBernoulli": [-0.1, 1.1],
               "NegativeBinomial": [-1, 0.5], "ZeroInflatedPoisson": [-1, 0.5],
               "ZeroInflatedNegativeBinomial": [-1, 2.5], "HalfCauchy": [-0.1],
               "Weibull": [0.0, -1.0], "OrderedLogistic": [3, -1, 0.5],
               "Dirichlet": [1.5, -0.1, 0.0]}
    return draw(st.sampled_from(options[fam])) if fam in options else None


@st.composite
def cases(draw, bad_percent=60, small=False):
    s = draw(specs(small=small))
    case = Case(s)
    if draw(st.integers(0, 99)) >= bad_percent:
        return case
    m = draw(st.sampled_from(MUTATIONS))
    case.mutation = m
    pick = lambda options: draw(st.sampled_from(options))  # noqa: E731
    n = s["n"]

    # -- the spec --------------------------------------------------------------------
    if m == "bad_constant":
        family, param, value = pick([
            ("Normal", "sigma", -1.0), ("Normal", "sigma", 0.0), ("Normal", "mu", math.nan),
            ("Normal", "mu", math.inf), ("HalfNormal", "sigma", -2.0), ("LogNormal", "sigma", 0.0),
            ("Exponential", "lam", -1.0), ("Gamma", "alpha", 0.0), ("Gamma", "beta", -math.inf),
            ("Beta", "alpha", -0.5), ("StudentT", "nu", 0.0), ("StudentT", "sigma", math.nan),
            ("Bernoulli", "probs", 1.5), ("Binomial", "n", -1.0), ("Binomial", "n", 2.5),
            ("Binomial", "probs", -0.1), ("Poisson", "mu", 0.0),
            ("Categorical", "logits", np.array([0.0, math.nan])),
            ("ContinuousBernoulli", "probs", 1.0)])
        make = {"Normal": lambda p: kq.Normal(**{"mu": 0.0, "sigma": 1.0, **p}),
                "HalfNormal": lambda p: kq.HalfNormal(**p),
                "LogNormal": lambda p: kq.LogNormal(**{"mu": 0.0, "sigma": 1.0, **p}),
                "Exponential": lambda p: kq.Exponential(**p),
                "Gamma": lambda p: kq.Gamma(**{"alpha": 1.0, "beta": 1.0, **p}),
                "Beta": lambda p: kq.Beta(**{"alpha": 1.0, "beta": 1.0, **p}),
                "StudentT": lambda p: kq.StudentT(**{"nu": 3.0, **p}),
                "Bernoulli": lambda p: kq.Bernoulli(**p),
                "Binomial": lambda p: kq.Binomial(**{"n": 3, "probs": 0.5, **p}),
                "Poisson": lambda p: kq.Poisson(**p),
                "Categorical": lambda p: kq.Categorical(**p),
                "ContinuousBernoulli": lambda p: kq.ContinuousBernoulli(**p)}[family]
        where = pick(["global", "observed"])

        def extra(v):
            d = make({param: value})
            if where == "global" and not d.is_discrete:
                kq.Global("bad", d)
            else:
                kq.Observed("bad", d)
        case.declare_extra, case.names = extra, (f"{family}: {param}=",)
    elif m == "bad_shape":
        shape = pick([(0,), (-1,), (2.5,), (True,), "a", (3, 0), (4,)])
        role = pick(["Global", "Local", "Param", "Data"])

        def extra(v):
            if role == "Global":
                kq.Global("bad", kq.Normal(np.zeros(3), 1.0), shape=shape)
            elif role == "Local":
                kq.Local("bad", kq.Normal(np.zeros(3), 1.0), shape=shape)
            elif role == "Param":
                kq.Param("bad", shape if shape != (4,) else (2, 2), init=np.zeros(3))
            else:
                kq.Data("bad", shape=shape if shape != (4,) else "x")
        case.declare_extra, case.names = extra, ("'bad'",)
    elif m == "unknown_variable":
        with kq.Model("elsewhere"):
            ghost = kq.Global("ghost", kq.Normal(0.0, 1.0))
        case.declare_extra = lambda v: kq.Observed("bad", kq.Normal(v["eta"] + ghost, 1.0))
        case.names = ("'ghost'",)
    elif m == "duplicate_name":
        name = pick(["y", "b0"])
        case.declare_extra = lambda v: kq.Data(name)
        case.names = (f"{name!r}",)
    elif m == "global_reads_row":
        case.declare_extra = lambda v: kq.Global("bad", kq.Normal(v["eta"], 1.0))
        case.names = ("'bad'",)
        if s["x"] is None and not s["groups"] and s["local"] is None:
            case.declare_extra = lambda v: kq.Global("bad", kq.Normal(kq.Data("col"), 1.0))
    elif m == "discrete_latent":
        role = pick(["Global", "Local"])
        d = pick([kq.Poisson(3.0), kq.Bernoulli(probs=0.5), kq.Binomial(3, logits=0.0),
                  kq.Categorical(logits=np.zeros(3))])
        case.declare_extra = lambda v: getattr(kq, role)("bad", d)
        case.names = ("'bad'",)
    elif m == "mixes_data_axis":
        how = pick(["sum0", "mean0", "index0", "slice", "concat0"])

        def extra(v):
            x = kq.Data("col", shape=(2,) if how == "slice" else ())
            term = {"sum0": lambda: kq.sum(x, 0), "mean0": lambda: kq.mean(x * v["b0"], 0),
                    "index0": lambda: x[0], "slice": lambda: kq.sum(x[0:1], 0),
                    "concat0": lambda: kq.concat([x, x], 0)}[how]()
            kq.Observed("bad", kq.Normal(v["b0"] + term, 1.0))
        case.declare_extra, case.names = extra, ("'bad'",)
    elif m == "float_index":
        per_row_base = pick([False, True])

        def extra(v):
            if per_row_base:
                base, idx = kq.Data("rowwise", shape=(3,)), kq.Data("gi", dtype="int")
            else:
                base, idx = kq.Global("aa", kq.Normal(0.0, 1.0), shape=(3,)), kq.Data("xf")
            kq.Observed("bad", kq.Normal(base[idx], 1.0))
        case.declare_extra, case.names = extra, ("'bad'",)
    elif m == "unread_param":
        case.declare_extra = lambda v: kq.Param("unread", (2,), init="zeros")
        case.names = ("'unread'",)
    elif m == "categorical_without_axis":
        case.declare_extra = lambda v: kq.Observed("bad", kq.Categorical(logits=v["b0"]))
        case.names = ("'bad'",)
    elif m == "observed_rows_axis":
        # a per-row mean of one number per row, observed as rows of 2 numbers
        def extra(v):
            x = kq.Data("col")
            kq.Observed("bad", kq.Normal(x * v["b0"], 1.0))
        case.declare_extra = extra
        case.names = ("'bad'",)
        if s["stream"]:
            case.mutation = None  # that column is only in the in-memory variant below
            case.declare_extra = None
        else:
            case.change_data = lambda cols: {**cols, "col": np.zeros(n), "bad": np.zeros((n, 2))}

    # -- the data -----------------------------------------------------------------------
    elif m in DATA_MUTATIONS and s["stream"]:
        case.mutation, m = pick(STREAM_MUTATIONS), None
        return _stream_mutation(draw, case)
    elif m == "nan":
        col = pick([c for c in ("x", "g", "y") if c in _columns(s)])
        bad = pick([math.nan, math.inf, -math.inf])
        at = draw(st.integers(0, n - 1))

        def change(cols):
            arr = np.array(cols[col], dtype=float)
            arr.reshape(len(arr), -1)[at, 0] = bad
            return {**cols, col: arr}
        case.change_data, case.names = change, (f"{col!r}",)
    elif m == "empty":
        case.change_data = lambda cols: {k: c[:0] for k, c in cols.items()}
        case.names = tuple(f"{c!r}" for c in _columns(s))
    elif m == "short_column":
        col = pick(_columns(s))
        case.change_data = lambda cols: {**cols, col: cols[col][:-1]}
        case.names = tuple(f"{c!r}" for c in _columns(s))
        if len(_columns(s)) == 1 and n > 1:
            case.mutation = None  # one column, one row fewer: still data
            s["batch_size"] = None
    elif m == "extra_column":
        case.change_data = lambda cols: {**cols, "extra": np.zeros(n)}
        case.names = ("'extra'",)
    elif m == "missing_column":
        col = pick(_columns(s))
        case.change_data = lambda cols: {k: c for k, c in cols.items() if k != col}
        case.names = (f"{col!r}",)
    elif m == "row_shape":
        col = pick(_columns(s))
        extra_axis = pick([1, 3])
        case.change_data = lambda cols: {**cols, col: np.repeat(
            np.asarray(cols[col])[..., None], extra_axis, axis=-1)}
        case.names = (f"{col!r}",)
        if col == "y" and not s["vector_y"] and not _observed_reads_rows(s):
            case.mutation = None  # parameters without a row axis broadcast over rows of y
    elif m == "dtype":
        col = pick(_columns(s))
        kind = pick(["str", "complex", "object", "ragged", "none"])

        def change(cols):
            c = np.asarray(cols[col])
            new = {"str": lambda: c.astype(str), "complex": lambda: c.astype(complex),
                   "object": lambda: np.array([{"v": 1}] * len(c), dtype=object),
                   "ragged": lambda: [[0.0] * (i % 2 + 1) for i in range(max(2, len(c)))],
                   "none": lambda: None}[kind]()
            return {**cols, col: new}
        case.change_data, case.names = change, (f"{col!r}",)
    elif m == "outside_support":
        value = _outside_value(draw, s)
        if value is None:  # Normal, StudentT: any finite number is data; use NaN
            value = math.nan
        at = draw(st.integers(0, n - 1))

        def change(cols):
            y = np.array(cols["y"], dtype=float)
            y.reshape(len(y), -1)[at, 0] = value
            return {**cols, "y": y}
        case.change_data, case.names = change, ("'y'",)
    elif m == "index_out_of_range":
        if not s["groups"]:
            s["groups"] = 2
        value = pick([s["groups"], s["groups"] + 5, -1])
        at = draw(st.integers(0, n - 1))

        def change(cols):
            g = np.array(cols["g"])
            g[at] = value
            return {**cols, "g": g}
        case.change_data, case.names = change, ("'g'",)
        if value >= 0 and (s["family"] == "Categorical" or s["vector_y"]):
            case.mutation = None  # nothing indexes by g there: any whole number >= 0 will do
    elif m == "row_index_in_memory":
        case.change_data = lambda cols: {**cols, ROW_INDEX: np.arange(n)}
        case.names = (f"{ROW_INDEX!r}",)
    elif m == "not_a_dict":
        kind = pick(["array", "none", "number", "string"])
        case.change_data = lambda cols: {"array": lambda: np.zeros((n, 2)), "none": lambda: None,
                                         "number": lambda: 3.0, "string": lambda: "y.csv"}[kind]()
        case.names = ("data",)

    # -- the arguments ------------------------------------------------------------------
    elif m == "batch_size":
        total = n
        value = pick([total + 1, 0, -1, 2.5, True, "2", np.array([1])])
        case.change_kwargs, case.names = {"batch_size": value}, ("batch_size",)
    elif m == "total_size":
        value = pick([n + 1, 0, -3, True, 2.5, np.array([n, n]), "n"])
        if s["stream"] and isinstance(value, int) and value == n + 1:
            value = 0  # a stream's total_size may exceed the rows it holds
        case.change_kwargs, case.names = {"total_size": value}, ("total_size",)
    elif m == "weight":
        name = pick(["beta", "beta_global", "beta_local", "likelihood_weight"])
        value = pick([-1.0, math.nan, math.inf, "high", np.array([1.0, 2.0]), 1j,
                      kq.schedules.linear(1.0, -1.0, 10), kq.schedules.constant(-0.5),
                      kq.schedules.linear(0.0, math.nan, 100)])
        s["weights"] = {}
        case.change_kwargs, case.names = {name: value}, (name if name != "beta" else "beta",)
    elif m == "fit_argument":
        name, value = pick([("steps", -1), ("steps", 2.5), ("learning_rate", 0.0),
                            ("learning_rate", -1e-3), ("learning_rate", math.nan),
                            ("learning_rate", math.inf), ("seed", -1), ("seed", 2**40),
                            ("init_scale", 0.0), ("init_scale", math.inf),
                            ("init_scale", math.nan), ("chunk_size", 0),
                            ("scale_cost_to_minibatch", "yes"), ("backend", "stan"),
                            ("local_step", "newton"), ("max_nonfinite", 0),
                            ("learning_rate", kq.schedules.linear(1e-2, -1e-2, 10))])
        case.change_kwargs, case.names = {name: value}, (name,)
    elif m in STREAM_MUTATIONS:
        return _stream_mutation(draw, case)
    return case


def _observed_reads_rows(s: dict) -> bool:
    if s["family"] == "Categorical":
        return s["x"] == (2,)
    return s["x"] is not None or bool(s["groups"]) or s["local"] is not None


def _columns(s: dict) -> list:
    return [c for c, present in (("x", s["x"] is not None), ("g", s["groups"]), ("y", True),
                                 ("rd", s["free"] is not None), ("ro", s["free"] is not None))
            if present]


FREE_NAMES = ("'rd'", "'rs'", "'ro'", "'rp'")


def _stream_mutation(draw, case: Case) -> Case:
    s, m = case.spec, case.mutation
    pick = lambda options: draw(st.sampled_from(options))  # noqa: E731
    if not s["stream"]:
        s["batch_sizes"] = [s["n"]]
        s["batch_size"] = None
    s["stream"] = "list"  # a list of batches is checked before the fit; an iterator as it goes
    needs_rows = s["local"] in ("Normal", "LogNormal", "Beta")
    first_big = s["batch_sizes"][0] >= 2
    if m == "no_row_index" and not needs_rows:
        s["local"] = "Normal"  # a model with free locals needs the rows' numbers
    if m == "row_index_duplicate" and not first_big:
        m = case.mutation = "row_index_range"
    rows = "row_index" in m and not needs_rows
    if rows:
        s["row_index_anyway"] = True
    n = s["n"]

    def edit(batches, fn):
        return [fn(dict(b)) if i == 0 else b for i, b in enumerate(batches)]

    if m == "no_row_index":
        case.change_stream = lambda bs: edit(bs, lambda b: {k: v for k, v in b.items()
                                                           if k != ROW_INDEX})
        case.names = (ROW_INDEX,)
    elif m == "row_index_float":
        case.change_stream = lambda bs: edit(bs, lambda b: {**b, ROW_INDEX: b[ROW_INDEX] + 0.0})
        case.names = (ROW_INDEX,)
    elif m == "row_index_range":
        value = pick([n, n + 7, -1])
        case.change_stream = lambda bs: edit(bs, lambda b: {**b, ROW_INDEX: np.r_[
            b[ROW_INDEX][:-1], value]})
        case.names = (ROW_INDEX,)
    elif m == "row_index_duplicate":
        case.change_stream = lambda bs: edit(bs, lambda b: {**b, ROW_INDEX: np.r_[
            b[ROW_INDEX][:-1], b[ROW_INDEX][0]]})
        case.names = (ROW_INDEX,)
    elif m == "row_index_length":
        case.change_stream = lambda bs: edit(bs, lambda b: {**b, ROW_INDEX: np.r_[
            b[ROW_INDEX], b[ROW_INDEX][:1]]})
        case.names = (ROW_INDEX,)
    elif m == "empty_batch":
        case.change_stream = lambda bs: [{k: v[:0] for k, v in bs[0].items()}] + bs
        case.names = tuple(f"{c!r}" for c in _columns(s))
    elif m == "empty_stream":
        case.change_stream = lambda bs: pick([[], ()])
        case.names = ("data",)
    elif m == "batch_over_total":
        case.change_kwargs = {"total_size": max(1, s["batch_sizes"][0] - 1)}
        case.names = ("total_size", ROW_INDEX)
        if s["batch_sizes"][0] == 1:
            case.change_kwargs = {"total_size": 0}
    elif m == "batch_not_a_dict":
        value = pick([np.zeros(3), None, [1.0, 2.0], "batch"])
        case.change_stream = lambda bs: [value] + bs
        case.names = ("batch",)
    elif m == "stream_nan":
        col = pick(_columns(s))

        def fn(b):
            arr = np.array(b[col], dtype=float)
            arr.reshape(len(arr), -1)[-1, 0] = math.nan
            return {**b, col: arr}
        case.change_stream = lambda bs: edit(bs, fn)
        case.names = (f"{col!r}",)
    elif m == "stream_without_total_size":
        case.change_kwargs = {"total_size": None}
        case.names = ("total_size",)
    return case


# -- running a case ------------------------------------------------------------------------
class Recorder:
    """A stand-in backend: reaching it means klqp accepted the input."""

    name = "recorder"

    def fit(self, problem, config, **options):
        return ("accepted", problem, config)

    def compile(self, problem, **options):
        return ("accepted", problem, None)


@pytest.fixture(scope="module")
def recorder():
    real_get = kq.backends.get
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kq.backends, "get", lambda name: Recorder() if name == "recorder"
                   else real_get(name))
        yield


def attempt(case: Case, backend: str, steps: int = FIT_STEPS):
    """('accepted', result) or ('refused', error): only klqp's own errors count as refusals;
    anything else propagates and fails the test."""
    try:
        model, data, kwargs = case.build()
        kwargs = {"steps": steps, "progress": False, "backend": backend, **kwargs}
        return "accepted", kq.fit(model, data, **kwargs)
    except (kq.ModelError, ValueError, TypeError) as err:
        return "refused", err


def assert_klqp_refusal(err: BaseException, names: tuple) -> None:
    frames = traceback.extract_tb(err.__traceback__)
    last = os.path.abspath(frames[-1].filename)
    assert last.startswith(KLQP_DIR), (
        f"raised outside klqp ({last}:{frames[-1].lineno}): {type(err).__name__}: {err}")
    message = str(err)
    assert any(n in message for n in names), f"the message names none of {names}: {message}"


def assert_finite_fit(result, backend: str) -> None:
    h = result.history
    for key, values in h.items():
        assert np.all(np.isfinite(np.asarray(values, dtype=float))), (backend, key, values)
    assert not np.any(np.asarray(h["skipped"])), (backend, "skipped steps", h["skipped"])
    for name, p in result.params.items():
        for k, arr in p.items():
            assert np.all(np.isfinite(np.asarray(arr))), (backend, name, k, arr)
    for v in result.model.latents:
        if not v.amortized:
            assert np.all(np.isfinite(result.mean(v.name))), (backend, v.name)


# -- the properties ------------------------------------------------------------------------
@CHECKS
@given(case=cases())
def test_random_input_is_accepted_or_refused_by_klqp(case, recorder):
    note(f"mutation={case.mutation} spec={case.spec}")
    event(f"mutation: {case.mutation}")
    outcome, value = attempt(case, backend="recorder")
    event(f"outcome: {outcome}")
    if case.mutation is None and case.spec["free"] is not None and outcome == "refused":
        assert_klqp_refusal(value, FREE_NAMES)  # random shapes may not fit together
    elif case.mutation is None:
        assert outcome == "accepted", f"a valid case was refused: {value!r}"
        assert value[0] == "accepted"
    else:
        assert outcome == "refused", f"{case.mutation}: accepted, not refused"
        assert_klqp_refusal(value, case.names + (FREE_NAMES if case.spec["free"] else ()))


@pytest.mark.slow
@pytest.mark.skipif(not BACKENDS, reason="no backend installed")
@FITS
@given(case=cases(bad_percent=0, small=True))
def test_valid_random_specs_fit_finite(case):
    note(f"spec={case.spec}")
    for backend in BACKENDS:
        outcome, value = attempt(case, backend=backend)
        if case.spec["free"] is not None and outcome == "refused":
            assert_klqp_refusal(value, FREE_NAMES)
            event("refused: random shapes that do not fit together")
            return
        assert outcome == "accepted", f"{backend}: a valid case was refused: {value!r}"
        batches = len(case.spec["batch_sizes"])
        # a one-shot iterator gives one epoch: as many steps as it has batches
        assert value.steps == (min(FIT_STEPS, batches) if case.spec["stream"] == "iterator"
                               else FIT_STEPS)
        assert_finite_fit(value, backend)
        event(f"fitted: {case.spec['family']}, local={case.spec['local']}, "
              f"stream={case.spec['stream']}")


# -- hand-picked bad inputs (those test_spec.py does not have) --------------------------------
def _model(declare_fn):
    with kq.Model("m") as m:
        declare_fn()
    return m


def _normal_mean(**kw):
    def f():
        kq.Observed("y", kq.Normal(kq.Global("mu", kq.Normal(0.0, 1.0)), 1.0))
    return _model(f)


def _hier():
    with kq.Model("hier") as m:
        x = kq.Data("x")
        theta = kq.Global("theta", kq.Normal(0.0, 1.0))
        z = kq.Local("z", kq.Normal(theta * x, 0.7))
        kq.Observed("y", kq.Normal(z, 1.0))
    return m


def _batch(rows, **cols):
    rows = np.asarray(rows)
    out = {"x": np.zeros(len(rows)), "y": np.zeros(len(rows)), ROW_INDEX: rows}
    out.update(cols)
    return out


CONSTANTS = [
    (lambda: kq.Normal(0.0, -1.0), r"kq\.Normal: sigma=-1\.0 must be > 0; give a positive"),
    (lambda: kq.Normal(float("nan"), 1.0), r"kq\.Normal: mu=nan is not finite"),
    (lambda: kq.Normal(0.0, np.array([1.0, -2.0])),
     r"sigma=array\(2,\) must be > 0 \(entry \(1,\) is -2\.0\)"),
    (lambda: kq.HalfNormal(0.0), r"kq\.HalfNormal: sigma=0\.0 must be > 0"),
    (lambda: kq.LogNormal(0.0, float("inf")), r"kq\.LogNormal: sigma=inf is not finite"),
    (lambda: kq.Exponential(-2.0), r"kq\.Exponential: lam=-2\.0 must be > 0"),
    (lambda: kq.Gamma(0.0, 1.0), r"kq\.Gamma: alpha=0\.0 must be > 0"),
    (lambda: kq.Gamma(1.0, -1.0), r"kq\.Gamma: beta=-1\.0 must be > 0"),
    (lambda: kq.Beta(1.0, 0.0), r"kq\.Beta: beta=0\.0 must be > 0"),
    (lambda: kq.StudentT(0.0), r"kq\.StudentT: nu=0\.0 must be > 0"),
    (lambda: kq.StudentT(3.0, 0.0, -1.0), r"kq\.StudentT: sigma=-1\.0 must be > 0"),
    (lambda: kq.Bernoulli(probs=1.2), r"kq\.Bernoulli: probs=1\.2 must be in \[0, 1\]"),
    (lambda: kq.Binomial(-1, probs=0.5), r"kq\.Binomial: n=-1\.0 must be a whole number >= 0"),
    (lambda: kq.Binomial(2.5, logits=0.0), r"kq\.Binomial: n=2\.5 must be a whole number"),
    (lambda: kq.Binomial(3, probs=-0.5), r"kq\.Binomial: probs=-0\.5 must be in \[0, 1\]"),
    (lambda: kq.Poisson(0.0), r"kq\.Poisson: mu=0\.0 must be > 0"),
    (lambda: kq.Categorical(logits=np.array([0.0, np.inf])),
     r"kq\.Categorical: logits=array\(2,\) is not finite \(entry \(1,\) is inf\)"),
    (lambda: kq.ContinuousBernoulli(probs=0.0),
     r"kq\.ContinuousBernoulli: probs=0\.0 must be in \(0, 1\)"),
    (lambda: kq.Normal(0.0, -kq.exp(1.0)),
     r"sigma=-exp\(1\.0\) \(= -2\.718281828459045\) must be > 0"),
    (lambda: kq.Normal(kq.log(-1.0), 1.0), r"mu=log\(-1\.0\) \(= nan\) is not finite"),
    (lambda: kq.Normal([0.0, [1.0, 2.0]], 1.0),
     r"kq\.Normal: mu=\[0\.0, \[1\.0, 2\.0\]\] is not a number or a rectangular array"),
]


@pytest.mark.parametrize("make, match", CONSTANTS)
def test_a_constant_parameter_outside_its_support_is_refused(make, match):
    with pytest.raises(kq.ModelError, match=match):
        make()


def test_parameters_that_read_variables_are_left_alone():
    """A parameter that reads a variable cannot be checked when it is declared (-w is
    negative only where w > 0): it is kept as the expression written, not refused and not
    evaluated."""
    from klqp.expr import variables_in

    with kq.Model("m") as m:
        w = kq.Global("w", kq.Normal(0.0, 1.0))
        kq.Observed("y", kq.Normal(0.0, -w))          # negative only if w > 0: not known here
        kq.Observed("k", kq.Binomial(kq.exp(w), logits=w))
    assert [v.name for v in m.observed] == ["y", "k"]
    assert repr(m["y"].dist.param_dict["sigma"]) == "-w"
    assert {k: variables_in(e) for k, e in m["k"].dist.params} == {"n": ["w"], "logits": ["w"]}


def _declare(fn):
    def build():
        with kq.Model("m"):
            fn()
    return build


def _x():
    return kq.Data("x")


DECLARATIONS = [
    # the data axis: a per-row expression must keep axis 0 (each row reads its own values)
    (_declare(lambda: kq.Observed("y", kq.Normal(kq.sum(_x(), 0), 1.0))),
     r"Observed 'y': parameter mu=sum\(x, axis=0\) does not keep the data axis"),
    (_declare(lambda: kq.Observed("y", kq.Normal(_x()[0], 1.0))),
     r"Observed 'y': parameter mu=x\[0\] does not keep the data axis"),
    (_declare(lambda: (lambda x: kq.Local("z", kq.Normal(kq.concat([x, x], 0), 1.0)))(_x())),
     r"Local 'z': parameter mu=concat\(x, x\) does not keep the data axis"),
    (_declare(lambda: kq.Observed("y", kq.Normal(kq.mean(kq.Data("v", shape=(3,)), 0), 1.0))),
     r"Observed 'y': parameter mu=mean\(v, axis=0\) does not keep the data axis"),
    # indexing
    (_declare(lambda: kq.Observed("y", kq.Normal(
        kq.Global("a", kq.Normal(0.0, 1.0), shape=(3,))[_x()], 1.0))),
     r"Observed 'y': parameter mu indexes a by x, which is not an integer Data column"),
    (_declare(lambda: kq.Observed("y", kq.Normal(
        kq.Data("h", shape=(3,))[kq.Data("g", dtype="int")], 1.0))),
     r"Observed 'y': parameter mu indexes h, which reads the per-row variable\(s\) \['h'\]"),
    # categories need an axis
    (_declare(lambda: kq.Observed("c", kq.Categorical(logits=kq.Global("w", kq.Normal(0, 1))))),
     r"Observed 'c': Categorical parameter logits=w has per-row shape \(\), but its last axis"),
    # shapes
    (_declare(lambda: kq.Global("w", kq.Normal(0.0, 1.0), shape=(0,))),
     r"Global 'w': shape=\(0,\) has the size 0; every size must be a positive int"),
    (_declare(lambda: kq.Local("z", kq.Normal(0.0, 1.0), shape=(-2,))),
     r"Local 'z': shape=\(-2,\) has the size -2"),
    (_declare(lambda: kq.Param("p", shape=(2.5,))),
     r"Param 'p': shape=\(2\.5,\) has the size 2\.5"),
    (_declare(lambda: kq.Data("x", shape="3")), r"Data 'x': shape='3' has the size '3'"),
    (_declare(lambda: kq.Data("x", shape=(True,))), r"Data 'x': shape=\(True,\) has the size True"),
    (_declare(lambda: kq.Param("p", shape=(2,), init=[[1, 2], [3]])),
     r"Param 'p': init=\[\[1, 2\], \[3\]\] is not a number or an array of shape \(2,\)"),
    (_declare(lambda: kq.Param("p", shape=(2,), init=np.zeros(3))),
     r"Param 'p': init has shape \(3,\) but shape=\(2,\)"),
    (_declare(lambda: kq.Param("p", init=float("nan"))), r"Param 'p': init holds NaN or inf"),
    (lambda: kq.Model("m", total_size=True), r"Model 'm': total_size=True must be a positive int"),
    (lambda: kq.Model("m", total_size=0), r"Model 'm': total_size=0 must be a positive int"),
    (_declare(lambda: kq.nn.MLP("net", [2, -3])),
     r"Param 'net_W0': shape=\(2, -3\) has the size -3"),
]


@pytest.mark.parametrize("build, match", DECLARATIONS)
def test_bad_declarations_are_refused_on_their_line(build, match):
    with pytest.raises(kq.ModelError, match=match):
        build()


def _counts(family):
    with kq.Model("m") as m:
        g = kq.Data("g", dtype="int")
        a = kq.Global("a", kq.Normal(0.0, 1.0), shape=(3,))
        if family == "Categorical":
            kq.Observed("y", kq.Categorical(logits=a))
        elif family == "Binomial":
            kq.Observed("y", kq.Binomial(4, logits=a[g]))
        else:
            kq.Observed("y", getattr(kq, family)(kq.exp(a[g]), 2.0))
    return m


def _short_encoder():
    kq.Data("x", shape=(3,))
    net = kq.nn.MLP("enc", [3, 2])  # 2 outputs: a latent of shape (2,) needs 4
    z = kq.Local("z", kq.Normal(0.0, 1.0), shape=(2,), encoder=kq.nn.amortize(net, "x"))
    kq.Observed("y", kq.Normal(kq.sum(z, -1), 1.0))


FITS_REFUSED = [
    # (model, data, kwargs, error type, message)
    (_normal_mean, {"y": np.zeros(0)}, {}, ValueError, r"data: column 'y' has 0 rows"),
    (_normal_mean, {"y": [[1.0], [1.0, 2.0]]}, {}, ValueError,
     r"data: column 'y' is not a rectangular array"),
    (_normal_mean, {"y": np.zeros(4), ROW_INDEX: np.arange(4)}, {}, ValueError,
     r"unknown data name\(s\) \['row_index'\]"),
    (_normal_mean, np.zeros((4, 1)), {"total_size": 4}, TypeError,
     r"data must be a dict of arrays or an iterable of batch dicts, got ndarray"),
    (lambda: _counts("Normal"), {"g": np.array([0, 1, 3]), "y": np.zeros(3)}, {}, ValueError,
     r"data: column 'g' holds 3 at index \(2,\), but it indexes a, which has 3 entries \(0\.\.2\)"),
    (lambda: _counts("Categorical"), {"g": np.zeros(3, int), "y": np.array([0, 3, 1])}, {},
     ValueError, r"column 'y' holds 3 at index \(1,\), but its Categorical\(logits=a\) has 3 "
                 r"categories \(labels 0\.\.2\)"),
    (lambda: _counts("Binomial"), {"g": np.zeros(3, int), "y": np.array([0, 5, 1])}, {},
     ValueError, r"column 'y' holds 5 at index \(1,\), more than n=4\.0 trials"),
    (lambda: _counts("Gamma"), {"g": np.zeros(3, int), "y": np.array([1.0, 0.0, 2.0])}, {},
     ValueError, r"column 'y' has values in \[0, 2\], outside the support of Gamma.*\(0, inf\)"),
    (lambda: _counts("Beta"), {"g": np.zeros(3, int), "y": np.array([0.5, 1.0, 0.2])}, {},
     ValueError, r"column 'y' has values in \[0\.2, 1\], outside the support of Beta.*\(0, 1\)"),
    (lambda: _model(lambda: kq.Observed("y", kq.Normal(
        kq.Data("x") * kq.Global("w", kq.Normal(0, 1)), 1.0))),
     {"x": np.zeros(4), "y": np.zeros((4, 2))}, {}, ValueError,
     r"Observed 'y' has rows of shape \(2,\) but its distribution's parameters have per-row "
     r"shape \(\)"),
    # amortized locals: the encoder's (loc, scale) must be per row and of the latent's shape
    (lambda: _model(_short_encoder), {"x": np.zeros((4, 3)), "y": np.zeros(4)}, {}, ModelError,
     r"Local 'z': the encoder's scale has per-row shape \(0,\) but the latent has shape \(2,\)"),
    (lambda: _model(lambda: kq.Observed("y", kq.Normal(kq.Local(
        "z", kq.Normal(0.0, 1.0),
        encoder=(kq.sum(kq.column("y"), 0), kq.exp(kq.sum(kq.column("y"), 0)))), 1.0))),
     {"y": np.zeros(4)}, {}, ModelError,
     r"Local 'z': the encoder's loc has shape \(\) for 1009 rows: it does not keep the data axis"),
    # weights and fit arguments
    (_normal_mean, {"y": np.zeros(4)}, {"beta": np.array([1.0, 2.0])}, TypeError,
     r"beta= is an array of shape \(2,\)"),
    (_normal_mean, {"y": np.zeros(4)}, {"beta_local": kq.schedules.linear(1.0, -1.0, 100)},
     ValueError, r"beta_local=Linear\(steps=100, start=1\.0, end=-1\.0\) is -1\.0 at step 100"),
    (_normal_mean, {"y": np.zeros(4)}, {"learning_rate": kq.schedules.linear(1e-2, -1e-2, 10)},
     ValueError, r"learning_rate=Linear\(steps=10, start=0\.01, end=-0\.01\) is -0\.01 at step 10"),
    (_normal_mean, {"y": np.zeros(4), 0: np.zeros(4), "z": np.zeros(4)}, {}, ValueError,
     r"unknown data name\(s\) \[0, 'z'\]"),
    (_normal_mean, {"y": np.zeros(4)}, {"total_size": np.array([4, 4])}, ValueError,
     r"total_size=array\(\[4, 4\]\) must be a positive integer"),
    (_normal_mean, {"y": np.zeros(4)}, {"seed": -1}, ValueError,
     r"seed=-1 must be an integer in 0\.\.2\*\*32-1"),
    (_normal_mean, {"y": np.zeros(4)}, {"init_scale": float("inf")}, ValueError,
     r"init_scale=inf must be a finite positive number"),
    # streams (a list of batches is checked before the fit starts)
    (_hier, [], {"total_size": 10}, ValueError, r"data is an empty list of batches"),
    (_hier, [_batch([])], {"total_size": 10}, ValueError,
     r"streamed batch 0 \(of the 1 in data\): column 'x' has 0 rows"),
    (_hier, [_batch([0, 1, 1])], {"total_size": 10}, ValueError,
     r"streamed batch 0 .*'row_index' holds row 1 2 times; a batch takes each row at most once"),
    (_hier, [_batch([0, 1]), _batch([2.0, 3.0])], {"total_size": 10}, ValueError,
     r"streamed batch 1 .*'row_index' must be a 1-d integer array of row numbers, got dtype "
     r"float64"),
    (_hier, [_batch([0, 10])], {"total_size": 10}, ValueError,
     r"streamed batch 0 .*'row_index' holds 0\.\.10 but rows are numbered 0\.\.9"),
    (_hier, [_batch([0, 1], **{ROW_INDEX: np.arange(3)})], {"total_size": 10}, ValueError,
     r"column 'row_index' has 3 rows but 'x' has 2"),
    (_hier, [_batch([0, 1], y=np.array([0.0, np.nan]))], {"total_size": 10}, ValueError,
     r"streamed batch 0 .*column 'y' holds nan at index \(1,\)"),
    (_hier, [np.zeros(3)], {"total_size": 10}, TypeError,
     r"streamed batch 0 .*expected a dict of arrays, got ndarray"),
    (_normal_mean, [{"y": np.zeros(5)}], {"total_size": 4}, ValueError,
     r"streamed batch 0 \(of the 1 in data\) has 5 rows, more than total_size=4"),
]


@pytest.mark.parametrize("make_model, data, kwargs, error, match", FITS_REFUSED)
def test_bad_fit_input_is_refused_before_compiling(make_model, data, kwargs, error, match,
                                                    recorder):
    with pytest.raises(error, match=match) as info:
        kq.fit(make_model(), data, backend="recorder", steps=1, progress=False, **kwargs)
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert os.path.abspath(frame.filename).startswith(KLQP_DIR), frame


def test_a_valid_stream_with_ragged_batches_is_accepted(recorder):
    batches = [_batch([3, 1, 4]), _batch([0, 2])]
    outcome = kq.fit(_hier(), batches, total_size=5, backend="recorder", steps=1)
    assert outcome[0] == "accepted"
