"""The spec is plain data, checked as it is written; bad input is refused before compiling."""

import subprocess
import sys

import numpy as np
import pytest

import klqp as kq
from models import hierarchical


def test_building_a_model_imports_no_backend():
    code = ("import sys, klqp as kq, numpy as np\n"
            "with kq.Model('m') as m:\n"
            "    x = kq.Data('x')\n"
            "    w = kq.Global('w', kq.Normal(0, 1))\n"
            "    kq.Observed('y', kq.Normal(w * x, 1))\n"
            "kq.explain(m, total_size=10)\n"
            "bad = [k for k in sys.modules if k.split('.')[0] in ('jax', 'numpyro', 'pymc', 'pytensor')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_expressions_print_and_serialize():
    with kq.Model("m") as m:
        x = kq.Data("x", shape=(3,))
        g = kq.Data("g", dtype="int")
        w = kq.Global("w", kq.Normal(0, 1), shape=(3,))
        a = kq.Global("a", kq.Normal(0, 1), shape=(4,))
        kq.Observed("y", kq.Normal(kq.sigmoid(x @ w) + a[g] - kq.softplus(-a[0]), kq.exp(1.0)))
    spec = m["y"].dist
    assert repr(spec.param_dict["mu"]) == "((sigmoid((x @ w)) + a[g]) - softplus(-a[0]))"
    import json
    json.dumps(m.to_dict())  # plain data all the way down


def test_shapes_are_inferred_and_checked():
    with kq.Model("m") as m:
        x = kq.Data("x", shape=(2,))
        w = kq.Global("w", kq.Normal(np.zeros(2), 1.0))
        assert m["w"].shape == (2,)
        z = kq.Local("z", kq.Normal(x * w, 1.0))
        assert m["z"].shape == (2,)
        with pytest.raises(kq.ModelError, match=r"Global 'v': shape=\(3,\).*\(2,\)"):
            kq.Global("v", kq.Normal(w, 1.0), shape=(3,))


@pytest.mark.parametrize("build, match", [
    (lambda: kq.Global("w", kq.Normal(kq.Data("x"), 1.0)), "reads a per-row variable.*kq.Local"),
    (lambda: kq.Global("k", kq.Poisson(3.0)), "discrete"),
    (lambda: [kq.Data("y"), kq.Global("y", kq.Normal(0, 1))], "already has a data variable"),
    (lambda: kq.Data("row_index"), "reserved"),
    (lambda: kq.Data("not valid"), "identifier"),
    (lambda: kq.Global("w", 3.0), "expected a distribution"),
])
def test_model_errors_name_the_variable(build, match):
    with kq.Model("m"):
        with pytest.raises(kq.ModelError, match=match):
            build()


def test_unknown_variable_in_expression():
    with kq.Model("a"):
        x = kq.Data("x")
    with kq.Model("b"):
        with pytest.raises(kq.ModelError, match="'x', which is not declared"):
            kq.Global("w", kq.Normal(x, 1.0))


def test_bernoulli_needs_one_parametrization():
    with pytest.raises(ValueError, match="exactly one of probs= or logits="):
        kq.Bernoulli(probs=0.3, logits=0.1)


def _bad(**changes):
    model, data = hierarchical(n=100)
    data = {**data}
    kwargs = dict(batch_size=10)
    for k, v in changes.items():
        if k in data or k == "extra":
            data[k] = v
        elif k == "drop":
            del data[v]
        else:
            kwargs[k] = v
    return model, data, kwargs


@pytest.mark.parametrize("changes, match", [
    (dict(batch_size=101), r"batch_size=101 is larger than total_size=100"),
    (dict(batch_size=0), r"batch_size=0 must be a positive integer"),
    (dict(extra=np.zeros(100)), r"unknown data name\(s\) \['extra'\]"),
    (dict(drop="x"), r"missing data for \['x'\]"),
    (dict(x=np.r_[np.zeros(99), np.nan]), r"column 'x' holds nan at index \(99,\)"),
    (dict(y=np.zeros(99)), r"column '.' has 99 rows but '.' has 100"),
    (dict(x=np.zeros((100, 2))), r"Data 'x' has rows of shape \(2,\) but was declared with shape=\(\)"),
    (dict(beta=-1.0), r"beta_global=-1.0: a weight must be a finite number >= 0"),
    (dict(beta_local=float("nan")), r"beta_local=nan"),
    (dict(likelihood_weight="high"), r"likelihood_weight='high'"),
    (dict(total_size=1000), r"data has 100 rows but total_size=1000"),
    (dict(backend="stan"), r"backend='stan' is not installed; installed backends: \["),
    (dict(steps=-3), r"steps=-3"),
    (dict(learning_rate=0.0), r"learning_rate=0.0"),
])
def test_bad_input_is_refused_before_compiling(changes, match, monkeypatch):
    model, data, kwargs = _bad(**changes)
    compiled = []
    if "numpyro" in kq.backends.available():
        import klqp_numpyro
        monkeypatch.setattr(klqp_numpyro.NumPyroBackend, "fit",
                            lambda *a, **k: compiled.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        kq.fit(model, data, **kwargs)
    assert not compiled


def test_observed_values_outside_support_are_refused():
    with kq.Model("m") as m:
        p = kq.Global("p", kq.Beta(1, 1))
        kq.Observed("y", kq.Bernoulli(probs=p))
    with pytest.raises(ValueError, match="outside the support"):
        kq.compile(m, {"y": np.array([0, 1, 2.0])})
    with pytest.raises(ValueError, match="whole numbers"):
        kq.compile(m, {"y": np.array([0, 1, 0.5])})


def test_stream_needs_total_size_and_row_index():
    model, data = hierarchical(n=100)
    batches = [{"x": data["x"][:10], "y": data["y"][:10]}]
    with pytest.raises(ValueError, match="need total_size=N"):
        kq.fit(model, batches, steps=1)
    with pytest.raises(ValueError, match="must carry 'row_index'"):
        kq.fit(model, batches, steps=1, total_size=100)
