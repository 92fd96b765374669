"""The klqp command and the history plot."""

import subprocess
import sys

import numpy as np
import pytest

import klqp as kq
from klqp import cli
from models import hierarchical

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def test_backends_lists_installed(capsys):
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in kq.backends.available():
        assert f"{name}" in out and "ok" in out


def test_explain_reads_the_model_a_file_defines(capsys):
    assert cli.main(["explain", str(EXAMPLES / "global_vs_local.py"), "--batch-size", "100",
                     "--scale-cost-to-minibatch"]) == 0
    out = capsys.readouterr().out
    assert "N = total_size = 2000, b = batch_size = 100, N/b = 20" in out
    assert "s = b/N = 0.05" in out


@pytest.mark.slow
def test_run_passes_flags_to_the_example():
    out = subprocess.run([sys.executable, "-m", "klqp.cli", "run", str(EXAMPLES / "tempered_posterior.py"),
                          "--steps", "300", "--rows", "200"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("\n") >= 6 and "T/beta" in out


def test_unknown_file_is_a_clear_error():
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["explain", str(EXAMPLES / "nope.py")])


def test_plot_history_writes_a_png(tmp_path):
    model, data = hierarchical(n=100)
    r = kq.fit(model, data, steps=200, batch_size=20, beta_local=kq.schedules.linear_warmup(100))
    path = tmp_path / "history.png"
    fig = r.plot_history(path)
    assert path.stat().st_size > 10_000
    assert len(fig.axes) == 4
    weights = fig.axes[3].get_lines()
    np.testing.assert_allclose(weights[1].get_ydata(), r.history["beta_local"])
