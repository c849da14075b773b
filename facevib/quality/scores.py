"""Candidate per-face quality scores, higher = better face, from one backbone pass (:func:`embed_faces`).

* ``random``: a uniform draw per face (the floor: discarding by it keeps FNMR flat in expectation);
* ``uncertainty``: minus the exported uncertainty (mean log sigma of the last stage's cells);
* ``beta_sigma``: minus the mean log sigma of every VIB cell, weighted by the cell's KL weight
  beta (the cells the training objective actually regularised count the most);
* ``norm``: the norm of the embedding before normalisation (MagFace: Meng et al., "MagFace: A
  Universal Representation for Face Recognition and Quality Assessment", arXiv:2103.06627);
* ``pfe`` and ``cr_fiqa``: the heads of :mod:`facevib.quality.heads`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from facevib.quality.features import FaceFeatures

__all__ = ["CANDIDATES", "BACKBONE_SCORES", "candidate_scores"]

BACKBONE_SCORES = ("uncertainty", "beta_sigma", "norm")
CANDIDATES = ("random", *BACKBONE_SCORES, "pfe", "cr_fiqa")


def candidate_scores(
    features: FaceFeatures, betas: np.ndarray, heads: Mapping[str, nn.Module], seed: int
) -> dict[str, np.ndarray]:
    """Every candidate's score per face (higher = better), keyed by the names of :data:`CANDIDATES`."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.shape != (features.cell_log_sigma.shape[1],) or betas.sum() <= 0:
        raise ValueError(f"betas {betas.shape} must give each of the {features.cell_log_sigma.shape[1]} cells a weight")
    embedding = torch.as_tensor(features.embedding, dtype=torch.float32)
    scores = {
        "random": np.random.default_rng(seed).random(len(features.embedding)),
        "uncertainty": -features.uncertainty.astype(np.float64),
        "beta_sigma": -(features.cell_log_sigma @ betas) / betas.sum(),
        "norm": np.linalg.norm(features.embedding.astype(np.float64), axis=1),
    }
    with torch.no_grad():
        for name, head in heads.items():
            scores[name] = head.eval()(embedding).double().numpy()
    return scores
