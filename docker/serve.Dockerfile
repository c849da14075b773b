# facevib embedding server for NVIDIA GPUs: CUDA + cuDNN runtime, onnxruntime-gpu, no torch.
# The host needs the NVIDIA driver and the NVIDIA container toolkit.
#
#   docker build -f docker/serve.Dockerfile -t facevib-serve .
#   docker run --gpus all -p 8000:8000 -v $PWD/models:/models:ro facevib-serve --model /models/model.onnx
#   docker run --gpus all -p 8000:8000 -v $PWD/models:/models:ro -e FACEVIB_MODEL=/models/model.onnx \
#       -e FACEVIB_API_KEY=change-me facevib-serve
#   docker run ... --entrypoint uvicorn facevib-serve --factory facevib.serve:create_app --host 0.0.0.0
#
# The base's CUDA major must be the one onnxruntime-gpu was built for: the pinned 1.31.1
# (docker/serve-constraints.txt) is built for CUDA 13.0 and cuDNN 9 (its CUDA provider links
# libcudart.so.13 and libcublasLt.so.13; tests/test_docker_cuda.py reads them from the wheel and
# compares them with this FROM tag). CUDA 13 needs NVIDIA driver 580 or newer on the host.
# When the libraries do not match, ONNX Runtime falls back to the CPU; the server then says so
# in its start-up log and in /v1/info ("warnings"), never silently. `make docker-test` builds
# and runs this image on a stand-in base without CUDA and checks exactly that message.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/facevib
# The serving dependencies only (the `serve-gpu` extra without onnx, which the server does not
# import, plus the base numpy and OpenCV), at the versions of docker/serve-constraints.txt.
# facevib itself is not pip-installed: its base dependencies include torch, which the server
# never imports (tests/test_serve_process.py runs it with torch blocked), so the source tree is
# put on PYTHONPATH instead, data files (detector weights) included.
COPY docker/serve-constraints.txt /tmp/serve-constraints.txt
RUN pip install -c /tmp/serve-constraints.txt numpy opencv-python-headless onnxruntime-gpu fastapi uvicorn \
        python-multipart prometheus-client pillow orjson \
    && rm /tmp/serve-constraints.txt
COPY facevib facevib
COPY serve serve
ENV PYTHONPATH=/opt/facevib

# Run as an unprivileged user; models are mounted read-only.
RUN useradd --system --uid 10001 --no-create-home facevib
USER facevib

ENV FACEVIB_HOST=0.0.0.0 FACEVIB_PORT=8000 FACEVIB_DEVICE=cuda
EXPOSE 8000
# /health/ready: model loaded, last background inference check passed, queue below its bound
# (200, else 503); it never waits in the inference queue. /health/live (no inference) is the
# liveness probe for orchestrators (docs/serving.md). start-period covers model loading and the
# warm-up of the padded batch sizes.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD python3 -c "import os, sys, urllib.request; port = os.environ.get('FACEVIB_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/ready', timeout=2).status == 200 else 1)"

ENTRYPOINT ["python3", "serve/app.py"]
CMD []
