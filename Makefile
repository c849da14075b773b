# facevib: `make test` and `make demo` bootstrap .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facevib-installed
# A CUDA host is one where `nvidia-smi -L` lists a GPU. There the server extra is serve-gpu
# (onnxruntime-gpu; the CPU onnxruntime of `serve` would shadow it, so never both), torch is
# PyPI's CUDA build, and the venv is isolated: a CPU torch in the system site-packages would
# satisfy the requirement and win. After installing, a torch that cannot use the GPUs is
# refused in one line. CPU machines take the local CPU wheel of torch 2.13.0.
# The CUDA build comes from the PyTorch index the driver can run (python -m facevib.torch_wheels
# reads nvidia-smi's "CUDA Version" and picks cu130 / cu128 / cu126, or refuses in one line);
# TORCH_INDEX=<url> overrides the choice.
CUDA_HOST := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo 1)
EXTRAS ?= train,eval,export,$(if $(CUDA_HOST),serve-gpu,serve),dev,gallery-bench
TORCH_SPEC ?= $(if $(CUDA_HOST),torch>=2.4,torch==2.13.0)
TORCH_INDEX ?=
TORCH_INDEX_OF_DRIVER := $(if $(TORCH_INDEX),echo "$(TORCH_INDEX)",$(PY) -m facevib.torch_wheels)
VENV_FLAGS ?=
CHECK_CUDA_TORCH := $(PY) -c "import sys; from facevib.distributed import cuda_mismatch; \
	problem = cuda_mismatch(); sys.exit(problem and 'error: ' + problem + ' (try TORCH_SPEC=...)')"
PYTEST_ARGS ?=

# `make demo`: the whole product on the embedded synthetic set, one step per target, each a
# command you can rerun alone (`make demo-eval`, `make demo-report DEMO_OUT=...`):
#   demo-data    render the synthetic set: train.rec, three 3,000-pair .bin sets, IJB-C-style IJBC/
#   demo-train   train cellVIB, then the ArcFace baseline, same budget (torchrun: 2 CPU ranks or all GPUs)
#   demo-eval    insightface's protocols on every .bin set and IJB-C (+ uncertainty fusion for cellVIB)
#   demo-serve   export cellVIB (calibrated threshold, uncertainty output), serve it, talk to it over HTTP
#   demo-report  $(DEMO_OUT)/REPORT.md and report.html
DEMO_DATA ?= data/synthetic
DEMO_OUT ?= runs/demo
DEMO_SYNTH_FLAGS ?= --identities 100 --images-per-identity 20 --seed 0 \
	--lfw-identities 60 --lfw-pairs 3000 --cfp-fp-identities 60 --cfp-fp-pairs 3000 \
	--agedb-30-identities 60 --agedb-30-pairs 3000 --bin-images-per-identity 10 \
	--ijb-identities 64 --ijb-templates-per-identity 6 --ijb-max-media 2 --ijb-max-frames 2
DEMO_CELLVIB_CONFIG ?= configs/synthetic_r18_cellvib.py
DEMO_BASELINE_CONFIG ?= configs/synthetic_r18_arcface.py
DEMO_STEPS ?= 100
DEMO_NPROC ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c GPU); [ "$$n" -gt 0 ] 2>/dev/null && echo $$n || echo 2)
DEMO_TRAIN_FLAGS ?= --set run.device=auto --set run.log_every=5 --set data.val_targets=[]
DEMO_TARGET_FPR ?= 1e-4
DEMO_EXPORT_FLAGS ?=
DEMO_TRAIN := OMP_NUM_THREADS=1 $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(DEMO_NPROC) \
	train/arcface.py --set data.rec=$(DEMO_DATA) --set data.val_dir=$(DEMO_DATA) \
	--set run.epochs=0 --set run.total_steps=$(DEMO_STEPS) $(DEMO_TRAIN_FLAGS)
DEMO_IJB := $(PY) eval/ijb.py --target IJBC --data-root $(DEMO_DATA)/IJBC --no-progress

