# Two commands do all the set-up on a fresh machine:
#   make serve   installs what the server needs and starts it on MODEL_PATH
#   make test    installs what the tests need (Debian's nginx and docker-compose too, as root),
#                builds the tiny test model, lints (ruff, mypy) and runs every test
#   make test-fast  unit and integration tests only, in under a minute
#   make test-compat  unit and integration tests under the GPU machine's torch and transformers
#   make audit   checks requirements.lock (what the image installs) for known vulnerabilities
#   make lock    rewrites requirements.lock from requirements.txt, with every file's hash
#   make bench-cpu  the server on a CPU against OpenVINO and ONNX Runtime (bench/cpu.py; make bench-deps first)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch goes in first, pinned: on a machine without a GPU this machine's pip
# resolves it to the CPU build; set TORCH_PIP_ARGS (e.g. an --index-url) to choose another build.
TORCH_PIP_ARGS ?=

# uv and pip-audit (requirements-tools.txt) in a venv of their own.
TOOLS  := $(VENV)/tools
# The image's platform: CPython 3.11 on x86_64 Debian bookworm (glibc 2.36), torch from PyPI
# (the CUDA build). make lock-cpu TORCH_INDEX_URL=<CPU wheel index> writes the CPU image's lock.
LOCK_ARGS := --python-version 3.11 --python-platform x86_64-manylinux_2_36 --generate-hashes \
	--index-url https://pypi.org/simple --custom-compile-command "make lock" --quiet

.PHONY: install install-test native serve test test-fast test-compat lint clean gpu-check tools lock lock-cpu audit audit-if-reachable \
	bench-deps bench-cpu

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

# The engine's attention and products kernels for CPUs with AVX-512 BF16 and VNNI (gpu_pool/model/native);
# without a C compiler the engine runs torch's attention and oneDNN's products and says so, so a
# failed build stops nothing.
native: install
	-$(PY) gpu_pool/model/native/compiler.py

serve: install native
	$(VENV)/bin/gunicorn -c gunicorn.conf.py embsvc.wsgi:app

# Every test but those that need a CUDA device (bench/gpu/check.sh runs them on the GPU machine).
test: lint audit-if-reachable native
	$(PY) -m pytest -q -m "not gpu"

# Unit and integration tests without the slow ones, no lint: under a minute, for every edit.
test-fast: install-test native
	$(PY) -m pytest -q -m "not slow and not gpu" tests/unit tests/integration

# The unit and integration tiers under the GPU machine's torch and transformers
# (requirements-compat.txt) in a venv of their own; .ci/run runs it after make test.
COMPAT := .venv-compat
COMPAT_PINNED := torch|transformers|huggingface_hub
# What the two tiers import beyond requirements.txt (the e2e clients stay out).
COMPAT_TEST := FlagEmbedding|pytest|pytest-timeout|coverage|WebTest|requests|httpx

$(COMPAT)/.installed: requirements.txt requirements-compat.txt requirements-test.txt
	rm -rf $(COMPAT)
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q --upgrade pip
	grep -v -E '^($(COMPAT_PINNED))==' requirements.txt > $(COMPAT)/requirements.txt
	grep -E '^($(COMPAT_TEST))==' requirements-test.txt >> $(COMPAT)/requirements.txt
	$(COMPAT)/bin/pip install -q -r requirements-compat.txt -r $(COMPAT)/requirements.txt
	touch $@

test-compat: $(COMPAT)/.installed install-test
	$(COMPAT)/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	$(COMPAT)/bin/python -m pytest -q -m "not gpu" tests/unit tests/integration

# mypy reads its settings (strict, the packages to check) from pyproject.toml.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The runtimes bench/cpu.py compares the server with (requirements-bench.txt): for the benchmark
# only, never installed by serve or into the image.
$(VENV)/.installed-bench: $(VENV)/.installed requirements-bench.txt
	$(PIP) install -q -r requirements-bench.txt
	touch $@

bench-deps: $(VENV)/.installed-bench

bench-cpu: bench-deps
	$(PY) -m bench.cpu

# The device check's first half: the wheels the GPU machine lacks into .whl/, and the one
# command to run there (bench/gpu/check.sh; docs/performance.md, "On a GPU").
gpu-check:
	bash bench/gpu/check.sh download

$(TOOLS)/.installed: requirements-tools.txt
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q -r requirements-tools.txt
	touch $@

tools: $(TOOLS)/.installed

lock: tools
	$(TOOLS)/bin/uv pip compile requirements.txt $(LOCK_ARGS) -o requirements.lock
	$(PYTHON) deploy/docker/check_lock.py requirements.txt requirements.lock

lock-cpu: tools
	@test -n "$(TORCH_INDEX_URL)" || { echo "make lock-cpu TORCH_INDEX_URL=<CPU wheel index>" >&2; exit 2; }
	$(TOOLS)/bin/uv pip compile requirements.txt $(LOCK_ARGS) --extra-index-url "$(TORCH_INDEX_URL)" \
		-o requirements-cpu.lock
	$(PYTHON) deploy/docker/check_lock.py requirements.txt requirements-cpu.lock

# Known vulnerabilities in the locked set: fails on one, and on a package it could not check.
audit: tools
	bash deploy/audit.sh

# In make test: the same where the advisory data can be reached; where it cannot, it says so and passes.
audit-if-reachable: tools
	bash deploy/audit.sh --if-reachable

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache
