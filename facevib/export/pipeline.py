"""``export_model``: a checkpoint in, a self-describing ONNX file (and a Triton repository) out.

What ``python -m facevib.export`` runs: load the backbone (:func:`facevib.models.load_backbone`,
the rules of ``eval/*.py --model``), export the graph (:func:`facevib.export.export_onnx`),
optionally calibrate a threshold on the written file (:func:`facevib.export.calibrate`),
store the metadata (:mod:`facevib.onnx_meta`) and write the Triton repository.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from facevib.engine.reader import read_checkpoint
from facevib.eval.embed import Embedder
from facevib.export.calibrate import calibrate, calibrate_identification
from facevib.export.graph import export_onnx, insightface_problems
from facevib.export.metadata import build_metadata, external_data_files, write_metadata
from facevib.export.precision import FP16_MIN_COSINE, ParityCrops, measure_parity, parity_crops
from facevib.export.triton import check_triton_settings, write_triton_repository
from facevib.models.loading import model_from_checkpoint
from facevib.onnx_meta import PROTOCOLS, ModelMetadata, Precision

__all__ = ["ExportResult", "export_model"]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote.

    ``insightface_problems`` lists why insightface-style clients would not take the file as
    a drop-in (empty for the default file; the ``--uncertainty`` file has two outputs).
    ``calibration_backend`` says what ran the calibration (e.g. a CPU fallback), None without one.
    """

    path: Path
    metadata: ModelMetadata
    insightface_problems: list[str]
    triton_dir: Path | None
    calibration_backend: str | None = None


