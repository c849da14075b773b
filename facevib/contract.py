"""The face contract: what a facevib network takes in and gives out, defined once.

Alignment (:mod:`facevib.align`), the training transform (:mod:`facevib.data.transforms`),
the ONNX metadata (:mod:`facevib.onnx_meta`), export and serving all read these values from
here. The module uses only the standard library, because the serving image has neither torch,
onnx nor numpy-based alignment code on the import path of the metadata reader.

* Input: one tensor named :data:`INPUT_NAME`, ``(N, 3, S, S)`` float32 RGB NCHW, each pixel
  ``(pixel - MEAN) / STD`` per channel on the 0-255 scale (insightface's convention).
* Crops: faces warped so their 5 landmarks land on the ArcFace template
  (:func:`arcface_template`), defined for S a multiple of 112 or of 128.
* Outputs: :data:`EMBEDDING_OUTPUT` ``(N, D)`` (not normalised), and optionally
  :data:`UNCERTAINTY_OUTPUT` ``(N,)`` and :data:`QUALITY_OUTPUT` ``(N,)`` in [0, 1], in that order.
* Metadata: string key/value pairs under :data:`METADATA_PREFIX` (:data:`METADATA_KEYS`).
"""

from __future__ import annotations

__all__ = [
    "ALIGNMENT",
    "ARCFACE_TEMPLATE_112",
    "COLOR",
    "EMBEDDING_OUTPUT",
    "INPUT_NAME",
    "LAYOUT",
    "MEAN",
    "METADATA_KEYS",
    "METADATA_PREFIX",
    "SCHEMA_VERSION",
    "STD",
    "QUALITY_OUTPUT",
    "UNCERTAINTY_OUTPUT",
    "arcface_template",
]

# Left eye, right eye, nose tip, left mouth corner, right mouth corner, in pixels of a
# 112x112 crop ("left" is the subject's right eye as seen in the image: smaller x).
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
ALIGNMENT = "arcface_5pt"

# Per-channel mean and standard deviation on the 0-255 scale: input = (pixel - MEAN) / STD,
# which is (x / 255 - 0.5) / 0.5 = x / 127.5 - 1.
MEAN: tuple[float, float, float] = (127.5, 127.5, 127.5)
STD: tuple[float, float, float] = (127.5, 127.5, 127.5)
COLOR = "RGB"
LAYOUT = "NCHW"

INPUT_NAME = "data"
EMBEDDING_OUTPUT = "embedding"
UNCERTAINTY_OUTPUT = "uncertainty"
QUALITY_OUTPUT = "quality"

METADATA_PREFIX = "facevib."
SCHEMA_VERSION = "1"
# ModelMetadata field -> metadata key (the version field's key is "facevib.version").
METADATA_KEYS: dict[str, str] = {
    name: METADATA_PREFIX + ("version" if name == "facevib_version" else name)
    for name in (
        "facevib_version",
        "model_name",
        "arch",
        "embedding_dim",
        "input_size",
        "preprocess",
        "config_digest",
        "outputs",
        "uncertainty",
        "quality",
        "calibration",
        "identification",
        "precision",
    )
}


def arcface_template(size: int = 112) -> list[list[float]]:
    """The 5-point template, ``[[x, y], ...]`` in pixels of a ``size`` x ``size`` crop.

    The 112 template is scaled by ``size / 112`` when ``size`` is a multiple of 112; when it is
    a multiple of 128 it is scaled by ``size / 128`` and shifted right by ``8 * size / 128``
    (the 128-pixel crop is the 112 template with 8 pixels of margin each side, as arcface_torch
    builds its 128 crops).

    Raises:
        ValueError: ``size`` is not a multiple of 112 or of 128.
    """
    if size % 112 == 0:
        scale, shift = size / 112.0, 0.0
    elif size % 128 == 0:
        scale, shift = size / 128.0, 8.0 * size / 128.0
    else:
        raise ValueError(f"size {size} is neither a multiple of 112 nor of 128 (the arcface template sizes)")
    return [[x * scale + shift, y * scale] for x, y in ARCFACE_TEMPLATE_112]
