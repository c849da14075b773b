# facevib embedding server for NVIDIA GPUs: CUDA + cuDNN runtime, onnxruntime-gpu, no torch.
# The host needs the NVIDIA driver and the NVIDIA container toolkit.
#
#   docker build -f docker/serve.Dockerfile -t facevib-serve .
#   docker run --gpus all -p 8000:8000 -v $PWD/models:/models:ro facevib-serve --model /models/model.onnx
#   docker run --gpus all -p 8000:8000 -v $PWD/models:/models:ro -e FACEVIB_MODEL=/models/model.onnx \
#       -e FACEVIB_API_KEY=change-me facevib-serve
#   docker run ... --entrypoint uvicorn facevib-serve --factory facevib.serve:create_app --host 0.0.0.0
#
# onnxruntime-gpu 1.19+ wheels on PyPI are built for CUDA 12 and cuDNN 9, which this base
# provides. If they do not match, ONNX Runtime falls back to the CPU; the server then says so
# in its start-up log and in /v1/info ("warnings"), never silently.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

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
# The serving dependencies only (the `serve-gpu` extra without onnx, plus the base numpy and
# OpenCV). facevib itself is not pip-installed: its base dependencies include torch, which the
# server never imports (tests/test_serve_process.py runs it with torch blocked), so the source
# tree is put on PYTHONPATH instead, data files (detector weights) included.
RUN pip install "numpy>=1.24" "opencv-python-headless>=4.8,<5" "onnxruntime-gpu>=1.19" "fastapi>=0.110" \
        "uvicorn>=0.27" "python-multipart>=0.0.9" "prometheus-client>=0.17" "pillow>=10"
COPY facevib facevib
COPY serve serve
ENV PYTHONPATH=/opt/facevib

# Run as an unprivileged user; models are mounted read-only.
RUN useradd --system --uid 10001 --no-create-home facevib
USER facevib

ENV FACEVIB_HOST=0.0.0.0 FACEVIB_PORT=8000 FACEVIB_DEVICE=cuda
EXPOSE 8000
# /health runs a real inference on a fixed input (200 ok, 503 loading/overloaded/broken).
# start-period covers model loading and the warm-up of the padded batch sizes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python3 -c "import os, sys, urllib.request; port = os.environ.get('FACEVIB_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=8).status == 200 else 1)"

ENTRYPOINT ["python3", "serve/app.py"]
CMD []
