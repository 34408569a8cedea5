# Quick start: `make demo` (set up, then run the main job on the embedded default) and `make test`.
# Everything is installed into .venv from requirements/lock.txt, so an install never changes the torch build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/fsdx demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
