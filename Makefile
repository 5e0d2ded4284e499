# One command sets up and runs the main job; one sets up and passes the tests.
#   make run       - the what-if service on http://127.0.0.1:8000 (API docs at /docs)
#   make test      - the whole test suite (compiled, then the model's tests with the JIT off)
#   make baseline  - the Baotou reference model, 2024-2030, annual KPIs in the terminal
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run baseline test system-packages test-jit test-nojit lint bench bench-save bench-compare bench-gate bench-report schema clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,api,dist]"
	touch $(STAMP)

setup: $(STAMP)

# The service: a SQLite registry and local worker processes in the user's data folder
# (RETWIN_DATA_DIR to move it); the Baotou baseline is computed in the background at start.
run: $(STAMP)
	$(BIN)/retwin warmup
	$(BIN)/retwin serve

baseline: $(STAMP)
	$(BIN)/retwin run models/baotou-2024.yaml

test: system-packages test-jit test-nojit

# Debian packages the tests start or drive (PostgreSQL, Chromium, CJK fonts), when missing
system-packages:
	bash scripts/system-packages.sh

test-jit: $(STAMP)
	$(BIN)/retwin warmup
	$(BIN)/python -m pytest -q

# The same tests with the kernels as plain Python: catches code that only works compiled.
# Long multi-run tests (marked slow) and tests about files, the console or the service
# (marked io), whose subject does not change with the JIT, are left to the compiled pass.
test-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 HYPOTHESIS_PROFILE=nojit $(BIN)/python -m pytest -q -m "not slow and not io"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks api examples
	$(BIN)/mypy

# Benchmarks: save a baseline on this machine, then compare the working tree against it.
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

bench-save: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-save=baseline

bench-compare: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only \
		--benchmark-compare --benchmark-compare-fail=median:15%

# The regression gate: the working tree against the previous commit (BENCH_BASE=REV for
# another), built in its own environment, the core benchmarks of both interleaved round by
# round; fails when one is more than 15 % slower (median of the per-round ratios).
BENCH_BASE ?= HEAD~1
bench-gate: $(STAMP)
	$(BIN)/python benchmarks/gate.py --base $(BENCH_BASE)

# An HTML page of the runs bench-save kept in .benchmarks/: each benchmark's median over time.
bench-report: $(STAMP)
	$(BIN)/python benchmarks/report.py .benchmarks -o .benchmarks/report.html

schema: $(STAMP)
	$(BIN)/retwin schema -o models/scenario.schema.json --force

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
