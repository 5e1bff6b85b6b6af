# The two commands of the README. Each creates .venv if needed and installs what it runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install convnp with its runtime extras and run the main job.
train: $(BIN)/python
	$(BIN)/pip install -q -e ".[train]"
	$(BIN)/convnp train

# Install convnp with the test extra (pytest, hypothesis, torch as the oracle) and run every test.
test: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