# The built-in face detector's weights come from this wheel (fetched, never installed: it pins
# old torch and numpy); the ONNX files converted from it are committed in facevib/detect/weights/.
MTCNN_WHEEL := build/facenet_pytorch-2.6.0-py3-none-any.whl

.PHONY: detector-wheel detector-weights
.PHONY: ort-gpu-wheel docker-test
.PHONY: mutants
.PHONY: install test gpu-check demo demo-data demo-train demo-eval demo-serve demo-report lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(CUDA_HOST),index=$$($(TORCH_INDEX_OF_DRIVER)) && $(PY) -m pip install --quiet --index-url "$$index" "$(TORCH_SPEC)",$(PY) -m pip install --quiet "$(TORCH_SPEC)")
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(if $(CUDA_HOST),@$(CHECK_CUDA_TORCH))
	touch $(STAMP)

test: $(STAMP) detector-wheel ort-gpu-wheel
	$(PY) -m pytest $(PYTEST_ARGS)

# One-shot acceptance on a CUDA machine (<= 8 min on one H200): gpu-marked tests, training
# throughput, NCCL + DCP, ONNX Runtime on CUDA, serving and embedding throughput -> JSON.
GPU_CHECK_OUT ?= runs/gpu_check.json
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

demo: $(STAMP)
	rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT) && date +%s > $(DEMO_OUT)/started_at
	$(MAKE) --no-print-directory demo-data demo-train demo-eval demo-serve demo-report PY=$(PY)
	@echo "demo done in $$(( $$(date +%s) - $$(cat $(DEMO_OUT)/started_at) )) s: open $(DEMO_OUT)/REPORT.md or $(DEMO_OUT)/report.html"

# Rendered again only when the flags differ from those of the set already there (or when
# the set was rewritten by another command since).
demo-data:
	@if [ "$$(cat $(DEMO_DATA)/synth.flags 2>/dev/null)" = "$(strip $(DEMO_SYNTH_FLAGS))" ] \
		&& ! [ $(DEMO_DATA)/synth.json -nt $(DEMO_DATA)/synth.flags ]; then \
		echo "$(DEMO_DATA): synthetic set already rendered with these flags"; \
	else \
		$(PY) -m facevib.synth --out $(DEMO_DATA) $(DEMO_SYNTH_FLAGS) && \
		echo "$(strip $(DEMO_SYNTH_FLAGS))" > $(DEMO_DATA)/synth.flags; \
	fi

demo-train:
	rm -rf $(DEMO_OUT)/cellvib $(DEMO_OUT)/arcface
	$(DEMO_TRAIN) --output $(DEMO_OUT)/cellvib $(DEMO_CELLVIB_CONFIG)
	$(DEMO_TRAIN) --output $(DEMO_OUT)/arcface $(DEMO_BASELINE_CONFIG)

# cellVIB embeds IJB-C once, with its uncertainty from the same forward pass: scored with
# uncertainty fusion (eval/fusion/), then re-scored from the feature cache by the protocol (eval/).
demo-eval:
	$(PY) eval/verification.py --model $(DEMO_OUT)/cellvib/backbone.pt --data-dir $(DEMO_DATA) --out $(DEMO_OUT)/cellvib/eval
	$(PY) eval/verification.py --model $(DEMO_OUT)/arcface/backbone.pt --data-dir $(DEMO_DATA) --out $(DEMO_OUT)/arcface/eval
	$(DEMO_IJB) --model $(DEMO_OUT)/cellvib/backbone.pt --features $(DEMO_OUT)/cellvib/eval/ijbc_features.npz \
		--uncertainty-fusion --out $(DEMO_OUT)/cellvib/eval/fusion
	$(DEMO_IJB) --features $(DEMO_OUT)/cellvib/eval/ijbc_features.npz --out $(DEMO_OUT)/cellvib/eval
	$(DEMO_IJB) --model $(DEMO_OUT)/arcface/backbone.pt --out $(DEMO_OUT)/arcface/eval

