"""Quality heads trained after the backbone, on its frozen embeddings: PFE and CR-FIQA.

Both take the embedding before L2 normalisation (N, D) as input, so in an exported graph they
are a few matrix products after the backbone's last layer.

* :class:`PFEHead` (Shi & Jain, "Probabilistic Face Embeddings", arXiv:1904.09658): predicts
  a per-dimension variance ``sigma^2`` of the normalised embedding ``mu``, trained by
  maximising the mutual likelihood score of genuine pairs (eq. 3 of the paper),
  ``-1/2 sum_d [(mu_i - mu_j)^2 / (s_i + s_j) + log(s_i + s_j)]`` (constant dropped, and a
  mean over dimensions instead of the sum, which only rescales it). Its quality is
  ``log mean_d 1/sigma^2`` (minus the log of the harmonic mean of the variances; higher =
  more certain). The paper's head reads the conv features before the embedding layer; here it
  reads the embedding itself, which keeps the exported head a two-layer MLP.
* :class:`CRHead` (Boutros et al., "CR-FIQA: Face Image Quality Assessment by Learning Sample
  Relative Classifiability", arXiv:2112.06592): regresses the certainty ratio
  ``CR = CCS / (NNCCS + 1 + eps)`` (eq. 4), where CCS is the cosine of a training face to its
  own class centre and NNCCS its largest cosine to another class centre, both with the
  Partial FC centres of the trained model, with a smooth-L1 loss. Its quality is the
  predicted CR.

:func:`train_head` fits either one with Adam; :func:`objective` is each head's own loss, used
to check on identities the head never saw that it learned something.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PFEHead",
    "CRHead",
    "HEADS",
    "certainty_ratio",
    "genuine_pairs",
    "mls_loss",
    "objective",
    "train_head",
    "constant_objective",
    "split_by_identity",
    "improvement",
]

_CR_EPS = 1e-9


class PFEHead(nn.Module):
    """embedding (N, D) -> log sigma^2 (N, D): an MLP, then PFE's learned scale and shift."""

    def __init__(self, embedding_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, embedding_dim))
        self.scale = nn.Parameter(torch.tensor(1e-2))
        # A starting variance near the genuine-pair spread of unit embeddings (~1/D per dim).
        self.shift = nn.Parameter(torch.tensor(-math.log(embedding_dim)))

    def log_variance(self, embedding: Tensor) -> Tensor:
        """Per-dimension log sigma^2 of the normalised embedding."""
        return self.scale * self.net(embedding) + self.shift

    def forward(self, embedding: Tensor) -> Tensor:
        """Quality (N,): log of the mean precision over dimensions (higher = more certain)."""
        log_var = self.log_variance(embedding)
        return torch.logsumexp(-log_var, dim=1) - math.log(log_var.shape[1])


class CRHead(nn.Module):
    """embedding (N, D) -> predicted certainty ratio (N,)."""

    def __init__(self, embedding_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, embedding: Tensor) -> Tensor:
        """Quality (N,): the predicted CR (higher = more classifiable)."""
        return self.net(embedding).squeeze(1)


HEADS: dict[str, type[nn.Module]] = {"pfe": PFEHead, "cr_fiqa": CRHead}


def certainty_ratio(embedding: Tensor, labels: Tensor, centres: Tensor) -> Tensor:
    """CR-FIQA's target per face: CCS / (NNCCS + 1 + eps) against the class ``centres`` (C, D)."""
    cos = F.normalize(embedding, dim=1) @ F.normalize(centres, dim=1).T
    own = cos.gather(1, labels[:, None]).squeeze(1)
    others = cos.scatter(1, labels[:, None], -2.0).amax(dim=1)
    return own / (others + 1.0 + _CR_EPS)


def genuine_pairs(labels: np.ndarray) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of faces with the same label, as an (M, 2) array."""
    labels = np.asarray(labels)
    pairs = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        i, j = np.triu_indices(members.size, k=1)
        pairs.append(np.stack([members[i], members[j]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def mls_loss(log_var_a: Tensor, log_var_b: Tensor, mu_a: Tensor, mu_b: Tensor) -> Tensor:
    """Per pair: minus PFE's mutual likelihood score, averaged over dimensions (N,)."""
    variance = log_var_a.exp() + log_var_b.exp()
    return 0.5 * ((mu_a - mu_b).pow(2) / variance + variance.log()).mean(dim=1)


