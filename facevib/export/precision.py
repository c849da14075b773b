"""The parity check of a float16 export: its embeddings against the float32 graph's, on face crops.

``python -m facevib.export ... --fp16`` writes the float32 graph to a temporary file and the
float16 one (:func:`facevib.export.export_onnx` with ``fp16=True``) to ``--out``, embeds the same
aligned face crops with both on ONNX Runtime, once each and without flipping (what
``/v1/embed`` does), and compares them image by image by cosine. The export is refused when the
smallest cosine is below the bound (:data:`FP16_MIN_COSINE` unless the caller says otherwise) or
any float16 embedding is not finite (float16 overflows above 65504); otherwise the measured
:class:`facevib.onnx_meta.Parity` goes into the file's ``facevib.precision`` metadata. Only the
embedding output is compared (an ``uncertainty`` output is not).

What the parity measures depends on the provider, and the metadata says which ran:

* ``CUDAExecutionProvider`` has float16 kernels for every op of these graphs, so the check
  covers float16 weights and float16 arithmetic, as the server will run them.
* ``CPUExecutionProvider`` (onnxruntime 1.32 on x86-64 here) has no float16 kernels for
  ``Conv``, ``BatchNormalization``, ``PRelu`` or ``Gemm``: ONNX Runtime inserts casts and runs
  those nodes in float32 (its optimised graph shows the inserted ``Cast`` nodes), so on the CPU
  the check measures the rounding of the weights to float16, not float16 arithmetic. The float16
  file still runs on the CPU, with the same results as this check. The tests add a float16
  arithmetic check through ``onnx.reference.ReferenceEvaluator``, which computes in the graph's
  types, on a tiny model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facevib.eval.embed import Embedder
from facevib.export.labelled import calibration_kind, read_labelled_images, read_labelled_pairs
from facevib.onnx_meta import Parity

__all__ = ["FP16_MIN_COSINE", "PARITY_IMAGES", "ParityCrops", "measure_parity", "parity_crops", "provider_note"]

# Smallest per-image cosine between float16 and float32 embeddings an export accepts. At 0.999
# the two embeddings are 2.6 degrees apart at worst, far inside the spread of one person's
# single-image cosines (tenths), so a threshold calibrated on either file serves both.
FP16_MIN_COSINE = 0.999
# Crops compared: enough identities and conditions to catch a layer that overflows on some faces.
PARITY_IMAGES = 256


@dataclass(frozen=True)
class ParityCrops:
    """``images`` ``(N, H, W, 3)`` uint8 RGB aligned crops and where they came from."""

    images: np.ndarray
    source: str


def parity_crops(data: str | os.PathLike, count: int = PARITY_IMAGES, seed: int = 0) -> ParityCrops:
    """Up to ``count`` aligned face crops from a labelled set (any kind ``--calibrate`` takes):
    whole identities sampled with ``seed`` from an IJB, RecordIO or image folder, the first
    ``count`` images of the ``.bin`` pair lists.

    Raises:
        FileNotFoundError / ValueError: ``data`` holds no such set (the reader names the file).
    """
    if count < 1:
        raise ValueError(f"the parity check needs at least 1 image, got {count}")
    data = Path(data)
    kind, _ = calibration_kind(data)
    if kind == "verification":
        pairs = read_labelled_pairs(data)
        return ParityCrops(pairs.images[:count], f"the first {min(count, len(pairs.images))} images of {pairs.source}")
    faces = read_labelled_images(data, max_images=max(count, 2), seed=seed)
    return ParityCrops(faces.images[:count], f"{min(count, len(faces.images))} images of {faces.source}")


def provider_note(provider: str) -> str:
    """What ``provider`` computes when it runs a float16 graph (see the module docstring)."""
    if provider == "CUDAExecutionProvider":
        return "float16 weights and float16 arithmetic (the CUDA provider's float16 kernels)"
    return (
        f"{provider} runs float16 nodes it has no float16 kernel for in float32 after inserted casts: this "
        "measures the weights' rounding to float16; rerun the export with --device cuda on a GPU host to "
        "measure float16 arithmetic"
    )


def measure_parity(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    crops: ParityCrops,
    *,
    device: str = "auto",
    bound: float = FP16_MIN_COSINE,
) -> Parity:
    """Per-image cosines between the embeddings of ``reference`` (float32) and ``candidate`` (float16).

    Both files run on ONNX Runtime on ``device`` (:meth:`Embedder.from_onnx`); the result names
    the candidate's provider. A non-finite candidate embedding counts as cosine -1.

    Raises:
        ValueError: the two files' embeddings differ in shape, or ``bound`` is outside [-1, 1].
    """
    if not -1.0 <= bound <= 1.0:
        raise ValueError(f"the parity bound is a cosine in [-1, 1], got {bound}")
    embedders = [Embedder.from_onnx(path, device=device) for path in (reference, candidate)]
    expected, got = (embedder.embed(crops.images).astype(np.float64) for embedder in embedders)
    if expected.shape != got.shape:
        raise ValueError(f"{candidate}: embeddings of shape {got.shape}, the float32 graph gives {expected.shape}")
    norms = [np.linalg.norm(rows, axis=1) for rows in (expected, got)]
    finite = np.isfinite(got).all(axis=1) & (norms[1] > 0)
    products = np.sum(expected * np.where(finite[:, None], got, 0.0), axis=1)
    cosines = np.where(finite, products / (norms[0] * np.where(finite, norms[1], 1.0)), -1.0)
    provider = embedders[1].backend.partition(":")[2].split(" ")[0] or embedders[1].backend  # "onnxruntime:<name>"
    return Parity(
        images=int(len(cosines)),
        min_cosine=float(np.clip(cosines.min(), -1.0, 1.0)),
        mean_cosine=float(np.clip(cosines.mean(), -1.0, 1.0)),
        bound=float(bound),
        provider=provider,
        source=crops.source,
        note=provider_note(provider),
    )
