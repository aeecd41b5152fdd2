# Two commands: `make demo` (sets up .venv, runs the main job) and `make test` (sets up .venv, runs the tests).
# The venv is (re)built only when pyproject.toml changes, so both targets are idempotent and fast on a rerun.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-full bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/neurojepa run --out runs/demo

test: venv
	$(PY) -m pytest -q

# the science checks at full size (slow; not part of CI)
test-full: venv
	NEUROJEPA_FULL=1 $(PY) -m pytest -q

bench: venv
	$(PY) -m pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) runs .pytest_cache
