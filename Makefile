# Two entry points for a fresh machine: `make serve` and `make test`.
# Both create .venv and install the pinned dependencies on first use (llama-cpp-python is
# compiled by pip once, ~6-10 min on 2 cores; pip caches the wheel afterwards).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
# llama.cpp is built for this CPU (-march=native) but without AMX: virtual machines often
# advertise AMX tiles without letting a process use them, and ggml's AMX kernels then die with
# SIGILL on the first prompt. pip caches the wheel it builds (the key ignores CMAKE_ARGS): after
# changing these flags, `.venv/bin/pip cache remove llama_cpp_python`.
AMX_OFF := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$(AMX_OFF)" -DCMAKE_CXX_FLAGS="$(AMX_OFF)"
PORT ?= 8000

.PHONY: install serve test lint bench clean ui

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/lmaas serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy
	$(BIN)/python tools/check_sizes.py src

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run.py

# The console's sources (ui/) built into the package (src/lmaas/gateway/ui/static, committed):
# only needed after changing ui/; serving it needs no Node.js.
ui:
	cd ui && npm ci --no-audit --no-fund && npm run build

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
