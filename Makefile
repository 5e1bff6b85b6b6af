# The two commands of the README. Each creates .venv if needed and installs what it runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install convnp with its runtime extras and run the main job (LeNet-5 on MNIST).
train: $(BIN)/python
	$(BIN)/pip install -q -e ".[train]"
	$(BIN)/convnp train --overwrite

# Install convnp with the test extra (pytest, hypothesis, torch as the oracle, onnx, mpi) and run every test.
test: $(BIN)/python browser
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -m pytest -q

# Debian's Chromium for the report's browser test; without root or apt-get that test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium is not installed and cannot be installed here: the browser test will skip"; fi; }

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
