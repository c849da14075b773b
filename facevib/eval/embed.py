"""Embedding aligned faces with a torch backbone or an exported ONNX model.

:class:`Embedder` turns ``(N, 112, 112, 3)`` uint8 RGB crops into embeddings the way the
evaluation protocols want them: each image and its horizontal flip go through the network
(in one batch), and :meth:`Embedder.__call__` returns their **sum, not normalised**: the
verification protocol and the IJB template aggregation both start from that sum (the IJB
pipeline weights it before normalising, so normalising here would change the result).
Input normalisation is the one training uses (:mod:`facevib.data.transforms`). A torch
backbone gets the uint8 crops on its device (a quarter of the float32 bytes to copy) and
flips and normalises them there; on CUDA batches default to :data:`CUDA_BATCH_SIZE` and
cuDNN autotunes its convolutions for the fixed crop shape.

:func:`load_embedder` opens a facevib checkpoint or an arcface_torch state dict (through
:func:`facevib.models.load_backbone`) or a ``.onnx`` file (through ONNX Runtime, on
``CUDAExecutionProvider`` when one is requested and available, else on the CPU;
:attr:`Embedder.backend` says which ran).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facevib.contract import UNCERTAINTY_OUTPUT
from facevib.data.transforms import images_to_tensor, normalize_images

__all__ = ["Embedder", "load_embedder", "resolve_device", "flip_images", "default_batch_size", "CUDA_BATCH_SIZE"]

# Images per forward pass: on a GPU a large batch hides the per-batch launch and copy costs
# (IJB-C has 469k crops); on a CPU a small one keeps memory low at the same speed.
CUDA_BATCH_SIZE = 512
CPU_BATCH_SIZE = 64

BatchFn = Callable[[np.ndarray], np.ndarray]
JointFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def flip_images(images: np.ndarray) -> np.ndarray:
    """Horizontal flip of an ``(N, H, W, C)`` batch, as a contiguous copy."""
    return np.ascontiguousarray(images[:, :, ::-1])


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when torch sees one, else CPU; a CUDA device torch cannot see
    raises ``ValueError`` rather than failing later inside the first batch."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return resolved


def default_batch_size(device: str | torch.device | None) -> int:
    """:data:`CUDA_BATCH_SIZE` for a CUDA device (``"auto"``/None: when torch sees one), else 64."""
    cuda = torch.cuda.is_available() if device is None or str(device) == "auto" else str(device).startswith("cuda")
    return CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be an (N, H, W, 3) uint8 RGB array, got {type(images).__name__} {shape}")
    return images


class Embedder:
    """Batched image + flip embeddings from any ``uint8 (B, H, W, 3) -> float32 (B, D)`` function.

    Args:
        forward: embeds one batch of RGB uint8 crops (no flip) into float32 ``(B, D)``.
        batch_size: images per network forward pass; with flipping, each pass holds
            ``batch_size // 2`` images and their flips.
        forward_with_flip: optional, ``forward`` of the images followed by their flips
            (``2B`` rows) for a ``B``-image batch, flipping where the network runs.
        joint_with_flip: the same for ``joint``.
        backend: what runs the network, for reports (e.g. ``"torch:cuda:0"``,
            ``"onnxruntime:CPUExecutionProvider"``).
        joint: optional function of the same input returning ``(embeddings (B, D),
            uncertainty (B,))`` from one network pass (higher = less certain), for models
            with sigma branches (:meth:`facevib.models.IResNet.forward_with_uncertainty`, or
            an ONNX file exported with ``--uncertainty``).
    """

    def __init__(
        self,
        forward: BatchFn,
        *,
        batch_size: int = 64,
        backend: str = "custom",
        joint: JointFn | None = None,
        forward_with_flip: BatchFn | None = None,
        joint_with_flip: JointFn | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._forward = forward
        self._joint = joint
        self._forward_with_flip = forward_with_flip or (lambda part: forward(np.concatenate([part, flip_images(part)])))
        self._joint_with_flip = joint_with_flip
        if joint is not None and joint_with_flip is None:
            self._joint_with_flip = lambda part: joint(np.concatenate([part, flip_images(part)]))
        self.batch_size = int(batch_size)
        self.backend = backend

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_module(
        cls, model: nn.Module, *, device: str | torch.device | None = None, batch_size: int | None = None
    ) -> Embedder:
        """Wrap a torch backbone. ``device=None`` keeps the module where it is; otherwise it is
        moved there. Each batch runs in eval mode under ``no_grad`` and the module's previous
        train/eval mode is restored afterwards, so a training loop can evaluate mid-run.
        DataParallel/DistributedDataParallel wrappers are unwrapped (a wrapped forward on one
        rank would wait for the others). ``batch_size=None``: :func:`default_batch_size`.

        The uint8 crops are copied to the device (pinned, asynchronously, on CUDA), and the
        flip and the normalisation run there."""
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        if device is None:
            first = next(model.parameters(), None)
            target = first.device if first is not None else torch.device("cpu")
        else:
            target = resolve_device(device)
            model.to(target)
        on_cuda = target.type == "cuda"
        if on_cuda and not torch.are_deterministic_algorithms_enabled():
            # One crop shape throughout: autotuning pays for itself after a few batches.
            torch.backends.cudnn.benchmark = True

        def to_device(images: np.ndarray, flip: bool) -> torch.Tensor:
            host = torch.from_numpy(np.ascontiguousarray(images))
            pixels = (host.pin_memory() if on_cuda else host).to(target, non_blocking=True).permute(0, 3, 1, 2)
            if flip:
                pixels = torch.cat([pixels, pixels.flip(3)])
            return normalize_images(pixels)

        def run(
            fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]], images: np.ndarray, flip: bool
        ) -> np.ndarray | tuple[np.ndarray, ...]:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    out = fn(to_device(images, flip))
                    if isinstance(out, tuple):
                        return tuple(t.float().cpu().numpy() for t in out)
                    return out.float().cpu().numpy()
            finally:
                model.train(was_training)

        has_sigma = bool(getattr(model, "has_uncertainty", False))
        return cls(
            lambda images: run(model, images, False),
            batch_size=batch_size or default_batch_size(target),
            backend=f"torch:{target}",
            joint=(lambda images: run(model.forward_with_uncertainty, images, False)) if has_sigma else None,
            forward_with_flip=lambda images: run(model, images, True),
            joint_with_flip=(lambda images: run(model.forward_with_uncertainty, images, True)) if has_sigma else None,
        )

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, device: str = "cpu", batch_size: int = 64) -> Embedder:
        """Open an exported model with ONNX Runtime.

        ``device`` ``"cuda"``/``"cuda:N"``/``"auto"`` asks for ``CUDAExecutionProvider``; when
        this onnxruntime build has none, the CPU provider runs and :attr:`backend` says so.
        The graph must take one ``(N, 3, H, W)`` float input; its first output is the
        ``(N, D)`` embedding, and an ``uncertainty`` ``(N,)`` output (``python -m
        facevib.export --uncertainty``) makes :meth:`uncertainty` available, computed in the
        same run as the embedding.
        """
        import onnxruntime as ort  # optional dependency (the `serve` extra), imported on use
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        wants_cuda = device == "auto" or str(device).startswith("cuda")
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        providers: list = ["CPUExecutionProvider"]
        if wants_cuda and has_cuda:
            index = str(device).partition(":")[2]
            options = {"device_id": int(index)} if index else {}
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except (
            ort_state.Fail,
            ort_state.InvalidGraph,
            ort_state.InvalidArgument,
            ort_state.InvalidProtobuf,
            ort_state.NoSuchFile,
            ort_state.RuntimeException,
        ) as err:  # onnxruntime's own types, not OSError
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({err})") from err
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one (N, 3, H, W) input, got {[(i.name, i.shape) for i in inputs]}")
        if len(outputs) < 1 or len(outputs[0].shape) != 2:
            raise ValueError(f"{path}: expected an (N, D) embedding output, got {[(o.name, o.shape) for o in outputs]}")
        input_name, output_name = inputs[0].name, outputs[0].name
        has_uncertainty = any(o.name == UNCERTAINTY_OUTPUT for o in outputs[1:])

        def run(images: np.ndarray) -> np.ndarray:
            blob = images_to_tensor(images).numpy()
            return np.asarray(session.run([output_name], {input_name: blob})[0], dtype=np.float32)

        def joint(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            blob = images_to_tensor(images).numpy()
            embedding, uncertainty = session.run([output_name, UNCERTAINTY_OUTPUT], {input_name: blob})
            return np.asarray(embedding, dtype=np.float32), np.asarray(uncertainty, dtype=np.float32)

        used = session.get_providers()[0]
        backend = f"onnxruntime:{used}"
        if wants_cuda and used != "CUDAExecutionProvider" and device != "auto":
            # A GPU build whose provider failed to start (driver or CUDA libraries missing) and
            # a CPU-only build are different fixes, so say which one this is.
            backend += (
                " (CUDA requested: the CUDA provider is built in but failed to start; check the driver and the "
                "CUDA/cuDNN libraries)"
                if has_cuda
                else " (CUDA requested but this onnxruntime build has no CUDA provider)"
            )
        return cls(run, batch_size=batch_size, backend=backend, joint=joint if has_uncertainty else None)

    # ------------------------------------------------------------------ embedding

    @property
    def has_uncertainty(self) -> bool:
        """Whether :meth:`uncertainty` is available (models with sigma branches)."""
        return self._joint is not None

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of ``images`` alone (no flip), ``(N, D)`` float32, not normalised."""
        images = _check_images(images)
        parts = [self._forward(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return self._stack(parts, len(images))

    def embed_with_flip(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, flipped-image embeddings)``, each ``(N, D)`` float32, not normalised.

        Each forward pass holds a chunk and its flip, halving the number of passes.
        """
        images = _check_images(images)
        chunk = max(1, self.batch_size // 2)
        plain, flipped = [], []
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            out = self._forward_with_flip(part)
            plain.append(out[: len(part)])
            flipped.append(out[len(part) :])
        return self._stack(plain, len(images)), self._stack(flipped, len(images))

    def __call__(self, images: np.ndarray, flip: bool = True) -> np.ndarray:
        """``(N, D)`` float32: embedding of each image plus that of its flip (``flip=True``),
        or of the image alone; never normalised."""
        if not flip:
            return self.embed(images)
        plain, flipped = self.embed_with_flip(images)
        plain += flipped
        return plain

    def embed_with_uncertainty(self, images: np.ndarray, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings (N, D), uncertainty (N,))``, both from the same network passes.

        The embeddings are :meth:`__call__`'s (image + flip sum with ``flip``, not
        normalised); the uncertainty is the model's per-image score
        (:meth:`facevib.models.IResNet.forward_with_uncertainty`), with ``flip`` the mean of
        the image's and its flip's.

        Raises:
            ValueError: the model gives no uncertainty (no sigma branches, or an ONNX graph
                exported without ``--uncertainty``).
        """
        if self._joint is None:
            raise ValueError(
                f"the model run by {self.backend} provides no per-image uncertainty: it needs a cellvib_*/deepvib_* "
                "model (a facevib checkpoint, or an ONNX file exported with --uncertainty)"
            )
        images = _check_images(images)
        chunk = max(1, self.batch_size // 2) if flip else self.batch_size
        embeddings, scores = [], []
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            emb, unc = self._joint_with_flip(part) if flip else self._joint(part)
            emb, unc = np.asarray(emb, dtype=np.float32), np.asarray(unc, dtype=np.float32)
            rows = 2 * len(part) if flip else len(part)
            if unc.shape != (rows,):
                raise ValueError(f"uncertainty returned shape {unc.shape} for {rows} images, expected (N,)")
            if flip:
                emb = emb[: len(part)] + emb[len(part) :]
                unc = (unc[: len(part)] + unc[len(part) :]) / 2
            embeddings.append(emb)
            scores.append(unc)
        values = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        return self._stack(embeddings, len(images)), values

    def uncertainty(self, images: np.ndarray, flip: bool = True) -> np.ndarray:
        """Per-image uncertainty ``(N,)`` float32 (with ``flip``: mean over image and flip).

        Runs the same passes as :meth:`embed_with_uncertainty`; call that one when the
        embeddings are needed too.
        """
        return self.embed_with_uncertainty(images, flip)[1]

    @staticmethod
    def _stack(parts: list[np.ndarray], count: int) -> np.ndarray:
        if not parts:
            return np.zeros((0, 0), np.float32)
        out = np.concatenate(parts).astype(np.float32, copy=False)
        if out.ndim != 2 or out.shape[0] != count:
            raise ValueError(f"the model returned shape {out.shape} for {count} images, expected (N, D)")
        return out

    def __repr__(self) -> str:
        return f"Embedder(backend={self.backend!r}, batch_size={self.batch_size}, uncertainty={self.has_uncertainty})"


def load_embedder(
    path: str | os.PathLike,
    device: str = "cpu",
    batch_size: int | None = None,
    network: str | None = None,
) -> Embedder:
    """An :class:`Embedder` for a model file.

    Args:
        path: ``.onnx`` (ONNX Runtime), or a facevib checkpoint / arcface_torch ``state_dict``
            (``.pt``/``.pth``, read by :func:`facevib.models.load_backbone`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        batch_size: images per forward pass (None: :func:`default_batch_size` of ``device``).
        network: registered model name (e.g. ``"r100"``); required for a plain state dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable model, bad device, or a state dict without ``network``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        if network is not None:
            raise ValueError(f"--network {network!r} applies to torch checkpoints, not to the ONNX file {path}")
        return Embedder.from_onnx(path, device=device, batch_size=batch_size or default_batch_size(device))
    from facevib.models import load_backbone

    target = resolve_device(device)
    model = load_backbone(path, name=network)
    return Embedder.from_module(model, device=target, batch_size=batch_size)
