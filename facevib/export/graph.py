"""The ONNX graph of a backbone: input ``data`` (N, 3, S, S) with dynamic N, the embedding output,
and optionally a per-image ``uncertainty`` output and a per-image ``quality`` output (a module
after the embedding, :mod:`facevib.quality.served`) from the same pass.

The model is exported in eval mode, where VIB cells return their mean: the sigma branches do
not contribute to the embedding, so the default graph holds the deterministic-mean model only
(the exporter drops the unused branches). With ``uncertainty=True`` the graph is
:meth:`facevib.models.IResNet.forward_with_uncertainty`: the scored cells' sigma branches are
in it too, and both outputs come from one run.

Exporter choice: torch >= 2.9 (so both tested versions, 2.11 and 2.13) defaults
``torch.onnx.export`` to the ``torch.export``-based exporter (``dynamo=True``, needs
``onnxscript``; produces opset >= 18). That is the default here too, because the
TorchScript-based exporter (``dynamo=False``) is deprecated and warns on every call in
2.13. ``dynamo=False`` stays available: it is ~10x faster to run and can target opset 17
for older runtimes. Both produce the same interface and are checked by the tests.

:func:`insightface_problems` checks a written graph against the rules insightface's model
router and its ``ArcFaceONNX`` wrapper apply to a recognition model, so the default file is a
drop-in for insightface-style clients.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from facevib.contract import EMBEDDING_OUTPUT, INPUT_NAME, QUALITY_OUTPUT, UNCERTAINTY_OUTPUT

if TYPE_CHECKING:
    import onnx

__all__ = [
    "export_onnx",
    "initializer_types",
    "onnx_differences",
    "compare_onnx",
    "insightface_problems",
]

# insightface's ArcFaceONNX looks for normalisation ops among the first 8 node names.
_INSIGHTFACE_SCANNED_NODES = 8


class _EmbeddingAndExtras(nn.Module):
    """``x -> (embedding[, uncertainty][, quality])`` of a backbone, for tracing every output."""

    def __init__(self, backbone: nn.Module, uncertainty: bool, quality: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.uncertainty = uncertainty
        self.quality = quality

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.uncertainty:
            embedding, uncertainty = self.backbone.forward_with_uncertainty(x)
            outputs = (embedding, uncertainty)
        else:
            embedding = self.backbone(x)
            outputs = (embedding,)
        return outputs if self.quality is None else (*outputs, self.quality(embedding))


def _output_names(uncertainty: bool, quality: bool) -> list[str]:
    return [EMBEDDING_OUTPUT] + [UNCERTAINTY_OUTPUT] * uncertainty + [QUALITY_OUTPUT] * quality


class _Float16(nn.Module):
    """A float16 copy of ``module`` between casts: float32 ``x`` in, float32 outputs out.

    The casts put the graph's edges in float32, so the file is fed and read like the float32
    one (servers, Triton configs and insightface-style clients need no change), while every
    weight and every activation in between is float16.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).half()  # the caller's model stays float32

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.inner(x.half())
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def initializer_types(model: str | os.PathLike | onnx.ModelProto) -> dict[str, int]:
    """How many of the graph's floating-point weights are of each type, e.g. ``{"float16": 120}``.

    Weights are the initializers of rank >= 1; integer ones (shapes, axes) and scalar constants
    (the exporter's thresholds and clip bounds, which keep the type the model code gave them)
    are not counted."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    names = {
        onnx.TensorProto.FLOAT: "float32",
        onnx.TensorProto.FLOAT16: "float16",
        onnx.TensorProto.DOUBLE: "float64",
        onnx.TensorProto.BFLOAT16: "bfloat16",
    }
    counts: dict[str, int] = {}
    for tensor in proto.graph.initializer:
        if tensor.data_type in names and len(tensor.dims) >= 1:
            counts[names[tensor.data_type]] = counts.get(names[tensor.data_type], 0) + 1
    return counts


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
    uncertainty: bool = False,
    fp16: bool = False,
    quality: nn.Module | None = None,
) -> Path:
    """Write ``model`` as an ONNX file and check it.

    Args:
        model: a backbone ``(N, 3, S, S) -> (N, D)``; exported in eval mode, on its current
            device, and its train/eval mode is restored afterwards.
        path: output file (parent folders are created).
        opset: ONNX opset (the dynamo exporter needs >= 18).
        input_size: ``S``; default ``model.config.input_size`` or 112.
        dynamo: use the ``torch.export``-based exporter (see the module docstring).
        uncertainty: add the ``uncertainty`` (N,) output of
            ``model.forward_with_uncertainty`` (cellVIB and Deep VIB models).
        fp16: a float16 graph (weights and activations) with float32 input and outputs, cast
            at the edges (:class:`_Float16`); exported from a float16 copy of ``model``. Its
            agreement with the float32 graph is :func:`facevib.export.precision.measure_parity`'s
            business.
        quality: a module ``embedding (N, D) -> (N,)`` whose result becomes the ``quality``
            output (:func:`facevib.quality.served.load_quality`).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: the model's output is not one ``(N, D)`` tensor, ``uncertainty`` is asked
            of a model without sigma branches, ``opset`` is too low for the exporter, or the
            written graph fails ``onnx.checker`` or the interface check.
    """
    if dynamo and opset < 18:
        raise ValueError(f"the dynamo exporter needs opset >= 18, got {opset} (use dynamo=False for older opsets)")
    if uncertainty and not getattr(model, "has_uncertainty", False):
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no sigma branches, so no uncertainty output (use a cellvib_/deepvib_ model)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = _input_size(model, input_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(2, 3, size, size, device=device)  # batch 2: batch 1 would be specialised
    extras = uncertainty or quality is not None
    module = _EmbeddingAndExtras(model, uncertainty, quality) if extras else model
    if fp16:
        module = _Float16(module)
    output_names = _output_names(uncertainty, quality is not None)
    was_training = model.training
    module.eval()  # the backbone, and the wrapper around it
    try:
        with torch.no_grad():
            out = module(example)
        embedding = out[0] if extras else out
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.shape[0] != 2:
            got = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(f"model must map (N, 3, {size}, {size}) to one (N, D) tensor, got {got}")
        common = {"input_names": [INPUT_NAME], "output_names": output_names, "opset_version": opset}
        with warnings.catch_warnings():
            if dynamo:
                # torch's own pytree code warns about its LeafSpec API while exporting (2.13).
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    module, (example,), str(path), dynamic_shapes=({0: batch},), dynamo=True, verbose=False, **common
                )
            else:
                # The deprecation notice of the TorchScript exporter (the choice was explicit),
                # and the tracer's notes on Python-level flags that are constant in eval mode.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}
                torch.onnx.export(module, (example,), str(path), dynamic_axes=axes, dynamo=False, **common)
    finally:
        model.train(was_training)
    _check_graph(path, size, int(embedding.shape[1]), uncertainty, quality is not None)
    weights = initializer_types(path)
    expected = "float16" if fp16 else "float32"
    if set(weights) != {expected}:
        raise ValueError(f"{path}: expected {expected} weights only, the graph holds {weights}")
    return path


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _check_graph(path: Path, size: int, embedding_dim: int, uncertainty: bool, quality: bool = False) -> None:
    """onnx.checker plus the serving interface: one ``data`` input, ``(N, D)`` [+ ``(N,)`` ...] outputs."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"{path}: exported graph fails onnx.checker ({err})") from err
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [(v.name, _dims(v)) for v in graph.input]
    outputs = [(v.name, _dims(v)) for v in graph.output]
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1][1:] != [3, size, size]:
        raise ValueError(f"{path}: expected one input {INPUT_NAME!r} (N, 3, {size}, {size}), got {inputs}")
    if isinstance(inputs[0][1][0], int) and inputs[0][1][0] > 0:
        raise ValueError(f"{path}: the batch dimension of {INPUT_NAME!r} is fixed to {inputs[0][1][0]}")
    names = _output_names(uncertainty, quality)
    expected = [(name, 2 if name == EMBEDDING_OUTPUT else 1) for name in names]
    if [(name, len(dims)) for name, dims in outputs] != expected or outputs[0][1][1] != embedding_dim:
        want = f"({EMBEDDING_OUTPUT!r} (N, {embedding_dim})" + "".join(f", {n!r} (N,)" for n in names[1:]) + ")"
        raise ValueError(f"{path}: expected outputs {want}, got {outputs}")


