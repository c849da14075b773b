"""Export a backbone to ONNX: input ``data`` (N, 3, H, W) with dynamic N, one embedding output.

The model is exported in eval mode, where VIB cells return their mean: the sigma branches do
not contribute to the output, so the graph holds the deterministic-mean model only (the
exporter drops the unused branches).

Exporter choice: torch >= 2.9 (so both tested versions, 2.11 and 2.13) defaults
``torch.onnx.export`` to the ``torch.export``-based exporter (``dynamo=True``, needs
``onnxscript``; produces opset >= 18). That is the default here too, because the
TorchScript-based exporter (``dynamo=False``) is deprecated and warns on every call in
2.13. ``dynamo=False`` stays available: it is ~10x faster to run and can target opset 17
for older runtimes. Both produce the same interface and are checked by the tests.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "compare_onnx"]

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"


def _input_size(model: nn.Module, input_size: int | None) -> int:
    if input_size is not None:
        return int(input_size)
    config = getattr(model, "config", None)
    return int(getattr(config, "input_size", 112))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    input_size: int | None = None,
    dynamo: bool = True,
) -> Path:
    """Write ``model`` as an ONNX file and check it.

    Args:
        model: a backbone ``(N, 3, S, S) -> (N, D)``; exported in eval mode, on its current
            device, and its train/eval mode is restored afterwards.
        path: output file (parent folders are created).
        opset: ONNX opset (the dynamo exporter needs >= 18).
        input_size: ``S``; default ``model.config.input_size`` or 112.
        dynamo: use the ``torch.export``-based exporter (see the module docstring).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: the model's output is not one ``(N, D)`` tensor, ``opset`` is too low for
            the exporter, or the written graph fails ``onnx.checker`` or the interface check.
    """
    if dynamo and opset < 18:
        raise ValueError(f"the dynamo exporter needs opset >= 18, got {opset} (use dynamo=False for older opsets)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = _input_size(model, input_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(2, 3, size, size, device=device)  # batch 2: batch 1 would be specialised
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model must map (N, 3, {size}, {size}) to one (N, D) tensor, got {got}")
        common = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
        with warnings.catch_warnings():
            if dynamo:
                # torch's own pytree code warns about its LeafSpec API while exporting (2.13).
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    model, (example,), str(path), dynamic_shapes=({0: batch},), dynamo=True, verbose=False, **common
                )
            else:
                # The deprecation notice of the TorchScript exporter (the choice was explicit),
                # and the tracer's notes on Python-level flags that are constant in eval mode.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                torch.onnx.export(model, (example,), str(path), dynamic_axes=axes, dynamo=False, **common)
    finally:
        model.train(was_training)
    _check_graph(path, size, int(out.shape[1]))
    return path


def _check_graph(path: Path, size: int, embedding_dim: int) -> None:
    """onnx.checker plus the serving interface: one ``data`` input, one ``(N, D)`` output."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"{path}: exported graph fails onnx.checker ({err})") from err
    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    inputs = [(v.name, dims(v)) for v in graph.input]
    outputs = [(v.name, dims(v)) for v in graph.output]
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1][1:] != [3, size, size]:
        raise ValueError(f"{path}: expected one input {INPUT_NAME!r} (N, 3, {size}, {size}), got {inputs}")
    if isinstance(inputs[0][1][0], int) and inputs[0][1][0] > 0:
        raise ValueError(f"{path}: the batch dimension of {INPUT_NAME!r} is fixed to {inputs[0][1][0]}")
    if len(outputs) != 1 or len(outputs[0][1]) != 2 or outputs[0][1][1] != embedding_dim:
        raise ValueError(f"{path}: expected one (N, {embedding_dim}) output, got {outputs}")


def compare_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 5),
    *,
    seed: int = 0,
    input_size: int | None = None,
) -> float:
    """Largest absolute difference between ONNX Runtime (CPU) and the eval-mode model.

    Inputs are uniform in [-1, 1] (the normalised pixel range), one batch per size.
    """
    import onnxruntime as ort

    size = _input_size(model, input_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for batch in batch_sizes:
            x = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
            with torch.no_grad():
                expected = model(x.to(device)).float().cpu().numpy()
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
            if got.shape != expected.shape:
                raise ValueError(f"{path}: ONNX output {got.shape} for batch {batch}, PyTorch {expected.shape}")
            worst = max(worst, float(np.abs(got - expected).max()))
    finally:
        model.train(was_training)
    return worst
