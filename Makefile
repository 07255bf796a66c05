# Two commands do all the set-up on a fresh machine:
#   make serve   installs what the server needs and starts it on MODEL_PATH
#   make test    installs what the tests need (Debian's nginx and docker-compose too, as root),
#                builds the tiny test model, lints (ruff, mypy) and runs every test
#   make test-fast  unit and integration tests only, in under a minute
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch goes in first, pinned: on a machine without a GPU this machine's pip
# resolves it to the CPU build; set TORCH_PIP_ARGS (e.g. an --index-url) to choose another build.
TORCH_PIP_ARGS ?=

.PHONY: install install-test serve test test-fast lint clean gpu-check

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt deploy/install-tools.sh
	$(PIP) install -q -r requirements-test.txt
	bash deploy/install-tools.sh
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

serve: install
	$(VENV)/bin/gunicorn -c gunicorn.conf.py embsvc.wsgi:app

# Every test but those that need a CUDA device (bench/gpu/check.sh runs them on the GPU machine).
test: lint
	$(PY) -m pytest -q -m "not gpu"

# Unit and integration tests without the slow ones, no lint: under a minute, for every edit.
test-fast: install-test
	$(PY) -m pytest -q -m "not slow and not gpu" tests/unit tests/integration

# mypy reads its settings (strict, the packages to check) from pyproject.toml.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The device check's first half: the wheels the GPU machine lacks into .whl/, and the one
# command to run there (bench/gpu/check.sh; docs/performance.md, "On a GPU").
gpu-check:
	bash bench/gpu/check.sh download

clean:
	rm -rf $(VENV) .pytest_cache
