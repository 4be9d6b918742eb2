# Every target creates .venv and installs what it needs when missing.
# torch 2.13.0 (CPU wheel) goes in first; everything after is pinned to it by constraints.txt.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.convrate-installed
JOBS    ?= 2
# Hypothesis profile of `make test` (ci: derandomized; dev and thorough search more)
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

.PHONY: venv test report check derive bench clean mutation

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,minilm,llm]'
	touch $(STAMP)

venv: $(STAMP)

# examples/byod, a user's project checking its own defense with convrate's pytest plugin: installed
# as a user installs it (a regular pip install, pinned like everything else), then its tests run
BYOD       := examples/byod
BYOD_STAMP := $(VENV)/.byod-installed

$(BYOD_STAMP): $(STAMP) $(BYOD)/pyproject.toml $(wildcard $(BYOD)/src/toydefense/*.py)
	$(BIN)/pip install -q -c constraints.txt ./$(BYOD)
	touch $(BYOD_STAMP)

test: $(STAMP) $(BYOD_STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -p no:cacheprovider property_tests benchmarks/tests
	cd $(BYOD) && ../../$(BIN)/python -m pytest -p no:cacheprovider tests

check: $(STAMP)
	$(BIN)/convrate check --profile quick

derive: $(STAMP)
	$(BIN)/convrate derive

report: $(STAMP)
	$(BIN)/convrate report

# mutation testing of the core (tools/mutation.py; results in tools/mutation/RESULTS.md):
# `make mutation` runs every core module, `make mutation MODULES=models/recovery.py` one
# (RESUME=1: test again only its survivors and the mutants of functions changed since its last run;
# MUTANTS="name ...": test again only these recorded mutants, e.g. the survivors a new test targets)
MUT_STAMP := $(VENV)/.mutation-installed
MODULES   ?=

$(MUT_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[test,minilm,llm,mutation]'
	touch $(MUT_STAMP)

mutation: $(MUT_STAMP)
	nice -n 10 $(BIN)/python tools/mutation.py --jobs $(JOBS) $(if $(MODULES),--modules $(MODULES)) $(if $(RESUME),--resume) $(if $(MUTANTS),--mutants $(MUTANTS))

# benchmarks/run.py makes its own environment (benchmarks/.venv) for the anchors it compares against
bench:
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
