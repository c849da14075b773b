# facevib: `make test` and `make demo` bootstrap .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facevib-installed
EXTRAS ?= train,eval,export,serve,dev
# CPU machines take the local CPU wheel of torch 2.13.0; CUDA hosts keep any torch >= 2.4
# they already have (the venv sees system site-packages there) or fetch a CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")
VENV_FLAGS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "--system-site-packages")
PYTEST_ARGS ?=

.PHONY: install test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check facevib train eval serve tests benchmarks configs

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
