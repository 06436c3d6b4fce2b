# The two commands of the README: `make demo` and `make test`. Both create .venv and install from
# the pinned constraints, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt

.PHONY: demo test test-all lint envs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[default]'
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[default,test]'
	touch $@

# verify first, into the same database: every timed row of the report shows its verdict.
demo: $(VENV)/.demo-installed
	$(BIN)/dlarena verify
	$(BIN)/dlarena run --suite quick
	$(BIN)/dlarena report --output results/report.md
	$(BIN)/dlarena report --format html --output results/report.html
	$(BIN)/dlarena export --format csv --output results/quick.csv

# The worker runner (src/dlarena_runner) runs in every managed environment, on the oldest interpreter a
# framework needs: CNTK's Python 3.6, named once as dlarena_runner.MINIMUM_PYTHON. vermin fails the build
# on any syntax or library call newer than that; --eval-annotations because Python 3.6 evaluates the
# runner's annotations, and `X | Y` types are found only with the union-types feature.
RUNNER := src/dlarena_runner
RUNNER_MIN_PYTHON = $(shell $(BIN)/python -c 'import dlarena_runner as r; print("%d.%d" % r.MINIMUM_PYTHON)')
VERMIN := $(BIN)/vermin --no-config-file --no-tips --violations --eval-annotations --feature union-types

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(VERMIN) --target=$(RUNNER_MIN_PYTHON)- $(RUNNER)

# The managed environments of the frameworks that cannot share .venv (Theano, Lasagne, Keras 2, MXNet,
# Gluon, Chainer; PaddlePaddle; CNTK and Keras on CNTK; Caffe2; Caffe; DyNet): the conformance tests run
# them there. A present environment is kept. One target each, so that `make -j` downloads them side by
# side (.ci/run); each setup is atomic (a .partial folder renamed into place), so they never collide.
ENVIRONMENTS := legacy paddle cntk caffe2 caffe dynet
.PHONY: $(addprefix env-,$(ENVIRONMENTS))
envs: $(addprefix env-,$(ENVIRONMENTS))

$(addprefix env-,$(ENVIRONMENTS)): env-%: $(VENV)/.test-installed
	$(BIN)/dlarena env setup $*

# pytest exits with 5 when it collects no test: a suite that tests nothing must not pass as green.
# Most tests wait on one single-threaded worker process: one test process per core (pytest-xdist, at
# most MAX_TEST_PROCESSES: each may hold a framework worker of 1-3 GB) keeps the cores busy, and
# loadgroup keeps the tests of one module-scoped fixture in one process (tests/ marks them).
# `make test` (CI) leaves out the tests marked `exhaustive` (the same check on more frameworks or
# networks, about 30 minutes of 2 cores); `make test-all` runs them too.
MAX_TEST_PROCESSES := 4
TEST_MARKS := not exhaustive
test-all: TEST_MARKS :=
test test-all: $(VENV)/.test-installed lint envs
	@$(BIN)/python -c 'import sys; sys.path.insert(0, "tests"); import browser; m = browser.missing(); m and print(f"make test: the HTML report'"'"'s browser tests are skipped: {m}")'
	$(BIN)/python -m pytest -q -n auto --maxprocesses $(MAX_TEST_PROCESSES) --dist loadgroup -m "$(TEST_MARKS)"; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
