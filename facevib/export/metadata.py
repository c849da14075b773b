"""Build a model's :class:`facevib.onnx_meta.ModelMetadata` and write it into / read it from an ONNX file.

The contract itself (keys, JSON values, validation) lives in :mod:`facevib.onnx_meta`, which
the server imports without torch or onnx; this module adds what needs the model or the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

import facevib
from facevib.contract import EMBEDDING_OUTPUT, METADATA_PREFIX, QUALITY_OUTPUT, UNCERTAINTY_OUTPUT
from facevib.onnx_meta import (
    Calibration,
    ModelMetadata,
    default_preprocess,
)

__all__ = [
    "build_metadata",
    "config_digest",
    "describe_uncertainty",
    "external_data_files",
    "read_onnx_metadata",
    "write_metadata",
]


def config_digest(config: Mapping[str, Any] | None) -> str | None:
    """sha256 (hex) of the resolved training config as canonical JSON, or None without one.

    Canonical JSON: keys sorted, separators ``(",", ":")``, ASCII only, tuples as lists, so
    the same config gives the same digest whatever wrote it. An empty config counts as none.
    """
    if not config:
        return None
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the checkpoint's 'config' is not JSON-serialisable ({err})") from err
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def describe_uncertainty(model: nn.Module) -> dict[str, Any]:
    """What the ``uncertainty`` output of ``model`` is, as stored under ``facevib.uncertainty``.

    See :meth:`facevib.models.IResNet.forward_with_uncertainty` for the definition.
    """
    cells = list(getattr(model, "uncertainty_cells", ()))
    if cells:
        source = {"kind": "cell", "blocks": cells}
        statistic = (
            "mean over the scored cells (equal weight) of the mean over all C*H*W elements of log sigma, "
            "sigma = softplus(F_sigma(x) + b)"
        )
    else:
        source = {"kind": "embedding"}
        statistic = "mean over the embedding dimensions of log sigma, sigma = softplus(F_sigma(h) + b)"
    return {
        "definition": "mean_log_sigma",
        "statistic": statistic,
        "source": source,
        "units": "nats (natural log of a standard deviation)",
        "direction": "higher = less certain",
        "flip": False,
    }


def build_metadata(
    model: nn.Module,
    *,
    config: Mapping[str, Any] | None = None,
    uncertainty: bool = False,
    calibration: Calibration | None = None,
    input_size: int | None = None,
    quality: dict[str, Any] | None = None,
) -> ModelMetadata:
    """The metadata of ``model`` exported by :func:`facevib.export.export_onnx`.

    Args:
        model: a facevib backbone (its ``arch`` gives the name and architecture).
        config: the resolved training config from the checkpoint (hashed, not stored).
        uncertainty: the file has the ``uncertainty`` output.
        calibration: a measured threshold (:func:`facevib.export.calibrate`).
        input_size: crop side; default ``model.config.input_size`` or 112.
        quality: the definition of the file's ``quality`` output (None: no such output).
    """
    arch = getattr(model, "arch", None)
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        arch = {"name": type(model).__name__, "kwargs": {}}
    size = int(input_size if input_size is not None else getattr(getattr(model, "config", None), "input_size", 112))
    embedding_dim = getattr(model, "embedding_dim", None)
    if not isinstance(embedding_dim, int):
        raise ValueError(f"model {arch['name']!r} does not report its embedding_dim")
    return ModelMetadata(
        facevib_version=facevib.__version__,
        model_name=arch["name"],
        arch=json.loads(json.dumps(dict(arch))),  # plain JSON types (tuples become lists)
        embedding_dim=embedding_dim,
        input_size=size,
        preprocess=default_preprocess(size),
        config_digest=config_digest(config),
        outputs=[EMBEDDING_OUTPUT] + [UNCERTAINTY_OUTPUT] * uncertainty + [QUALITY_OUTPUT] * (quality is not None),
        uncertainty=describe_uncertainty(model) if uncertainty else None,
        calibration=calibration,
        quality=quality,
    )


def write_metadata(path: str | os.PathLike, metadata: ModelMetadata, out: str | os.PathLike | None = None) -> Path:
    """Store ``metadata`` in the ``metadata_props`` of the ONNX file ``path`` (or a copy at ``out``).

    Earlier ``facevib.*`` entries are replaced; other tools' entries are kept. The file is
    written to a temporary name and renamed, so a reader never sees half a file.

    Raises:
        ValueError: the graph's outputs are not ``metadata.outputs``.
    """
    import onnx

    path = Path(path)
    target = Path(out) if out is not None else path
    sidecars = external_data_files(path)
    proto = onnx.load(str(path))  # external weights (torch's exporter writes <file>.data) are read in
    names = [o.name for o in proto.graph.output]
    if names != metadata.outputs:
        raise ValueError(f"{path}: graph outputs {names} differ from the metadata's outputs {metadata.outputs}")
    kept = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del proto.metadata_props[:]
    for key, value in kept + sorted(metadata.to_props().items()):
        proto.metadata_props.add(key=key, value=value)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        onnx.save(proto, temporary)  # one self-contained file: what a server or Triton copies
        # mkstemp creates the file 0600; give it the source file's permissions instead.
        shutil.copymode(path, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if target == path:  # the weights now live inside the file: its old sidecars are stale
        for sidecar in sidecars:
            sidecar.unlink(missing_ok=True)
    return target


def external_data_files(path: Path) -> list[Path]:
    """The files that hold ``path``'s externally stored tensors (none when all are inline)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [path.parent / location for location in sorted(locations)]


def read_onnx_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The facevib metadata of an ONNX file, read with ``onnx`` (the server uses ONNX Runtime).

    Raises:
        facevib.onnx_meta.MissingMetadataError: the file has no facevib metadata.
        facevib.onnx_meta.MetadataError: malformed metadata (the key is named).
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