def _per_item_objective(head: nn.Module, embedding: Tensor, labels: Tensor, centres: Tensor | None) -> Tensor:
    """The head's loss per training item: per genuine pair (PFE) or per face (CR-FIQA)."""
    if isinstance(head, PFEHead):
        pairs = torch.from_numpy(genuine_pairs(labels.numpy()))
        mu = F.normalize(embedding, dim=1)
        log_var = head.log_variance(embedding)
        return mls_loss(log_var[pairs[:, 0]], log_var[pairs[:, 1]], mu[pairs[:, 0]], mu[pairs[:, 1]])
    if centres is None:
        raise ValueError("the CR-FIQA head needs the class centres")
    target = certainty_ratio(embedding, labels, centres)
    return F.smooth_l1_loss(head(embedding), target, reduction="none", beta=0.1)


def objective(head: nn.Module, embedding: Tensor, labels: Tensor, centres: Tensor | None = None) -> Tensor:
    """The head's own loss on these faces, per item (pairs for PFE, faces for CR-FIQA), no gradient."""
    with torch.no_grad():
        return _per_item_objective(head.eval(), embedding, labels, centres)


def constant_objective(
    kind: str, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], centres: Tensor | None = None
) -> Tensor:
    """Per-item loss on ``test`` of the best input-independent prediction fitted on ``train``.

    PFE: one shared variance, ``s_a + s_b = mean (mu_a - mu_b)^2`` over training genuine pairs
    and dimensions (the minimiser of the loss in closed form). CR-FIQA: the training median
    of CR (the minimiser of an L1 loss; close to that of smooth L1).
    """
    if kind == "pfe":
        pairs_train = torch.from_numpy(genuine_pairs(train[1].numpy()))
        mu = F.normalize(train[0], dim=1)
        pair_variance = (mu[pairs_train[:, 0]] - mu[pairs_train[:, 1]]).pow(2).mean()
        pairs = torch.from_numpy(genuine_pairs(test[1].numpy()))
        mu_t = F.normalize(test[0], dim=1)
        d2 = (mu_t[pairs[:, 0]] - mu_t[pairs[:, 1]]).pow(2)
        return 0.5 * (d2 / pair_variance + pair_variance.log()).mean(dim=1)
    if centres is None:
        raise ValueError("the CR-FIQA head needs the class centres")
    level = certainty_ratio(train[0], train[1], centres).median()
    target = certainty_ratio(test[0], test[1], centres)
    return F.smooth_l1_loss(torch.full_like(target, float(level)), target, reduction="none", beta=0.1)


def train_head(
    kind: str,
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    centres: np.ndarray | None = None,
    epochs: int = 30,
    classes_per_batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: int = 64,
) -> nn.Module:
    """Fit head ``kind`` (``"pfe"`` or ``"cr_fiqa"``) on frozen embeddings of labelled training faces.

    Batches are groups of ``classes_per_batch`` whole classes, so every batch holds genuine
    pairs (PFE) and every face its own class (CR-FIQA reads the centres of all classes).

    Raises:
        ValueError: an unknown kind, or CR-FIQA without ``centres``.
    """
    if kind not in HEADS:
        raise ValueError(f"unknown quality head {kind!r}; expected one of {sorted(HEADS)}")
    if kind == "cr_fiqa" and centres is None:
        raise ValueError("the CR-FIQA head needs the class centres (the Partial FC weight)")
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    x = torch.as_tensor(embedding, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    w = None if centres is None else torch.as_tensor(centres, dtype=torch.float32)
    head = HEADS[kind](x.shape[1], hidden)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    classes = np.unique(labels)
    groups = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(epochs):
        order = generator.permutation(classes.size)
        for start in range(0, classes.size, classes_per_batch):
            batch = np.concatenate([groups[k] for k in order[start : start + classes_per_batch]])
            head.train()
            loss = _per_item_objective(head, x[batch], y[batch], w).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def split_by_identity(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, check) putting a ``fraction`` of the identities in ``check``."""
    classes = np.unique(labels)
    held = np.random.default_rng(seed).permutation(classes)[: max(1, int(round(fraction * classes.size)))]
    check = np.isin(labels, held)
    return ~check, check


def improvement(losses: Tensor, baseline: Tensor) -> tuple[float, float]:
    """Mean per-item improvement of ``losses`` over ``baseline`` (same items) and its standard error."""
    diff = (baseline - losses).double()
    return float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