def insightface_problems(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """Why insightface would not take the file as a recognition model fed like training; [] if it would.

    The rules, as insightface's ``model_zoo`` router and ``ArcFaceONNX`` apply them:

    * the router reads ``inputs[0]``'s shape: fewer than 5 outputs (else a detector), a square
      ``H == W`` that is not 192 (landmarks) or 96 (attributes), ``>= 112`` and a multiple of
      16; dynamic H/W fail these comparisons;
    * ``ArcFaceONNX`` asserts exactly one output and feeds one input;
    * if any of the first 8 node names starts with ``Sub``/``_minus`` and any with
      ``Mul``/``_mul``, it assumes the normalisation is inside the graph and feeds raw
      0..255 pixels (mean 0, std 1) instead of ``(x - 127.5) / 127.5``.

    facevib adds the interface of its own default file: float32 input with a dynamic batch.
    """
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    problems: list[str] = []
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} graph inputs; insightface feeds exactly one")
    if len(graph.output) != 1:
        problems.append(f"{len(graph.output)} outputs; ArcFaceONNX asserts exactly one")
    if inputs:
        dims = _dims(inputs[0])
        if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"input {inputs[0].name!r} is not float32")
        if len(dims) != 4:
            problems.append(f"input {inputs[0].name!r} has shape {dims}, not (N, 3, H, W)")
        else:
            batch, channels, height, width = dims
            if isinstance(batch, int) and batch > 0:
                problems.append(f"input {inputs[0].name!r} has a fixed batch of {batch}")
            if channels != 3:
                problems.append(f"input {inputs[0].name!r} has {channels} channels, not 3")
            if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
                problems.append(f"input {inputs[0].name!r} has dynamic height/width {height}x{width}")
            elif height != width or height < 112 or height % 16 or height in (96, 192):
                problems.append(
                    f"input {height}x{width} is not routed to ArcFaceONNX (needs square, >= 112, a multiple of 16, not 192)"
                )
    names = [node.name for node in graph.node[:_INSIGHTFACE_SCANNED_NODES]]
    subtracts = [n for n in names if n.startswith(("Sub", "_minus"))]
    multiplies = [n for n in names if n.startswith(("Mul", "_mul"))]
    if subtracts and multiplies:
        problems.append(
            f"first {_INSIGHTFACE_SCANNED_NODES} node names include {subtracts[0]!r} and {multiplies[0]!r}: "
            "insightface would assume normalisation inside the graph and feed raw pixels"
        )
    return problems


