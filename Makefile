# Every target creates .venv and installs what it needs when missing.
# torch 2.13.0 (CPU wheel) goes in first; everything after is pinned to it by constraints.txt.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.convrate-installed
JOBS    ?= 2

.PHONY: venv test report check derive bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,minilm]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -p no:cacheprovider property_tests

check: $(STAMP)
	$(BIN)/convrate check --profile quick

derive: $(STAMP)
	$(BIN)/convrate derive

report: $(STAMP)
	$(BIN)/convrate report

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
