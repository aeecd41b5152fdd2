"""The examples under examples/ run as a user would run them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs an example end to end in a subprocess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs_and_prints_its_results(tmp_path):
    out = tmp_path / "qs"
    tiny = ["simulate.units=50", "simulate.minutes=2", "teacher.train.max_epochs=1", "student.max_steps=5"]
    done = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), str(out), *tiny],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert f"units kept: {m['data']['units_kept']} of {m['data']['units_total']}" in done.stdout
    assert f"held-out CCA = {m['student']['cca_heldout_mean']:.3f}" in done.stdout
    assert "excitatory" in done.stdout and (out / "report.html").is_file()


def test_estimators_example_runs_and_round_trips(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "estimators.py"), str(tmp_path / "est")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reloaded teacher: same latents = True" in done.stdout
    assert "reloaded student: same readout = True" in done.stdout
    assert "Dale violations 0" in done.stdout
    assert (tmp_path / "est" / "teacher" / "teacher.pt").is_file()
    assert (tmp_path / "est" / "student" / "student.json").is_file()