def _batches(batch_sizes: Sequence[int], size: int, seed: int, inputs: np.ndarray | None) -> list[np.ndarray]:
    """One float32 (B, 3, size, size) batch per size: uniform in [-1, 1], or rows of ``inputs``
    cycled to length B (starting where the previous batch stopped)."""
    if inputs is None:
        generator = torch.Generator().manual_seed(seed)
        return [(torch.rand(b, 3, size, size, generator=generator) * 2 - 1).numpy() for b in batch_sizes]
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or inputs.shape[1:] != (3, size, size) or len(inputs) == 0:
        raise ValueError(f"inputs must be (K, 3, {size}, {size}) with K >= 1, got {inputs.shape}")
    out, position = [], 0
    for batch in batch_sizes:
        rows = (position + np.arange(batch)) % len(inputs)
        out.append(np.ascontiguousarray(inputs[rows]))
        position += batch
    return out


def onnx_differences(
    model: nn.Module,
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 5),
    *,
    seed: int = 0,
    input_size: int | None = None,
    inputs: np.ndarray | None = None,
    quality: nn.Module | None = None,
) -> dict[str, float]:
    """Largest absolute difference per output between ONNX Runtime (CPU) and the eval-mode model.

    Every output of the file is compared: ``embedding`` against ``model(x)``,
    ``uncertainty`` (when present) against ``model.forward_with_uncertainty(x)[1]``, and
    ``quality`` (when present) against ``quality(model(x))``.

    Args:
        batch_sizes: one batch per size.
        inputs: normalised ``(K, 3, S, S)`` images (e.g. aligned crops through
            :func:`facevib.data.transforms.images_to_tensor`), cycled to fill each batch;
            default uniform noise in [-1, 1] (the normalised pixel range).
        quality: the module exported as the ``quality`` output (needed when the file has one).
    """
    import onnxruntime as ort

    size = _input_size(model, input_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    if QUALITY_OUTPUT in names and quality is None:
        raise ValueError(f"{path} has a {QUALITY_OUTPUT!r} output: pass the quality module it was exported with")
    reference = _EmbeddingAndExtras(model, UNCERTAINTY_OUTPUT in names, quality if QUALITY_OUTPUT in names else None)
    worst = dict.fromkeys(names, 0.0)
    try:
        for x in _batches(batch_sizes, size, seed, inputs):
            with torch.no_grad():
                tensor = torch.from_numpy(x).to(device)
                expected = reference(tensor)
            got = session.run(names, {INPUT_NAME: x})
            for name, ours, theirs in zip(names, got, expected, strict=True):
                theirs = theirs.float().cpu().numpy()
                if ours.shape != theirs.shape:
                    raise ValueError(
                        f"{path}: ONNX output {name!r} is {ours.shape} for batch {len(x)}, PyTorch {theirs.shape}"
                    )
                worst[name] = max(worst[name], float(np.abs(ours - theirs).max()))
    finally:
        model.train(was_training)
    return worst


def compare_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 5),
    *,
    seed: int = 0,
    input_size: int | None = None,
    inputs: np.ndarray | None = None,
    quality: nn.Module | None = None,
) -> float:
    """The largest of :func:`onnx_differences` over all outputs."""
    differences = onnx_differences(
        model, path, batch_sizes, seed=seed, input_size=input_size, inputs=inputs, quality=quality
    )
    return max(differences.values())