demo-serve:
	$(PY) -m facevib.export $(DEMO_OUT)/cellvib/backbone.pt --out $(DEMO_OUT)/model.onnx --uncertainty \
		--calibrate $(DEMO_DATA)/IJBC --target-fpr $(DEMO_TARGET_FPR) $(DEMO_EXPORT_FLAGS)
	$(PY) serve/exchange.py --model $(DEMO_OUT)/model.onnx --ijb-root $(DEMO_DATA)/IJBC --out $(DEMO_OUT)/http_exchange.json

demo-report:
	$(PY) eval/report.py --run cellVIB=$(DEMO_OUT)/cellvib --run ArcFace=$(DEMO_OUT)/arcface --data $(DEMO_DATA) \
		--onnx $(DEMO_OUT)/model.onnx --exchange $(DEMO_OUT)/http_exchange.json --out $(DEMO_OUT) \
		--command "make demo-data demo-train demo-eval demo-serve demo-report DEMO_STEPS=$(DEMO_STEPS) DEMO_NPROC=$(DEMO_NPROC)" \
		$$([ -f $(DEMO_OUT)/started_at ] && echo --started-at $(DEMO_OUT)/started_at)

# Best effort: without the wheel (no registry access) the one test that rebuilds the committed
# detector files from it is skipped, and says so.
detector-wheel: $(STAMP)
	@test -f $(MTCNN_WHEEL) || $(PY) -m pip download --quiet --no-deps facenet-pytorch==2.6.0 -d build \
		|| echo "warning: could not fetch facenet-pytorch 2.6.0; tests/test_detect_mtcnn.py will skip its wheel check"

# The onnxruntime-gpu wheel pinned in docker/serve-constraints.txt, for CPython 3.12 (the serving
# image's Python), fetched and never installed: the venv has the CPU onnxruntime, and never both.
# tests/test_docker_cuda.py reads its CUDA provider's linked libraries and checks the serving
# image's base against them; without the wheel it skips and says so.
ORT_GPU_VERSION := $(shell sed -n 's/^onnxruntime-gpu==//p' docker/serve-constraints.txt)
ort-gpu-wheel: $(STAMP)
	@ls build/onnxruntime_gpu-$(ORT_GPU_VERSION)-*.whl >/dev/null 2>&1 || $(PY) -m pip download --quiet --no-deps \
		--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d build "onnxruntime-gpu==$(ORT_GPU_VERSION)" \
		|| echo "warning: could not fetch onnxruntime-gpu $(ORT_GPU_VERSION); tests/test_docker_cuda.py will skip its wheel checks"

# Build both images of docker/ on stand-in bases (no container registry is reachable here), run the
# serving one with a read-only model and check it over HTTP, export and calibrate in the trainer one;
# prints a summary, writes build/docker-test/summary.json. Needs root and dockerd (installed and
# started when missing); minutes; not part of `make test`. See docs/serving.md#containers-and-scaling-out.
STANDIN_BASE ?= ../shared/tools/docker-standin-base.sh
DOCKER_TEST_FLAGS ?=
docker-test: $(STAMP)
	$(PY) tools/docker_test.py --standin-base $(STANDIN_BASE) $(DOCKER_TEST_FLAGS)

# Rebuild facevib/detect/weights/ from the wheel; the result is byte-identical to the committed files.
detector-weights: $(STAMP)
	mkdir -p build
	test -f $(MTCNN_WHEEL) || $(PY) -m pip download --quiet --no-deps facenet-pytorch==2.6.0 -d build
	$(PY) -m facevib.detect convert --wheel $(MTCNN_WHEEL) --out facevib/detect/weights

# Plant known bugs in a copy of the package and check that the suite catches each (minutes;
# not part of `make test`). See docs/testing.md.
mutants: $(STAMP) detector-wheel
	$(PY) tools/mutants.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
