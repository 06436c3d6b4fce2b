# The two commands of the README: `make demo` and `make test`. Both create .venv and install from
# the pinned constraints, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt

.PHONY: demo test lint envs clean

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
	$(BIN)/dlarena export --format csv --output results/quick.csv

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The managed environments of the frameworks that cannot share .venv (Theano, Lasagne, Keras 2, MXNet,
# Gluon, Chainer; PaddlePaddle): the conformance tests run them there. A present environment is kept.
envs: $(VENV)/.test-installed
	$(BIN)/dlarena env setup legacy paddle

# pytest exits with 5 when it collects no test: a suite that tests nothing must not pass as green.
test: $(VENV)/.test-installed lint envs
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
