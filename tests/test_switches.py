"""The test switches: `make test-full` (NEUROJEPA_FULL=1) really changes the size of the science checks,
`make test` runs every test (slow ones included), `make test-fast` leaves out the ones marked slow."""

import re
from pathlib import Path

import pytest

from conftest import FULL_ENV, full_size, sized

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value, full", [(None, False), ("", False), ("0", False), ("false", False), ("off", False),
                                         ("1", True), ("yes", True), ("TRUE", True)])
def test_full_size_reads_the_environment(monkeypatch, value, full):
    if value is None:
        monkeypatch.delenv(FULL_ENV, raising=False)
    else:
        monkeypatch.setenv(FULL_ENV, value)
    assert full_size() is full
    assert sized("reduced", "full") == ("full" if full else "reduced")


def test_science_checks_change_size_under_full(monkeypatch):
    """The pipeline check and the student check are built from the switch, read when they run."""
    import test_estimators
    import test_pipeline

    monkeypatch.delenv(FULL_ENV, raising=False)
    run, student = test_pipeline.science_run_config(), test_estimators.student_size()
    monkeypatch.setenv(FULL_ENV, "1")
    full_run, full_student = test_pipeline.science_run_config(), test_estimators.student_size()

    # pipeline: the tiny `fast`-based run vs the default preset (what `make demo` runs)
    assert (run.simulate.units, run.simulate.minutes) == (60, 2.0)
    assert (full_run.simulate.units, full_run.simulate.minutes) == (None, None)  # the simulator's default session
    steps = lambda c: c.teacher.train.max_epochs * c.teacher.train.steps_per_epoch  # noqa: E731
    assert (steps(run), steps(full_run)) == (10, 350)
    assert (run.student.max_steps, full_run.student.max_steps) == (10, 150)
    assert (run.unconstrained_ablation, full_run.unconstrained_ablation) == (False, True)
    # student estimator: 10x the steps on twice the bins
    assert student == dict(max_steps=20, n_bins=3000) and full_student == dict(max_steps=200, n_bins=6000)


def test_markers_are_registered(pytestconfig):
    names = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert {"slow", "science"} <= names


def _recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, flags=re.M)
    assert found, f"no target {target} in the Makefile"
    return found.group(1)


def test_make_targets_set_the_switches():
    deselects = lambda recipe: re.search(r"pytest\b.*\s-m\s", recipe) is not None  # noqa: E731 (a marker expression)
    assert "pytest" in _recipe("test") and not deselects(_recipe("test"))  # CI: everything, slow tests included
    assert f"{FULL_ENV}=1" in _recipe("test-full") and not deselects(_recipe("test-full"))
    assert '-m "not slow"' in _recipe("test-fast")
