# The two set-up commands of the README are `make all` (main job) and `make test` (tests).
# Both create the virtual environment and install the pinned dependencies first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= quick
RESULTS ?= results
OUT ?= out
# JAX's persistent compilation cache (sims/cache.py): default ~/.cache/sharpsim/jax, shared by
# make all, the simulations and the tests; COMPILE_CACHE=off turns it off, a path moves it.
COMPILE_CACHE ?=
export SHARPSIM_COMPILE_CACHE = $(COMPILE_CACHE)
# Tests use both cores; XLA then gets one thread per worker.
PYTEST_WORKERS ?= 2

.PHONY: all venv test test-slow test-heavy test-all lint bench readme clean-results clean-cache

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Main job: every simulation at the chosen scale, the theorem report, then every figure. It
# exits non-zero on a check FAIL that is not a declared expected failure (after the figures).
all: $(STAMP)
	@status=0; $(PY) -m sims all --scale $(SCALE) --results-dir $(RESULTS) --strict || status=$$?; \
	$(PY) -m figures --results-dir $(RESULTS) --out-dir $(OUT) || exit $$?; \
	echo "figures in $(OUT)/, theorem report in $(RESULTS)/checks/report.md"; \
	if [ $$status -ne 0 ]; then echo "unexpected check failures (see the report)"; fi; \
	exit $$status

# Three tiers (docs/conventions.md item 14): `make test` (the README's command), `make test-slow`
# (the slow oracle tests; CI runs both), `make test-heavy` (the cases CI skips, each naming the
# CI-run test that takes its path: pytest.mark.heavy(covered_by=...)). `make test-all` runs all.
test: $(STAMP)
	$(PY) -m pytest -m "not slow and not heavy" -n $(PYTEST_WORKERS) -q --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not heavy" -n $(PYTEST_WORKERS) -q --durations=25

test-heavy: $(STAMP)
	$(PY) -m pytest -m heavy -n $(PYTEST_WORKERS) -q --durations=25

test-all: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m benchmarks --out $(RESULTS)/bench

# The README's figures (docs/img/*.png) and its "Known failures" section, from the stored
# results and theorem report of `make clean-results all` (never simulates; refuses a report
# that reused stored results).
readme: $(STAMP)
	$(PY) -m figures.readme --results-dir $(RESULTS) --readme README.md --img-dir docs/img

clean-results:
	rm -rf $(RESULTS) $(OUT)

# The compiled programs of the persistent cache (safe to delete: it only saves compile time).
clean-cache: $(STAMP)
	$(PY) -c "import shutil, sims.cache as c; d = c.cache_dir(); print('removing', d); d and shutil.rmtree(d, ignore_errors=True)"
