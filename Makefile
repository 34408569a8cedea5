# Quick start: `make demo` (set up, then run the main job on the embedded default) and `make test`.
# Everything is installed into .venv from requirements/lock.txt, so an install never changes the torch build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test browser clean

setup: $(STAMP)

# The browser tests drive Debian's Chromium; as root (CI) it is installed when missing, elsewhere they say why
# they skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)); } \
		|| echo "chromium not installed: the browser tests will be skipped (apt-get install chromium as root)"

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/fsdx demo

test: setup browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
