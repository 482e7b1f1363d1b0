# The README's set-up, test and quick-start commands are targets here, so users, CI and scripts call
# the same thing.
# Each target installs what it needs first; running a target twice is harmless.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and pinned in the same command as everything that depends on it, so
# that no dependency pulls another build. Override these on a CUDA or Ascend machine, e.g.
#   make install TORCH_SPEC='torch==2.7.1' TORCHVISION_SPEC='torchvision==0.22.1'
TORCH_SPEC ?= torch==2.13.0
TORCHVISION_SPEC ?= torchvision==0.28.0
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format browser-deps clean-venv tiny-assets quickstart

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt tools/torchvision_fix.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check '$(TORCH_SPEC)'
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt '$(TORCH_SPEC)' '$(TORCHVISION_SPEC)'
	$(PY) tools/torchvision_fix.py
	touch $(STAMP)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The inner loop (under a minute on 2 cores): the suite without the slow tests (subprocess runs of the
# scripts, training runs, full-size builds, the tiny world), torchrun jobs and the browser (pyproject.toml's markers).
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not dist and not browser"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The embedded tiny default: the tiny world under assets/world/ (tools/tiny_world.py) and the random
# tiny assets of the tests under assets/tiny/ (made only where missing), then both training stages
# on the world and the held-out score of Chat's answers on a CPU (tools/quickstart.py).
tiny-assets: install
	$(PY) tools/quickstart.py --assets-only

quickstart: install
	$(PY) tools/quickstart.py

# Debian's Chromium for the browser test of the demo (needs root; CI runs it).
browser-deps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean-venv:
	rm -rf $(VENV)
