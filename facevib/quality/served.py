"""The served quality: a candidate score and its [0, 1] scale as one module after the backbone.

``benchmarks/quality.py`` writes ``quality_heads.pt``: every head's weights and every
candidate's calibration quantiles. :func:`load_quality` turns one candidate of that file into
a module ``raw embedding (N, D) -> quality (N,)`` in [0, 1] (the export puts it into the ONNX
graph) and the definition stored under ``facevib.quality`` in the file's metadata.

Only the candidates computed from the embedding can be served this way: ``norm``, ``pfe``,
``cr_fiqa``. The cell-sigma candidates would need the sigma branches in the graph, and
``random`` is the floor of the comparison, not a quality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facevib.engine.reader import read_torch_file
from facevib.quality.heads import HEADS
from facevib.quality.scale import EmpiricalCDF

__all__ = ["SERVABLE", "QualityModule", "load_quality"]

SERVABLE = ("norm", "pfe", "cr_fiqa")
_DEFINITIONS = {
    "norm": "L2 norm of the embedding before normalisation (MagFace-style; arXiv:2103.06627)",
    "pfe": "log of the mean precision 1/sigma^2 of a PFE uncertainty head on the frozen embedding "
    "(Probabilistic Face Embeddings, arXiv:1904.09658)",
    "cr_fiqa": "certainty ratio predicted by a CR-FIQA head on the frozen embedding (CR-FIQA, arXiv:2112.06592)",
}


class _Norm(nn.Module):
    def forward(self, embedding: Tensor) -> Tensor:
        return torch.linalg.vector_norm(embedding, dim=1)


class QualityModule(nn.Module):
    """raw embedding (N, D) -> quality (N,) in [0, 1]: the raw score, then its empirical CDF."""

    def __init__(self, score: nn.Module, scale: EmpiricalCDF) -> None:
        super().__init__()
        self.score = score
        self.scale = scale

    def forward(self, embedding: Tensor) -> Tensor:
        return self.scale(self.score(embedding))


def load_quality(path: str | os.PathLike, name: str, embedding_dim: int) -> tuple[QualityModule, dict[str, Any]]:
    """Candidate ``name`` of the heads file ``path``: the module and its metadata definition.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``name`` is not servable or not in the file, or the file was made for
            another embedding size.
    """
    if name not in SERVABLE:
        raise ValueError(f"quality {name!r} cannot be served; choose one of {', '.join(SERVABLE)}")
    path = Path(path)
    saved = read_torch_file(path, what="quality heads file")
    if not isinstance(saved, dict) or "knots" not in saved:
        raise ValueError(f"{path}: not a quality heads file written by benchmarks/quality.py")
    if saved.get("embedding_dim") != embedding_dim:
        raise ValueError(f"{path}: made for embedding_dim {saved.get('embedding_dim')}, the model has {embedding_dim}")
    if name not in saved["knots"]:
        raise ValueError(f"{path}: has no calibration for quality {name!r} (it has {', '.join(saved['knots'])})")
    if name == "norm":
        score: nn.Module = _Norm()
    else:
        if name not in saved.get("heads", {}):
            raise ValueError(f"{path}: has no {name!r} head weights")
        score = HEADS[name](embedding_dim)
        score.load_state_dict(saved["heads"][name])
    knots = saved["knots"][name].double().numpy()
    module = QualityModule(score.eval(), EmpiricalCDF(knots)).eval()
    definition = {
        "name": name,
        "statistic": _DEFINITIONS[name],
        "scale": "empirical CDF of the raw score over the calibration faces, linear between its "
        f"{len(knots)} quantiles at 0, 1/{len(knots) - 1}, ..., 1: 0 = at or below the worst calibration face, "
        "1 = at or above the best",
        "quantiles": [float(k) for k in knots],
        "calibration": str(saved.get("calibration", "")),
        "direction": "higher = better face (fewer false non-matches when the lowest are discarded)",
        "selected_by": "benchmarks/quality.py error-versus-discard (docs/quality.md)",
        "benchmark_winner": saved.get("winner"),
    }
    return module, definition
