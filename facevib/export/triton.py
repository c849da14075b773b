"""A Triton Inference Server model repository for an exported ONNX file.

Layout (Triton's model repository convention)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/1/model.onnx

``config.pbtxt`` uses ``platform: "onnxruntime_onnx"``, ``max_batch_size`` and tensor dims
without the batch dimension, read from the file's own graph, and Triton's dynamic batcher
(``dynamic_batching { max_queue_delay_microseconds }``): the same semantics as facevib's own
server batcher. The ``uncertainty`` output has shape ``(N,)``, nothing but the batch
dimension; Triton's convention for that is ``dims: [1]`` with ``reshape { shape: [] }``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["check_triton_settings", "triton_config", "write_triton_repository"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# ONNX TensorProto element types -> Triton data types (the ones a backbone can produce).
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}


def _tensors(
    values: Iterable[onnx.ValueInfoProto], initializers: set[str], what: str, path: Path
) -> list[tuple[str, str, list[int]]]:
    """``(name, Triton type, dims without the batch dimension)`` of graph inputs or outputs."""
    out = []
    for value in values:
        if value.name in initializers:
            continue
        elem = value.type.tensor_type.elem_type
        if elem not in _TRITON_TYPES:
            raise ValueError(f"{path}: {what} {value.name!r} has ONNX element type {elem}, not a float type")
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ValueError(f"{path}: {what} {value.name!r} has no dynamic batch dimension")
        rest = []
        for dim in dims[1:]:
            if not dim.HasField("dim_value"):
                raise ValueError(f"{path}: {what} {value.name!r} has a dynamic non-batch dimension {dim.dim_param!r}")
            rest.append(int(dim.dim_value))
        out.append((value.name, _TRITON_TYPES[elem], rest))
    return out


def _tensor_block(name: str, dtype: str, dims: list[int]) -> str:
    lines = ["  {", f'    name: "{name}"', f"    data_type: {dtype}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:  # batch-only tensor: Triton needs a non-empty shape, reshaped away
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    lines.append("  }")
    return "\n".join(lines)


def check_triton_settings(model_name: str, max_batch_size: int, max_queue_delay_us: int) -> None:
    """Raise ``ValueError`` naming the bad setting (checked before any work is done)."""
    if not _NAME.match(model_name):
        raise ValueError(f"Triton model name must be letters, digits, '_', '.', '-', got {model_name!r}")
    if max_batch_size < 1:
        raise ValueError(f"Triton max_batch_size must be >= 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise ValueError(f"Triton max_queue_delay_microseconds must be >= 0, got {max_queue_delay_us}")


def triton_config(
    onnx_path: str | os.PathLike, model_name: str, *, max_batch_size: int = 64, max_queue_delay_us: int = 5000
) -> str:
    """The ``config.pbtxt`` text for ``onnx_path`` served as ``model_name``.

    Raises:
        ValueError: a bad name or batching setting, or a graph without a dynamic batch.
    """
    import onnx

    check_triton_settings(model_name, max_batch_size, max_queue_delay_us)
    path = Path(onnx_path)
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = _tensors(graph.input, initializers, "input", path)
    outputs = _tensors(graph.output, set(), "output", path)
    return "\n".join(
        [
            f'name: "{model_name}"',
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {max_batch_size}",
            "input [",
            ",\n".join(_tensor_block(*t) for t in inputs),
            "]",
            "output [",
            ",\n".join(_tensor_block(*t) for t in outputs),
            "]",
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {max_queue_delay_us}",
            "}",
            "",
        ]
    )


def write_triton_repository(
    onnx_path: str | os.PathLike,
    repo: str | os.PathLike,
    model_name: str,
    *,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 5000,
) -> Path:
    """Write ``<repo>/<model_name>/config.pbtxt`` and copy the file to ``<repo>/<model_name>/1/model.onnx``.

    Returns:
        The model folder ``<repo>/<model_name>``.
    """
    config = triton_config(onnx_path, model_name, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us)
    folder = Path(repo) / model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(config)
    return folder
