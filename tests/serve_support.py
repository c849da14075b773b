"""Shared pieces of the server tests: small exported models, real face photos, a real server process.

Models are tiny iResNets exported once per test session (TorchScript exporter: seconds), so
the server's answers can be compared with the PyTorch model's on the same crops.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import skimage.data
import torch
from PIL import Image
from torch import nn

from facevib.align import norm_crop
from facevib.data.transforms import images_to_tensor
from facevib.export import export_onnx
from facevib.models import create_model
from facevib.serve.launch import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
TINY = {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32}
# Heavier, so that inference (not HTTP) is the bottleneck in the overload test.
SLOWER = {"layers": (1, 1, 1, 1), "widths": (32, 64, 128, 256), "embedding_dim": 64}

# Located by hand: pupils, nose tip, mouth corners (the astronaut's are tests/test_align.py's).
ASTRONAUT_LANDMARKS = np.array([[203.0, 101.0], [246.5, 102.0], [225.0, 127.0], [203.5, 143.0], [245.0, 141.0]])
GRACE_HOPPER_LANDMARKS = np.array([[220.0, 190.0], [305.0, 187.5], [262.0, 240.0], [231.0, 277.0], [292.0, 276.0]])


def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def grace_hopper() -> np.ndarray:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def photos() -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, landmarks) of the two real faces."""
    return [(astronaut(), ASTRONAUT_LANDMARKS), (grace_hopper(), GRACE_HOPPER_LANDMARKS)]


def aligned_crops() -> np.ndarray:
    """``(2, 112, 112, 3)`` uint8: the two photos aligned by facevib.align."""
    return np.stack([norm_crop(photo, landmarks) for photo, landmarks in photos()])


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def torch_embeddings(model: nn.Module, crops: np.ndarray) -> np.ndarray:
    """The eval-mode PyTorch model's raw embeddings of uint8 RGB crops (training's normalisation)."""
    model.eval()
    with torch.no_grad():
        return model(images_to_tensor(crops)).numpy().astype(np.float64)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@dataclass(frozen=True)
class ServeModels:
    """The models of the server tests."""

    model: nn.Module  # the tiny r18 (PyTorch reference)
    plain: Path  # its ONNX file as exported
    calibrated: Path  # the same file with a calibration in its metadata
    threshold: float  # the calibrated threshold (between the two photos' score and 1)
    target_fpr: float
    slower: Path  # a heavier model for the overload test


_MODELS: ServeModels | None = None


def serve_models() -> ServeModels:
    """Export the test models once per process (into a temporary folder)."""
    global _MODELS
    if _MODELS is None:
        folder = Path(tempfile.mkdtemp(prefix="facevib-serve-"))
        torch.manual_seed(0)
        model = create_model("r18", **TINY).eval()
        plain = export_onnx(model, folder / "tiny.onnx", dynamo=False)
        emb = unit(torch_embeddings(model, aligned_crops()))
        cross = float(emb[0] @ emb[1])
        threshold = round((cross + 1.0) / 2.0, 6)  # the two photos do not match; a photo matches itself
        calibrated = with_calibration(model, plain, folder / "tiny_calibrated.onnx", threshold, 1e-4)
        torch.manual_seed(1)
        slower = export_onnx(create_model("r18", **SLOWER).eval(), folder / "slower.onnx", dynamo=False)
        _MODELS = ServeModels(model, plain, calibrated, threshold, 1e-4, slower)
    return _MODELS


def with_calibration(
    model: nn.Module, src: Path, dst: Path, threshold: float, target_fpr: float, protocol: str = "single_image"
) -> Path:
    """A copy of ``src`` whose metadata carries a known calibration (as `--calibrate` would write)."""
    from facevib.export import build_metadata, write_metadata
    from facevib.onnx_meta import Calibration

    calibration = Calibration(threshold, target_fpr, 0.0, 0.9, 20_000, 3_000, True, "tests", protocol=protocol)
    return write_metadata(src, build_metadata(model, calibration=calibration), out=dst)


@contextmanager
def running_server(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python serve/app.py ARGS --port P`` (or ``uvicorn --factory facevib.serve:create_app`` when the
    first arg is ``"uvicorn"``) on 127.0.0.1; yields (base URL, process) once /health is 200."""
    from conftest import _free_port, _terminate_tree

    port = _free_port()
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if args and args[0] == "uvicorn":  # the factory, configured by FACEVIB_* variables only
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "facevib.serve:create_app", *args[1:]]
    else:
        cmd = [sys.executable, str(ROOT / "serve" / "app.py"), *args]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc, timeout, poll_s=0.2)
        except RuntimeError as err:
            log.seek(0)
            raise RuntimeError(f"{err}:\n{log.read()[-4000:]}") from None
        proc.log = log  # type: ignore[attr-defined]
        yield url, proc
    finally:
        _terminate_tree(proc)
        log.close()


def server_log(proc: subprocess.Popen) -> str:
    log = proc.log  # type: ignore[attr-defined]
    log.flush()
    log.seek(0)
    return log.read()


def fuzz_no_server_errors(url: str, operations: list, max_examples: int) -> list[int]:
    """Call each schemathesis ``operation`` on the server at ``url`` with up to ``max_examples``
    generated requests (derandomised: the same requests every run); fail on any 5xx, and
    return every status code seen."""
    import hypothesis

    seen: list[int] = []
    for operation in operations:

        @hypothesis.settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=url, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            )

        check()
    return seen