def export_model(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    network: str | None = None,
    uncertainty: bool = False,
    quality: str | None = None,
    quality_file: str | os.PathLike | None = None,
    calibration_data: str | os.PathLike | None = None,
    target_fpr: float = 1e-4,
    calibration_protocol: str = "single_image",
    calibration_images: int = 4000,
    device: str = "auto",
    progress: bool = True,
    identification_data: str | os.PathLike | None = None,
    target_fpir: float = 1e-2,
    triton_repo: str | os.PathLike | None = None,
    triton_name: str | None = None,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 5000,
    dynamo: bool = True,
    opset: int = 18,
    fp16: bool = False,
    parity_data: str | os.PathLike | None = None,
    fp16_min_cosine: float = FP16_MIN_COSINE,
) -> ExportResult:
    """Export the backbone at ``model_path`` to the ONNX file ``out``, with its metadata.

    Args:
        model_path: a facevib checkpoint or ``backbone.pt``, or a plain state_dict such as
            arcface_torch's ``backbone.pth`` (then ``network`` names the model, e.g. ``"r100"``).
        out: the ONNX file to write.
        uncertainty: add the ``uncertainty`` output (cellVIB and Deep VIB models).
        quality, quality_file: add the ``quality`` output, candidate ``quality`` of the heads
            file ``quality_file`` written by ``benchmarks/quality.py``
            (:func:`facevib.quality.served.load_quality`); its definition goes into the metadata.
        calibration_data: labelled faces (``.bin`` files, an IJB, RecordIO or image folder);
            the threshold at ``target_fpr`` is measured on the written file and stored
            (:func:`facevib.export.calibrate`, with ``calibration_protocol``, at most
            ``calibration_images`` images, a progress bar when ``progress``).
        device: where calibration runs the written file (``"cpu"``, ``"cuda[:N]"``, or
            ``"auto"``: ONNX Runtime's CUDA provider when this build has one).
        identification_data: an IJB folder with 1:N files; the open-set threshold at
            ``target_fpir`` is measured on the written file and stored
            (:func:`facevib.export.calibrate_identification`).
        triton_repo: also write a Triton model repository there, model ``triton_name``
            (default: the stem of ``out``), with ``max_batch_size`` and
            ``max_queue_delay_us`` for its dynamic batcher.
        dynamo, opset: exporter choice (see :mod:`facevib.export.graph`).
        fp16: write a float16 graph (float32 input and outputs) and check it against the
            float32 graph on the aligned crops of ``parity_data`` (default: ``calibration_data``)
            on ``device`` (:mod:`facevib.export.precision`); refused, and nothing written, when
            the smallest cosine is below ``fp16_min_cosine``. Calibration then measures the
            float16 file, which is what is served.

    Raises:
        FileNotFoundError: the checkpoint or the calibration data is missing.
        ValueError: any other user mistake, named (bad checkpoint, model without sigma
            branches for ``uncertainty``, bad FPR or Triton setting).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target FPR must be in (0, 1), got {target_fpr}")
    if calibration_protocol not in PROTOCOLS:
        raise ValueError(f"calibration protocol must be one of {', '.join(PROTOCOLS)}, got {calibration_protocol!r}")
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"target FPIR must be in (0, 1), got {target_fpir}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"output file must end in .onnx, got {out}")
    if triton_repo is not None:
        check_triton_settings(triton_name or out.stem, max_batch_size, max_queue_delay_us)
    if parity_data is not None and not fp16:
        raise ValueError("parity data is only used by the float16 export (fp16)")
    if (quality is None) != (quality_file is None):
        raise ValueError("a quality output needs both the candidate name and the quality heads file")
    parity_data = parity_data if parity_data is not None else calibration_data
    if fp16 and parity_data is None:
        raise ValueError(
            "the float16 export is checked against the float32 graph on aligned face crops: give a labelled set "
            "(--parity-data DATA, or --calibrate DATA)"
        )
    crops = parity_crops(parity_data) if fp16 else None  # read first: bad data fails before any export
    checkpoint = read_checkpoint(model_path, what="backbone checkpoint", plain_ok=True)
    model = model_from_checkpoint(checkpoint, name=network)
    config = checkpoint.config
    quality_module, quality_definition = None, None
    if quality is not None:
        from facevib.quality.served import load_quality

        quality_module, quality_definition = load_quality(quality_file, quality, int(model.embedding_dim))
    export_onnx(model, out, uncertainty=uncertainty, quality=quality_module, dynamo=dynamo, opset=opset, fp16=fp16)
    precision = Precision()
    if crops is not None:
        precision = _checked_fp16(model, out, crops, uncertainty, dynamo, opset, device, fp16_min_cosine)
    metadata = dataclasses.replace(
        build_metadata(model, config=config, uncertainty=uncertainty, quality=quality_definition), precision=precision
    )
    calibration_backend = None
    if calibration_data is not None:
        embedder = Embedder.from_onnx(out, device=device)
        measured = calibrate(
            embedder,
            calibration_data,
            target_fpr,
            protocol=calibration_protocol,
            max_images=calibration_images,
            progress=progress,
        )
        calibration_backend = embedder.backend
        metadata = dataclasses.replace(metadata, calibration=measured)
    if identification_data is not None:
        open_set = calibrate_identification(Embedder.from_onnx(out, device=device), identification_data, target_fpir)
        metadata = dataclasses.replace(metadata, identification=open_set)
    write_metadata(out, metadata)
    problems = insightface_problems(out)
    if not uncertainty and quality is None and problems:  # the default file's contract; a failure here is a bug
        raise AssertionError(f"{out}: the default export is not an insightface drop-in: {problems}")
    triton_dir = None
    if triton_repo is not None:
        triton_dir = write_triton_repository(
            out,
            triton_repo,
            triton_name or out.stem,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
        )
    return ExportResult(
        path=out,
        metadata=metadata,
        insightface_problems=problems,
        triton_dir=triton_dir,
        calibration_backend=calibration_backend,
    )


def _checked_fp16(
    model: nn.Module,
    out: Path,
    crops: ParityCrops,
    uncertainty: bool,
    dynamo: bool,
    opset: int,
    device: str,
    bound: float,
) -> Precision:
    """The float16 file ``out``'s precision, its parity measured against a float32 export of
    ``model`` written to a temporary folder; ``out`` (and its sidecars) removed when refused.

    Raises:
        ValueError: the smallest cosine is below ``bound`` (the message gives the figures).
    """
    with tempfile.TemporaryDirectory(prefix="facevib-fp32-") as folder:
        reference = export_onnx(model, Path(folder) / "fp32.onnx", uncertainty=uncertainty, dynamo=dynamo, opset=opset)
        parity = measure_parity(reference, out, crops, device=device, bound=bound)
    if parity.min_cosine < bound:
        for path in [*external_data_files(out), out]:
            path.unlink(missing_ok=True)
        raise ValueError(
            f"float16 export refused: the smallest cosine between float16 and float32 embeddings of {parity.images} "
            f"crops is {parity.min_cosine:.6f} (mean {parity.mean_cosine:.6f}) on {parity.provider}, below the bound "
            f"{bound:g}; nothing was written to {out}"
        )
    return Precision(weights="float16", io="float32", parity=parity)
