"""Export a backbone to ONNX for serving: the graph, its metadata, a threshold, a Triton repository.

* :func:`export_onnx` writes the graph: input ``data`` (N, 3, S, S) float32 RGB normalised as
  in training (``(pixel - 127.5) / 127.5``) with a dynamic N, output ``embedding`` (N, D), not
  normalised and with no normalisation inside the graph, the drop-in for insightface-style
  clients (:func:`insightface_problems` checks it); with ``uncertainty=True`` a second output
  ``uncertainty`` (N,) from the same pass (:meth:`facevib.models.IResNet.forward_with_uncertainty`).
* :func:`build_metadata` / :func:`write_metadata` store :class:`facevib.onnx_meta.ModelMetadata`
  in the file's ``metadata_props``; the server reads it back without torch.
* :func:`calibrate` measures the cosine threshold at a target FPR on verification ``.bin``
  files or an IJB folder, with facevib.eval.
* ``fp16=True`` (``--fp16``) writes a float16 graph with the same float32 interface;
  :func:`measure_parity` compares it with the float32 graph on face crops
  (:mod:`facevib.export.precision`), and the export is refused below the bound.
* :func:`write_triton_repository` writes a Triton model repository for the same file.
* :func:`export_model` chains them: ``python -m facevib.export MODEL --out model.onnx``.
"""

from facevib.export.calibrate import calibrate, calibrate_identification, calibration_kind
from facevib.export.graph import (
    compare_onnx,
    export_onnx,
    initializer_types,
    insightface_problems,
    onnx_differences,
)
from facevib.export.metadata import (
    build_metadata,
    config_digest,
    describe_uncertainty,
    read_onnx_metadata,
    write_metadata,
)
from facevib.export.pipeline import ExportResult, export_model
from facevib.export.precision import FP16_MIN_COSINE, measure_parity, parity_crops
from facevib.export.triton import check_triton_settings, triton_config, write_triton_repository

__all__ = [
    "FP16_MIN_COSINE",
    "ExportResult",
    "build_metadata",
    "calibrate",
    "calibrate_identification",
    "calibration_kind",
    "check_triton_settings",
    "compare_onnx",
    "config_digest",
    "describe_uncertainty",
    "export_model",
    "export_onnx",
    "initializer_types",
    "insightface_problems",
    "measure_parity",
    "onnx_differences",
    "parity_crops",
    "read_onnx_metadata",
    "triton_config",
    "write_metadata",
    "write_triton_repository",
]
