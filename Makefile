# m2unet-node: the two commands of README.md.
#   make run   create .venv, install, start the node with config/node.toml
#   make test  install what the tests need (Python packages and Debian's dcmtk, dicom3tools,
#              orthanc) and run the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/node.toml
PYTEST_ARGS ?=

.PHONY: run test install system-deps bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: every later requirement is satisfied by it.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	exec $(VENV)/bin/m2unet-node --config $(CONFIG) run

system-deps:
	scripts/ensure-system-deps.sh

test: $(VENV)/.installed system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) bench/bench_predictor.py

clean:
	rm -rf $(VENV) var .pytest_cache
