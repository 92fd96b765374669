"""Smoke test of the benchmark: ``bench/run.py --quick --json PATH`` runs and reports a
positive, finite figure for every model and runner, and ratios that are the quotients of
those figures.

No timing is asserted (the project's rule: timings go in bench/, never in tests). The
benchmark runs in a subprocess because it sets JAX_ENABLE_X64 before importing JAX, and
with the current interpreter, so it sees the same installed backends as this test.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NEEDED = ("numpyro", "pymc", "klqp_numpyro", "klqp_pymc")
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"the benchmark needs {', '.join(MISSING)}"),
]

# What --quick runs: PyMC in JAX mode only, so no C compile (tens of seconds cold).
EXPECTED = {
    "logistic": {"numpyro-hand-loop", "numpyro-hand-scan", "numpyro-hand-epochs",
                 "klqp-numpyro", "pymc-hand[jax]", "klqp-pymc[jax]"},
    "hierarchical": {"numpyro-hand-loop", "numpyro-hand-scan", "numpyro-hand-epochs",
                     "klqp-numpyro", "klqp-pymc[jax]"},
}
BASELINES = {"logistic": {"numpyro-hand-loop", "numpyro-hand-scan", "numpyro-hand-epochs",
                          "pymc-hand[jax]"},
             "hierarchical": {"numpyro-hand-loop", "numpyro-hand-scan", "numpyro-hand-epochs"}}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick",
                           "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench/run.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "ratio: klqp steps/s" in proc.stdout  # the printed table
    return json.loads(path.read_text())


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_model_and_runner_has_figures(report):
    assert set(report["models"]) == set(EXPECTED)
    for model, expected in EXPECTED.items():
        result = report["models"][model]
        assert not result["errors"], result["errors"]
        assert set(result["runners"]) == expected
        for name, t in result["runners"].items():
            assert _positive_finite(t["steps_per_s"]), (model, name, t)
            assert _positive_finite(t["first_call_s"]), (model, name, t)
            assert t["steps"] == report["settings"]["steps"], (model, name, t)
            assert t["dtype"] == "float64", (model, name, t)


def test_ratios_are_quotients_of_the_figures(report):
    for model, result in report["models"].items():
        runners, ratios = result["runners"], result["ratios"]
        klqp = {k for k in runners if k.startswith("klqp-")}
        assert set(ratios) == klqp
        for name in klqp:
            assert set(ratios[name]) == BASELINES[model]
            for baseline, ratio in ratios[name].items():
                expected = runners[name]["steps_per_s"] / runners[baseline]["steps_per_s"]
                assert _positive_finite(ratio)
                assert ratio == pytest.approx(expected, rel=1e-12)


def test_pymc_baseline_reports_why_it_is_missing(report):
    why = report["models"]["hierarchical"]["unavailable"]["pymc-hand[jax]"]
    assert why.startswith("n/a") and "total_size" in why


def test_machine_and_precision_are_reported(report):
    machine = report["machine"]
    assert machine["jax_enable_x64"] is True and machine["pytensor_floatX"] == "float64"
    assert machine["cpu_count"] >= 1 and machine["jax_devices"]
    assert all(machine["versions"][p] != "not installed" for p in ("pymc", "pytensor", "numpyro", "jax"))


def test_convergence_benchmark_reports_every_method(tmp_path):
    """``bench/convergence.py --quick``: a trace of finite errors for every method of the
    flagship, and the normal-mean table for both backends and both rules."""
    path = tmp_path / "convergence.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "convergence.py"), "--quick",
                           "--cases", "flagship_1,normal_mean", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "Summary: epochs and seconds until the target holds" in proc.stdout
    report = json.loads(path.read_text())
    traces = report["cases"]["flagship_1"]["traces"]
    assert {"klqp-numpyro", "klqp-pymc", "numpyro-hand (dense Adam 1e-2)"} <= set(traces)
    for label, runs in traces.items():
        for run in runs:
            assert run and all(math.isfinite(err["score"]) for _, _, err in run), label
    rows = report["normal_mean"]["rows"]
    assert {(r["backend"], r["rule"]) for r in rows} == {
        (b, rule) for b in ("numpyro", "pymc") for rule in ("defaults", "klqp 0.1 rule")}


def test_semi_amortized_benchmark_runs():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "semi_amortized.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    row = proc.stdout.strip().splitlines()[-1].split()
    # seed, fit seconds, encoder q, refined q, gap, refine seconds: all numbers, gap = difference
    seed, _, encoder, refined, gap, _ = (float(x) for x in row)
    assert seed == 0 and abs((refined - encoder) - gap) < 0.016, proc.stdout


def test_compile_once_benchmark_reports_first_and_second_calls():
    """``bench/compile_once.py --quick``: every runner's two calls, and the ratios (the
    figures themselves are the benchmark's, not asserted here). PyMC in JAX mode, as
    bench/run.py --quick: no C modules to compile on a fresh machine."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "compile_once.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("logistic")]
    assert [r[1] for r in rows] == ["klqp-numpyro", "klqp-pymc", "numpyro-hand-scan",
                                    "pymc-hand"]
    assert all(float(r[2]) > 0 and float(r[3]) >= 0 for r in rows)
    assert "klqp-numpyro / numpyro-hand-scan" in proc.stdout
    assert "PyMC in jax mode" in proc.stdout.splitlines()[0]


