"""Talk to a facevib server the way a client would, and keep a transcript.

:func:`run_exchange` sends, over real HTTP:

* ``GET /health`` and ``GET /v1/info``;
* ``POST /v1/verify`` with a genuine and an impostor pair of held-out IJB loose crops, each
  image with its 5 detector landmarks (the server aligns them, as it would a client's photo);
* ``POST /v1/embed`` with a real photo that ships inside scikit-image
  (``skimage.data.astronaut()``, NASA's portrait of Eileen Collins) and its 5 landmarks; when
  ``/v1/info`` names a face detector, the same photo once more without landmarks, recording
  the detected points and the cosine between the two embeddings.

Pairs come from the IJB protocol files themselves (:func:`protocol_pairs`): the first image
of each template of a genuine and of an impostor template pair. The transcript keeps every
request as sent, except that base64 image data is summarised (its size and a SHA-256 prefix)
and embeddings are cut to their first values, so that it stays readable.

:class:`ServerProcess` starts ``serve/app.py`` on a free local port, waits for ``/health``
and stops the server on exit; pointing :func:`run_exchange` at any other running server
works the same.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facevib.data.ijb import IJBSet
from facevib.serve.launch import free_port, wait_healthy

__all__ = ["ASTRONAUT_LANDMARKS", "ImageRef", "protocol_pairs", "run_exchange", "ServerProcess", "free_port"]

# The 5 ArcFace points (eye centres, nose tip, mouth corners) of skimage.data.astronaut(),
# located by eye on the 512 x 512 image and checked by aligning it with facevib.align.norm_crop.
ASTRONAUT_LANDMARKS = ((202.7, 100.7), (246.7, 103.3), (224.3, 125.0), (205.0, 141.7), (242.7, 142.7))
_SHOWN_VALUES = 4  # embedding values kept in the transcript


@dataclass(frozen=True)
class ImageRef:
    """An image file, the landmarks to align it with, and a name for the transcript."""

    path: Path
    landmarks: np.ndarray  # (5, 2) pixels
    name: str


def protocol_pairs(ijb: IJBSet) -> dict[str, tuple[ImageRef, ImageRef]]:
    """``{"genuine": (a, b), "impostor": (a, b)}``: the first image of each template of the
    first genuine and the first impostor pair listed in the IJB pair file."""
    first_row: dict[int, int] = {}
    for row, template in enumerate(ijb.templates.tolist()):
        first_row.setdefault(int(template), row)

    def ref(template: int) -> ImageRef:
        row = first_row[template]
        name = str(ijb.image_names[row])
        return ImageRef(ijb.image_dir / name, ijb.landmarks[row], f"{ijb.target} template {template}, {name}")

    pairs = {}
    for kind, label in (("genuine", True), ("impostor", False)):
        index = np.flatnonzero(ijb.pair_labels == label)
        if index.size == 0:
            raise ValueError(f"{ijb.layout.root}: the pair file lists no {kind} pair")
        a, b = (int(t) for t in ijb.pair_templates[index[0]])
        pairs[kind] = (ref(a), ref(b))
    return pairs


def astronaut_photo(folder: Path) -> ImageRef:
    """``skimage.data.astronaut()`` written as a JPEG into ``folder`` (a real photo from an
    installed package, not a rendered face), with its landmarks."""
    import cv2
    from skimage import data

    path = Path(folder) / "astronaut.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode skimage's astronaut image")
    path.write_bytes(encoded.tobytes())
    return ImageRef(path, np.asarray(ASTRONAUT_LANDMARKS, dtype=np.float32), "skimage.data.astronaut() (512 x 512)")


def _image_payload(image: ImageRef) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request's image object and its transcript summary."""
    raw = image.path.read_bytes()
    landmarks = [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(image.landmarks).reshape(5, 2)]
    sent = {"data": base64.b64encode(raw).decode("ascii"), "landmarks": landmarks}
    shown = {
        "data": f"<{len(raw):,} bytes of {image.path.suffix.lstrip('.').upper()}, base64; "
        f"sha256 {hashlib.sha256(raw).hexdigest()[:12]}>",
        "landmarks": landmarks,
    }
    return sent, shown


