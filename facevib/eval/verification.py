"""The verification-set protocol (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW), as insightface runs it.

Protocol (insightface's ``eval/verification.py``):

1. embed each image and its horizontal flip, sum the two, L2-normalise (float64);
2. squared L2 distance ``d`` between the two normalised embeddings of each pair
   (``d = 2 - 2 cos``); a pair is predicted "same" when ``d < t``;
3. 10-fold cross-validation: pairs are split into ``n_folds`` contiguous folds exactly as
   sklearn's ``KFold(n_splits=n_folds, shuffle=False)`` splits them (the first
   ``n % n_folds`` folds get one pair more); on the other folds the threshold with the best
   accuracy on insightface's grid ``t in arange(0, 4, 0.01)`` is chosen (first best on ties),
   and accuracy is measured on the held-out fold; report the mean and the (population) std.

On top of insightface's numbers: TAR@FAR=1e-3 computed exactly over all pairs from the
sorted impostor cosine scores (:func:`facevib.eval.roc.tpr_at_fpr`; insightface interpolates
a distance grid per fold instead). With ``n`` impostor pairs, FAR 1e-3 is resolved only when
``n >= 1000`` (LFW has 3000); below that the threshold is the largest impostor score, the
achieved FAR is 0 and ``far_resolved`` is False. ``embedding_norm`` is the mean norm of the
embeddings as given (for :func:`evaluate_bins`, the image + flip sum); ``xnorm`` is
insightface's XNorm, the mean norm of the single-image embeddings (image and flip alike).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facevib.data.bins import VerificationBin, read_bin
from facevib.eval.embed import Embedder
from facevib.eval.roc import tpr_at_fpr

__all__ = [
    "INSIGHTFACE_THRESHOLDS",
    "kfold_splits",
    "l2_normalize",
    "evaluate_verification",
    "list_bin_targets",
    "load_bins",
    "evaluate_bins",
    "unique_images",
]

# insightface's distance grid; arange's own float values are kept so that a distance lying on
# a grid point is classified as it is there.
INSIGHTFACE_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.01)


def kfold_splits(n: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays of sklearn's ``KFold(n_folds, shuffle=False)`` on ``range(n)``.

    ``n_folds == 1`` gives ``(all, all)``, as insightface's ``LFold`` does.
    """
    if n_folds < 1 or n_folds > n:
        raise ValueError(f"n_folds must be between 1 and the number of pairs ({n}), got {n_folds}")
    indices = np.arange(n)
    if n_folds == 1:
        return [(indices, indices)]
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    return [
        (np.r_[indices[: bounds[i]], indices[bounds[i + 1] :]], indices[bounds[i] : bounds[i + 1]])
        for i in range(n_folds)
    ]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64; all-zero rows stay zero (sklearn's ``normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1.0
    return x / norms[:, None]


def _fold_accuracy(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same iff dist < t" for every ``t``: two sorts instead of a loop."""
    genuine = np.sort(dist[same])
    impostor = np.sort(dist[~same])
    true_accepts = np.searchsorted(genuine, thresholds, side="left")  # genuine with dist < t
    true_rejects = impostor.size - np.searchsorted(impostor, thresholds, side="left")
    return (true_accepts + true_rejects) / dist.size


def evaluate_verification(
    embeddings: np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    n_folds: int = 10,
    far: float = 1e-3,
) -> dict[str, Any]:
    """Accuracy (10-fold), TAR@FAR and embedding norm of a verification set.

    Args:
        embeddings: ``(2N, D)`` pair-consecutive embeddings (rows ``2i``, ``2i + 1`` are pair
            ``i``), **not** normalised: normalisation happens here, after the norm is measured.
        issame: ``(N,)`` booleans, True for same-identity pairs.
        n_folds: folds of the cross-validated threshold (insightface: 10).
        far: target false accept rate of the TAR figure.

    Returns:
        JSON-ready dict: ``pairs``, ``genuine``, ``impostor``, ``n_folds``, ``accuracy``
        (mean over folds), ``accuracy_std``, ``fold_accuracies``, ``best_thresholds``
        (squared distance per fold), ``best_cosine_thresholds`` (``1 - t / 2``),
        ``far``, ``tar_at_far``, ``tar_threshold`` (cosine; accept iff ``cos >``),
        ``achieved_far``, ``far_resolved``, ``embedding_norm``.

    Raises:
        ValueError: shapes do not match, non-finite embeddings, or one class is empty.
    """
    embeddings = np.asarray(embeddings)
    same = np.asarray(issame)
    if same.dtype != np.bool_:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("issame must hold booleans (or 0/1)")
        same = same.astype(bool)
    if embeddings.ndim != 2 or same.ndim != 1 or embeddings.shape[0] != 2 * same.shape[0]:
        raise ValueError(f"embeddings must be (2N, D) for N = len(issame) = {same.shape[0]}, got {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or inf")
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    unit = l2_normalize(embeddings)
    first, second = unit[0::2], unit[1::2]
    dist = np.sum(np.square(first - second), axis=1)

    fold_accuracies, best_thresholds = [], []
    for train, test in kfold_splits(same.size, n_folds):
        best = int(np.argmax(_fold_accuracy(dist[train], same[train], INSIGHTFACE_THRESHOLDS)))
        threshold = INSIGHTFACE_THRESHOLDS[best]
        predicted = dist[test] < threshold
        fold_accuracies.append(float(np.mean(predicted == same[test])))
        best_thresholds.append(float(threshold))

    cosine = np.sum(first * second, axis=1)
    (point,) = tpr_at_fpr(cosine, same, [far])
    return {
        "pairs": int(same.size),
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "n_folds": int(n_folds),
        "accuracy": float(np.mean(fold_accuracies)),
        "accuracy_std": float(np.std(fold_accuracies)),
        "fold_accuracies": fold_accuracies,
        "best_thresholds": best_thresholds,
        "best_cosine_thresholds": [1.0 - t / 2.0 for t in best_thresholds],
        "far": float(far),
        "tar_at_far": point.tpr,
        "tar_threshold": point.threshold,
        "achieved_far": point.fpr,
        "far_resolved": point.resolved,
        "embedding_norm": float(norms.mean()),
    }


def list_bin_targets(data_dir: str | os.PathLike) -> list[str]:
    """Names (file stems) of the ``.bin`` files in ``data_dir``, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"verification data directory {data_dir} does not exist")
    return sorted(p.stem for p in data_dir.glob("*.bin") if p.is_file())


def load_bins(data_dir: str | os.PathLike, targets: Iterable[str] | None = None) -> list[VerificationBin]:
    """Read ``<data_dir>/<target>.bin`` for each target (default: every ``.bin`` there).

    Returns the decoded sets in the order of ``targets``.

    Raises:
        FileNotFoundError: the directory, or a requested target, is missing (the message
            lists the sets that are present); also when no ``.bin`` file is found at all.
    """
    data_dir = Path(data_dir)
    present = list_bin_targets(data_dir)
    names = list(targets) if targets is not None else present
    missing = [name for name in names if name not in present]
    if missing:
        expected = ", ".join(str(data_dir / f"{name}.bin") for name in missing)
        raise FileNotFoundError(f"missing verification sets: {expected}; present in {data_dir}: {present or 'none'}")
    if not names:
        raise FileNotFoundError(f"no .bin verification sets in {data_dir}")
    return [read_bin(data_dir / f"{name}.bin") for name in names]


def unique_images(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct images of a batch, keyed by their pixel bytes.

    Returns ``(first, inverse)``: ``first`` the index of the first occurrence of each
    distinct image (in order of appearance), ``inverse`` for every image its row in
    ``images[first]``, so that ``images[first][inverse]`` equals ``images``.
    """
    rows: dict[bytes, int] = {}
    first: list[int] = []
    inverse = np.empty(len(images), dtype=np.int64)
    for index, image in enumerate(images):
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        row = rows.setdefault(key, len(first))
        if row == len(first):
            first.append(index)
        inverse[index] = row
    return np.asarray(first, dtype=np.int64), inverse


def evaluate_bins(
    model: Embedder | nn.Module,
    bins: Iterable[VerificationBin],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    n_folds: int = 10,
) -> dict[str, dict[str, Any]]:
    """Run :func:`evaluate_verification` on each verification set.

    Args:
        model: an :class:`~facevib.eval.embed.Embedder`, or a torch backbone (any mode: it is
            run in eval mode and its previous mode restored, so the training loop can call
            this between steps).
        bins: :class:`facevib.data.bins.VerificationBin` objects (``.name``, ``.images``
            ``(2N, 112, 112, 3)`` uint8 RGB, ``.issame``), e.g. from :func:`load_bins`.
        batch_size: images per forward pass (torch models only; an Embedder keeps its own).
        device: where a torch model runs (None: where its parameters are).
        n_folds: folds of the threshold cross-validation.

    Returns:
        ``{set name: result}``, each result as :func:`evaluate_verification`'s plus ``xnorm``
        and ``unique_images`` (the distinct images embedded; see :func:`unique_images`).
    """
    embedder = (
        model if isinstance(model, Embedder) else Embedder.from_module(model, device=device, batch_size=batch_size)
    )
    results: dict[str, dict[str, Any]] = {}
    for verification_bin in bins:
        # Sets reuse photos across pairs (LFW's 6,000 pairs hold 7,701 images, not 12,000):
        # each distinct image is embedded once and its embedding copied to every pair using it.
        first, inverse = unique_images(verification_bin.images)
        plain, flipped = embedder.embed_with_flip(verification_bin.images[first])
        plain, flipped = plain[inverse], flipped[inverse]
        xnorm = float(np.concatenate([np.linalg.norm(plain, axis=1), np.linalg.norm(flipped, axis=1)]).mean())
        result = evaluate_verification(plain + flipped, verification_bin.issame, n_folds=n_folds)
        result["xnorm"] = xnorm
        result["unique_images"] = int(first.size)
        results[verification_bin.name] = result
    return results