def test_soak_benchmark_reports_memory_at_every_mark(tmp_path):
    """``bench/soak.py`` on a few steps: ten RSS marks per fit, in memory and streamed."""
    path = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--steps", "200",
                           "--stream-steps", "50", "--backends", "numpyro", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(path.read_text())
    for mode, steps in (("memory", 200), ("stream", 50)):
        r = report[f"numpyro/{mode}"]
        assert r["steps"] == steps and [m[0] for m in r["marks"]][-1] == steps
        assert len(r["marks"]) == 10 and all(m[1] > 0 for m in r["marks"]), r["marks"]


def test_global_targets_benchmark_reports_every_case(tmp_path):
    """``bench/global_targets.py --quick`` on its fast cases: a finite figure per backend."""
    path = tmp_path / "targets.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "global_targets.py"), "--quick",
                           "--cases", "intercepts,regression", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = json.loads(path.read_text())
    runners = {(r["case"].split(",")[0], r["runner"]) for r in rows}
    for case in ("intercepts G=100", "logistic D=20", "linear"):
        assert {(case, "klqp-numpyro"), (case, "klqp-pymc")} <= runners, runners
    for r in rows:
        assert math.isfinite(r["end_max_mean_err_sd"]) and all(map(math.isfinite, r["end_sd_ratio"]))


def test_predictions_benchmark_reports_its_targets(tmp_path):
    """``bench/predictions.py --quick --targets 1``: a figure per backend, and its JSON."""
    path = tmp_path / "predictions.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "predictions.py"), "--quick",
                           "--targets", "1", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = json.loads(path.read_text())
    assert {r["backend"] for r in rows} == {"numpyro", "pymc"} and all(r["target"] == 1 for r in rows)
    for r in rows:
        assert r["max_mean_err_in_mc_se"] < 5 and r["max_var_err_in_mc_se"] < 5


def test_classic_models_benchmark_compares_both_backends_with_nuts(tmp_path):
    """``bench/classic_models.py`` on its quickest model, 300 steps: a row per backend,
    every figure finite, NUTS's reference beside them (the figures themselves are the
    benchmark's; tests/test_global_step.py fits the robust regression to its optimum, and
    tests/test_tutorial_models.py holds three more models against NUTS)."""
    path = tmp_path / "classic.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "classic_models.py"),
                           "--models", "diabetes", "--steps", "300", "--json", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = json.loads(path.read_text())
    assert {(r["model"], r["backend"]) for r in rows} == {
        ("diabetes", b) for b in ("numpyro", "pymc")}
    assert all(math.isfinite(r["max_z"]) and r["numbers"] > 0 and r["nuts_s"] > 0 for r in rows)


def test_global_steps_option_adds_a_runner_per_rule():
    """``--global-steps auto,diagonal,none`` times klqp with each rule (named after it,
    the default one keeping its plain name) on every backend; an unknown name is refused."""
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    sys.path.insert(0, str(REPO / "bench"))
    try:
        run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
        args = run.parse_args(["--quick", "--models", "logistic", "--pymc-modes", "jax",
                               "--global-steps", "auto,diagonal,none"])
        case = run.build_cases(args)[0]
        names = {name for name, _ in run.planned_runs(case, args)}
        assert {"klqp-numpyro", "klqp-numpyro/diagonal", "klqp-numpyro/none", "klqp-pymc[jax]",
                "klqp-pymc[jax]/diagonal", "klqp-pymc[jax]/none"} <= names
        with pytest.raises(SystemExit):
            run.parse_args(["--global-steps", "dense"])
    finally:
        sys.path.remove(str(REPO / "bench"))
