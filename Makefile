# Two commands for a fresh clone: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit integration lint clean coverage

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: the whole stack on the embedded default (examples/): demo upstreams, control plane, Envoy
run: $(STAMP)
	$(BIN)/python examples/run.py

## test: lint, then every test, the real-Envoy integration tests included
test: lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

## coverage: every test under coverage.py, subprocesses included ([tool.coverage] in
## pyproject.toml); the summary is printed, htmlcov/ has the detail. ARGS: pytest's.
coverage: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q -p no:cacheprovider $(ARGS); status=$$?; \
	$(BIN)/coverage combine -q && $(BIN)/coverage report && $(BIN)/coverage html -q; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check junction tests loadtest examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .coverage .coverage.* htmlcov

## loadtest: one Locust scenario and its report (results in loadtest/results/); e.g.
##   make loadtest SCENARIO=canary DURATION=60
## SCENARIO: migration | pinned | experiments | canary. STACK: free (start the demo stack on
## free ports), fixed (on the example's ports), none (use `make run`'s). ARGS: more options
## of loadtest/scenarios/run.py (after `--`: of the locustfile).
SCENARIO ?= migration
DURATION ?= 30
USERS    ?= 20
RATE     ?= 200
STACK    ?= free
.PHONY: loadtest
loadtest: $(STAMP)
	$(BIN)/python loadtest/scenarios/run.py $(SCENARIO) --duration $(DURATION) \
		--users $(USERS) --rate $(RATE) --stack $(STACK) $(ARGS)
