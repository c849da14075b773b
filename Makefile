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

# `make demo`: the main job on the embedded synthetic default, end to end on 2 CPU ranks.
DEMO_DATA ?= data/synthetic
DEMO_CONFIG ?= configs/synthetic_r18_cellvib.py
DEMO_RUN ?= runs/synthetic_r18_cellvib
DEMO_NPROC ?= 2
# cellVIB models score images by their sigma: fuse IJB templates with it (drop for r-models).
DEMO_IJB_FLAGS ?= --uncertainty-fusion

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP) $(DEMO_DATA)/synth.json
	rm -rf $(DEMO_RUN)
	OMP_NUM_THREADS=1 $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(DEMO_NPROC) \
		train/arcface.py $(DEMO_CONFIG) --set data.rec=$(DEMO_DATA) --set data.val_dir=$(DEMO_DATA) --output $(DEMO_RUN)
	$(PY) eval/verification.py --model $(DEMO_RUN)/backbone.pt --data-dir $(DEMO_DATA) --out $(DEMO_RUN)/eval
	$(PY) eval/ijb.py --target IJBC --data-root $(DEMO_DATA)/IJBC --model $(DEMO_RUN)/backbone.pt \
		--out $(DEMO_RUN)/eval --no-progress $(DEMO_IJB_FLAGS)
	@echo "demo done: results in $(DEMO_RUN)/ (metrics.jsonl, tensorboard/, eval/)"

$(DEMO_DATA)/synth.json: | $(STAMP)
	$(PY) -m facevib.data synth --out $(DEMO_DATA) --identities 100 --images-per-identity 20 --seed 0

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
