# Two commands: `make demo` (sets up .venv, runs the main job) and `make test` (sets up .venv, runs the tests).
# `make test-full` and `make test-fast` size the tests up or down (below).
# The venv is (re)built only when pyproject.toml changes, so both targets are idempotent and fast on a rerun.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-full test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/neurojepa run --out runs/demo

# Every test; the science checks (marker `science`) in a reduced but real form. This is what CI runs.
test: venv
	$(PY) -m pytest -q

# Every test, with the science checks at full size: NEUROJEPA_FULL=1, read by tests/conftest.py (`sized`, `full`).
# The pipeline check runs the default preset (the `make demo` run) and requires every report target to pass; the
# other science checks train longer. Tens of minutes on 2 cores; not part of CI.
test-full: venv
	NEUROJEPA_FULL=1 $(PY) -m pytest -q

# Quick iteration: leaves out the tests marked `slow` (> ~10 s: training, whole runs, subprocesses). Not a substitute
# for `make test`.
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) -m pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) runs .pytest_cache
