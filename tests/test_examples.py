"""The examples the docs show, run short on every installed backend."""

import importlib.util
import pathlib

import numpy as np
import pytest

import klqp as kq

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
BACKENDS = [b for b in ("numpyro", "pymc") if b in kq.backends.available()]


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_hierarchical_example_reaches_the_mean_field_optimum(backend, capsys):
    ex = load("hierarchical")
    args = ["--backend", backend, "--rows", "4000", "--steps", "3000", "--batch-size", "400"]
    result = ex.main(args)
    out = capsys.readouterr().out
    assert "klqp objective for model 'hierarchical'" in out and "mean-field optimum" in out
    data, _ = ex.make_data(4000, 0)
    theta, sigma, z_mean, z_sd = ex.mean_field_optimum(data)
    assert abs(result.mean("theta") - theta) < 0.05
    assert abs(result.mean("sigma") - sigma) < 0.08
    assert np.sqrt(np.mean((result.mean("z") - z_mean) ** 2)) < 0.25 * z_sd