def _shorten(value: Any) -> Any:
    """Embeddings cut to their first values, recursively."""
    if isinstance(value, dict):
        return {k: (_cut(v) if k == "embedding" else _shorten(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    return value


def _cut(values: Any) -> Any:
    if isinstance(values, list) and len(values) > _SHOWN_VALUES:
        return [round(v, 4) for v in values[:_SHOWN_VALUES]] + [f"... {len(values)} values"]
    return values


def run_exchange(
    base_url: str, pairs: dict[str, tuple[ImageRef, ImageRef]], photo: ImageRef, timeout: float = 60.0
) -> dict[str, Any]:
    """Send the requests listed in the module docstring; return the transcript.

    The transcript's ``calls`` list holds, per request, ``method``, ``path``, the names of the
    ``images`` sent, the summarised ``request`` body, the HTTP ``status`` and the (shortened) ``response``; ``verify`` maps
    ``genuine``/``impostor`` to the score, threshold and match of that pair; ``photo`` holds
    the embedding norm, uncertainty and size of the real photo.

    Raises:
        RuntimeError: a request failed (status and body in the message).
    """
    import httpx

    calls: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, timeout=timeout) as client:

        def call(
            method: str, path: str, body: dict[str, Any] | None = None, shown: Any = None, images: Sequence[str] = ()
        ) -> dict[str, Any]:
            started = time.perf_counter()
            response = client.request(method, path, json=body)
            elapsed = (time.perf_counter() - started) * 1000.0
            try:
                payload = response.json()
            except ValueError:
                payload = {"text": response.text[:500]}
            calls.append(
                {
                    "method": method,
                    "path": path,
                    "images": list(images),
                    "request": shown,
                    "status": response.status_code,
                    "ms": round(elapsed, 1),
                    "response": _shorten(payload),
                }
            )
            if response.status_code != 200:
                raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
            return payload

        call("GET", "/health")
        info = call("GET", "/v1/info")
        verify = {}
        for kind, (a, b) in pairs.items():
            (sent_a, shown_a), (sent_b, shown_b) = _image_payload(a), _image_payload(b)
            answer = call(
                "POST", "/v1/verify", {"a": sent_a, "b": sent_b}, {"a": shown_a, "b": shown_b}, (a.name, b.name)
            )
            verify[kind] = {k: answer.get(k) for k in ("score", "threshold", "match", "threshold_source", "target_fpr")}
        sent, shown = _image_payload(photo)
        answer = call("POST", "/v1/embed", {"images": [sent]}, {"images": [shown]}, (photo.name,))
        result = answer["results"][0]
        if result.get("status") != "ok" or not result.get("faces"):
            raise RuntimeError(f"POST /v1/embed did not embed {photo.name}: {result}")
        face = result["faces"][0]
        photo_summary = {
            "image": photo.name,
            "norm": face.get("norm"),
            "uncertainty": face.get("uncertainty"),
            "dimensions": len(face.get("embedding", [])),
        }
        if isinstance(info, dict) and info.get("detector"):
            # The same photo without landmarks: the server's detector finds the face.
            sent = {"data": sent["data"], "aligned": False}
            shown = {"data": shown["data"], "aligned": False}
            answer = call("POST", "/v1/embed", {"images": [sent]}, {"images": [shown]}, (photo.name + ", detector",))
            detected = answer["results"][0]
            if detected.get("status") == "ok" and detected.get("faces"):
                found = detected["faces"][0]
                cosine = float(np.dot(found["embedding"], face["embedding"]))  # both L2-normalised
                detector = info["detector"]
                photo_summary["detected"] = {
                    "detector": detector.get("name", "detector") if isinstance(detector, dict) else str(detector),
                    "landmarks": found.get("landmarks"),
                    "det_score": found.get("det_score"),
                    "cosine_to_given_landmarks": cosine,
                }
    return {
        "base_url": base_url,
        "model": info.get("model") if isinstance(info, dict) else None,
        "calls": calls,
        "verify": verify,
        "photo": photo_summary,
    }


class ServerProcess:
    """``python serve/app.py --model MODEL`` on ``127.0.0.1`` and a free port, as a context
    manager: ``__enter__`` returns the base URL once ``/health`` answers 200; ``__exit__``
    stops the server (SIGTERM, then SIGKILL after ``stop_timeout`` seconds).

    Raises:
        FileNotFoundError: ``serve/app.py`` is not next to this package (an installed wheel
            without the repository's entry points) or the model does not exist.
        RuntimeError: the server exited or did not become healthy within ``start_timeout``
            seconds (its last output lines in the message).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        extra_args: Sequence[str] = (),
        start_timeout: float = 90.0,
        stop_timeout: float = 15.0,
        log_path: str | os.PathLike | None = None,
    ) -> None:
        self.model = Path(model)
        if not self.model.is_file():
            raise FileNotFoundError(f"model {self.model} does not exist")
        self.script = Path(__file__).resolve().parents[2] / "serve" / "app.py"
        if not self.script.is_file():
            raise FileNotFoundError(f"{self.script} does not exist: run from a checkout of the repository")
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_path = Path(log_path) if log_path else None
        self.port = 0
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the server (what the transcript records)."""
        return [
            sys.executable,
            str(self.script),
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def __enter__(self) -> str:
        self.port = free_port()
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        sink = self._log if self._log is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(self.command(), stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.url, self._process, self.start_timeout)
        except RuntimeError as err:
            self._stop()
            raise RuntimeError(f"{err}: {self._tail()}") from None
        return self.url

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self, lines: int = 15) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no server log kept)"
        return " | ".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
