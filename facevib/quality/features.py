"""What a backbone says about each face in one eval-mode pass: the raw embedding and every cell's sigma.

Every candidate quality score of :mod:`facevib.quality.scores` and both heads of
:mod:`facevib.quality.heads` read these: the embedding before L2 normalisation (its norm is
MagFace's quality signal, its direction is what verification compares), the exported
``uncertainty`` (:meth:`facevib.models.IResNet.forward_with_uncertainty`) and, per VIB cell,
the mean log sigma over its output elements (read by forward pre-hooks during that same pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from facevib.data.transforms import images_to_tensor

__all__ = ["FaceFeatures", "embed_faces"]


@dataclass(frozen=True)
class FaceFeatures:
    """Per face: ``embedding`` (N, D) before normalisation; ``uncertainty`` (N,) as exported;
    ``cell_log_sigma`` (N, cells), the mean log sigma of each VIB cell in depth order."""

    embedding: np.ndarray
    uncertainty: np.ndarray
    cell_log_sigma: np.ndarray


def embed_faces(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 128) -> FaceFeatures:
    """Run ``model`` (a cellVIB :class:`facevib.models.IResNet`) in eval mode over aligned faces.

    ``images``: RGB uint8 crops (N, S, S, 3), or network inputs already normalised (N, 3, S, S).

    Raises:
        ValueError: the model has no VIB cells (no sigma to read).
    """
    blocks = [block for block in model.iter_blocks() if block.vib is not None]
    if not blocks:
        raise ValueError(f"model {getattr(model, 'name', type(model).__name__)!r} has no VIB cells")
    recorded: list[torch.Tensor] = []

    def record(block: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        recorded.append(block.vib.log_sigma(args[0]).flatten(1).mean(dim=1))

    hooks = [block.register_forward_pre_hook(record) for block in blocks]
    was_training = model.training
    model.eval()
    embeddings, uncertainties, cells = [], [], []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                recorded.clear()
                batch = images[start : start + batch_size]
                inputs = batch if isinstance(batch, torch.Tensor) else images_to_tensor(batch)
                embedding, uncertainty = model.forward_with_uncertainty(inputs)
                embeddings.append(embedding.numpy())
                uncertainties.append(uncertainty.numpy())
                cells.append(torch.stack(recorded, dim=1).numpy())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return FaceFeatures(np.concatenate(embeddings), np.concatenate(uncertainties), np.concatenate(cells))
