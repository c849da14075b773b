"""What the per-image uncertainty of a VIB model tracks: image degradation and verification errors.

The uncertainty is :meth:`facevib.models.IResNet.forward_with_uncertainty` (the mean log sigma
of the scored VIB cells, one pass with the embedding): column ``uncertainty``. Side by side,
the same measurements for two alternatives: ``all_cells``, the same statistic over every VIB
cell of a cellVIB model (the early cells carry the largest KL weights of the linear beta
schedule; the exported score uses the deepest stage, whose weights approach 0), and a score
every face model has, the embedding norm (low norm = poor image, the observation behind
MagFace), reported as ``-norm`` so that for all scores higher = less certain. ``clean std`` is
the spread of each score over the clean crops.

1. Controlled degradations of held-out aligned crops (every image of the ``.bin`` sets of
   ``--data``, up to ``--images``): Gaussian blur, Gaussian noise and a grey occluder, each at
   4 increasing levels. Per degradation: the mean over images of Spearman's rho between the
   level (0..4) and the score; the fraction of images whose score at level 4 exceeds level 0;
   and, pooled over all degraded images, Spearman's rho between the score and the identity
   damage ``1 - cos(embedding, clean embedding)``.
2. Verification errors on the ``.bin`` pairs, scored like the server (one image, no flip):
   pairs are decided at the accuracy-maximising cosine threshold; a pair's score is the larger
   of its two images' scores; reported: the AUROC of that score for telling wrong decisions
   from right ones (0.5 = no information) and the error rate in the most uncertain 20% of
   pairs vs the other 80%.

    python benchmarks/uncertainty.py --model runs/synthetic_r18_cellvib/backbone.pt \\
        --data data/synthetic --out results/uncertainty.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from facevib.data.transforms import images_to_tensor
from facevib.eval.verification import l2_normalize, load_bins
from facevib.models import IResNet, load_backbone

LEVELS = 4
# Strength per level 1..4 (level 0 is the clean crop).
BLUR_SIGMA_PX = (0.8, 1.6, 2.4, 3.2)
NOISE_SIGMA = (6.0, 12.0, 24.0, 36.0)  # 8-bit levels
OCCLUDED_FRACTION = (0.08, 0.16, 0.28, 0.4)  # of the crop's area, a square around a face point
# Points the occluder is centred on: eyes, nose, mouth (ArcFace template, 112 px).
_FACE_POINTS = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [56.1, 92.3]])


def blur(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA_PX[level - 1])


def noise(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32) * NOISE_SIGMA[level - 1]
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def occlude(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    side = int(round(np.sqrt(OCCLUDED_FRACTION[level - 1]) * image.shape[0]))
    cx, cy = _FACE_POINTS[rng.integers(len(_FACE_POINTS))]
    x0, y0 = (
        int(np.clip(cx - side / 2, 0, image.shape[1] - side)),
        int(np.clip(cy - side / 2, 0, image.shape[0] - side)),
    )
    out = image.copy()
    out[y0 : y0 + side, x0 : x0 + side] = 128
    return out


DEGRADATIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "blur": blur,
    "noise": noise,
    "occlusion": occlude,
}


class Scorer:
    """Embeddings (single image, no flip, eval mode) and the per-image scores, from one pass each.

    ``all_cells`` is read by forward pre-hooks on every VIB cell block during that same pass.
    """

    def __init__(self, model: IResNet, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self._cells: list[torch.Tensor] = []
        blocks = [block for block in model.iter_blocks() if block.vib is not None]
        for block in blocks:
            block.register_forward_pre_hook(self._record)
        self.keys = ("uncertainty", "all_cells", "-norm") if blocks else ("uncertainty", "-norm")

    def _record(self, block: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._cells.append(block.vib.log_sigma(args[0]).flatten(1).mean(dim=1))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        embeddings, scores = [], {key: [] for key in self.keys}
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                self._cells.clear()
                emb, unc = self.model.forward_with_uncertainty(
                    images_to_tensor(images[start : start + self.batch_size])
                )
                embeddings.append(emb.numpy())
                scores["uncertainty"].append(unc.numpy())
                scores["-norm"].append(-emb.norm(dim=1).numpy())
                if "all_cells" in scores:
                    scores["all_cells"].append(torch.stack(self._cells).mean(dim=0).numpy())
        return np.concatenate(embeddings), {key: np.concatenate(value) for key, value in scores.items()}


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    value = spearmanr(a, b).statistic
    return float(value) if np.isfinite(value) else 0.0  # constant input: no rank information


def degradation_study(scorer: Scorer, images: np.ndarray, seed: int) -> dict[str, dict[str, Any]]:
    """Per degradation and score: level rho, fraction increasing, rho with identity damage."""
    clean_emb, clean_scores = scorer(images)
    clean_unit = l2_normalize(clean_emb)
    results: dict[str, dict[str, Any]] = {
        "clean": {
            key: {"std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
            for key, v in clean_scores.items()
        }
    }
    for name, degrade in DEGRADATIONS.items():
        rng = np.random.default_rng([seed, len(results) - 1])
        per_level = {key: [value] for key, value in clean_scores.items()}
        damage = []
        for level in range(1, LEVELS + 1):
            degraded = np.stack([degrade(image, level, rng) for image in images])
            emb, scores = scorer(degraded)
            damage.append(1.0 - np.sum(l2_normalize(emb) * clean_unit, axis=1))
            for key, value in scores.items():
                per_level[key].append(value)
        damage_all = np.concatenate(damage)
        levels = np.arange(LEVELS + 1)
        results[name] = {"mean_identity_damage_by_level": [0.0] + [float(d.mean()) for d in damage]}
        for key, values in per_level.items():
            table = np.stack(values, axis=1)  # (images, levels)
            results[name][key] = {
                "level_rho": float(np.mean([_rho(levels, row) for row in table])),
                "frac_increasing": float(np.mean(table[:, -1] > table[:, 0])),
                "damage_rho": _rho(np.concatenate(values[1:]), damage_all),
                "mean_by_level": [float(v.mean()) for v in values],
            }
    return results


def error_study(scorer: Scorer, data: Path, max_pairs: int) -> dict[str, Any]:
    """AUROC of the pair score for wrong decisions at the best-accuracy threshold."""
    cosines, same, pair_scores = [], [], {key: [] for key in scorer.keys}
    for verification_bin in load_bins(data):
        count = min(len(verification_bin.issame), max_pairs)
        emb, scores = scorer(verification_bin.images[: 2 * count])
        unit = l2_normalize(emb)
        cosines.append(np.sum(unit[0::2] * unit[1::2], axis=1))
        same.append(np.asarray(verification_bin.issame[:count], bool))
        for key, value in scores.items():
            pair_scores[key].append(np.maximum(value[0::2], value[1::2]))
    cosine, same = np.concatenate(cosines), np.concatenate(same)
    candidates = np.unique(cosine)
    accuracy = [np.mean((cosine > t) == same) for t in candidates]
    threshold = float(candidates[int(np.argmax(accuracy))])
    wrong = (cosine > threshold) != same
    out: dict[str, Any] = {
        "pairs": int(cosine.size),
        "threshold": threshold,
        "accuracy": float(1.0 - wrong.mean()),
        "errors": int(wrong.sum()),
    }
    for key, values in pair_scores.items():
        score = np.concatenate(values)
        top = score >= np.quantile(score, 0.8)
        out[key] = {
            "error_auroc": float(roc_auc_score(wrong, score)) if 0 < wrong.sum() < wrong.size else None,
            "error_rate_top20": float(wrong[top].mean()),
            "error_rate_rest80": float(wrong[~top].mean()),
        }
    return out


def _table(degradation: dict[str, dict[str, Any]], errors: dict[str, Any], keys: Sequence[str]) -> str:
    lines = [
        f"{'test':<28}" + "".join(f"{k:>14}" for k in keys),
        "-" * (28 + 14 * len(keys)),
        f"{'clean std':<28}" + "".join(f"{degradation['clean'][k]['std']:>14.4g}" for k in keys),
    ]
    for name, result in degradation.items():
        if name == "clean":
            continue
        for metric, label in (
            ("level_rho", "rho(level)"),
            ("frac_increasing", "P(lvl4 > lvl0)"),
            ("damage_rho", "rho(id damage)"),
        ):
            lines.append(f"{name + ' ' + label:<28}" + "".join(f"{result[k][metric]:>14.3f}" for k in keys))
    for metric, label in (
        ("error_auroc", "error AUROC"),
        ("error_rate_top20", "err rate top 20%"),
        ("error_rate_rest80", "err rate rest 80%"),
    ):
        cells = "".join(
            f"{errors[k][metric]:>14.3f}" if errors[k][metric] is not None else f"{'n/a':>14}" for k in keys
        )
        lines.append(f"{'verification ' + label:<28}" + cells)
    lines.append(
        f"verification: {errors['pairs']} pairs, accuracy {errors['accuracy']:.3f} at cosine > {errors['threshold']:.3f}, "
        f"{errors['errors']} errors"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="facevib checkpoint of a cellvib_/deepvib_ model")
    parser.add_argument("--data", required=True, type=Path, help="folder of verification .bin files (held-out)")
    parser.add_argument("--images", type=int, default=200, help="clean crops for the degradation study")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs per .bin set for the error study")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        model = load_backbone(args.model)
        if not getattr(model, "has_uncertainty", False):
            raise ValueError(f"{args.model}: model {model.name!r} has no sigma branches")
        scorer = Scorer(model)
        pool = np.concatenate([b.images for b in load_bins(args.data)])
    except (FileNotFoundError, ValueError) as err:
        print(f"uncertainty.py: error: {err}", file=sys.stderr)
        return 2
    images = pool[np.random.default_rng(args.seed).permutation(len(pool))[: args.images]]
    degradation = degradation_study(scorer, images, args.seed)
    errors = error_study(scorer, args.data, args.pairs)
    print(
        f"model {args.model} ({model.name}), {len(images)} clean crops x {len(DEGRADATIONS)} degradations x {LEVELS} levels"
    )
    print(_table(degradation, errors, scorer.keys))
    result = {
        "model": str(args.model),
        "model_name": model.name,
        "uncertainty_cells": list(getattr(model, "uncertainty_cells", ())),
        "images": int(len(images)),
        "levels": {"blur_sigma_px": BLUR_SIGMA_PX, "noise_sigma": NOISE_SIGMA, "occluded_fraction": OCCLUDED_FRACTION},
        "degradation": degradation,
        "verification_errors": errors,
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
