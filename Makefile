# Quick start: `make demo` (set up, then run the main job on the embedded default) and `make test`.
# Everything is installed into .venv from requirements/lock.txt, so an install never changes the torch build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test browser plain-install-check clean docs

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

# The layers and no-cycles contracts (pyproject.toml, import-linter), then the suite on two workers (one per core
# here); a module runs on one worker, so its shared fixtures are built once.
test: setup browser
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

# The documentation site: docs/ into site/ (mkdocs-material, the `docs` extra), warnings as errors. The CLI reference
# page is generated from fsdx's own parsers at every build (docs/gen_cli.py, run by docs/hooks.py).
docs: setup
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# What `pip install fashionsd-x` gives a user (no dev extras) must run an evaluation end to end: every module
# an evaluation imports is a declared dependency.
PLAIN := .venv-plain
plain-install-check:
	rm -rf $(PLAIN) outputs/plain-install-check
	$(PYTHON) -m venv $(PLAIN)
	$(PLAIN)/bin/python -m pip install --quiet -c requirements/lock.txt .
	cd /tmp && $(CURDIR)/$(PLAIN)/bin/python -m fashionsd_x data sketch-styles --out $(CURDIR)/outputs/plain-install-check/styles --per-style 1
	cd /tmp && HF_HUB_OFFLINE=1 $(CURDIR)/$(PLAIN)/bin/python -m fashionsd_x evaluate --data $(CURDIR)/outputs/plain-install-check/styles --out $(CURDIR)/outputs/plain-install-check/eval --steps 2 --limit 3
	rm -rf $(PLAIN)

clean:
	rm -rf $(VENV) $(PLAIN) outputs
