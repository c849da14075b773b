"""IJB-C-sized template aggregation + pair scoring: facevib vs the reference algorithm, on CPU.

    python benchmarks/ijb_scoring.py --out ijb_scoring.json
    python benchmarks/ijb_scoring.py --images 100000 --scenarios ijbc-sorted --out small.json

Synthetic data with IJB-C's 1:1 structure (its published sizes): 3,531 gallery
templates (one per subject) and 19,593 probe templates (23,124 in all); each template is
1 + Poisson(2) media, each media a still (1 image, p = 0.55) or a video's frames
(1 + Geometric, mean 12.5), scaled to ~469k images in all, listed template by template as in
``ijbc_face_tid_mid.txt``; 512-d float32 features (subject direction + template offset +
image noise: TPR from ~0.1 at FPR 1e-6 to ~0.99 at 1e-1), detector scores in [0.1, 1].
Pairs: each probe with its mate (19,557 genuine pairs; 36 probes have none) and ~798 other
gallery templates drawn without replacement, 15,658,489 pairs in all.

Scenarios (pair lists): ``ijbc-sorted`` (sorted by gallery then probe template),
``ijbc-shuffled`` (same pairs, random order) and ``uniform`` (as many pairs between any two
templates: no gallery/probe structure, the worst case for facevib's tile products).

Reference: arcface_torch's ``eval_ijbc.py`` algorithm re-implemented here (detector-score
weighting, ``image2template_feature``'s per-template ``np.where`` loop with float32 media
means summed into float64 templates, sklearn-style normalisation, then ``verification``'s
100k-pair chunks of float64 gather + multiply + sum). facevib: ``fusion_weights`` +
``template_features`` and ``template_rows`` + ``score_pairs`` (float32 matrix products by
tiles of gallery templates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from facevib.eval.roc import tpr_at_fpr
from facevib.eval.templates import fusion_weights, score_pairs, template_features, template_rows

GALLERY, PROBES, GENUINE, PAIRS, IMAGES = 3531, 19593, 19557, 15_658_489, 469_375
SCENARIOS = ("ijbc-sorted", "ijbc-shuffled", "uniform")
FPRS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# ----------------------------------------------------------------------------- data


def make_images(rng: np.random.Generator, images: int, dim: int) -> dict[str, np.ndarray]:
    """Template/media structure, features and detector scores of an IJB-C-like set."""
    templates_total = GALLERY + PROBES
    media_per_template = 1 + rng.poisson(2.0, templates_total)
    media_total = int(media_per_template.sum())
    is_video = rng.random(media_total) > 0.55
    video_frames = 1 + rng.geometric(1 / 11.5, media_total)
    # Scale the videos' frame counts so that the set holds about `images` images.
    scale = (images - np.count_nonzero(~is_video)) / video_frames[is_video].sum()
    frames = np.where(is_video, np.maximum(1, np.round(video_frames * scale)), 1).astype(np.int64)
    media_template = np.repeat(np.arange(1, templates_total + 1), media_per_template)
    templates = np.repeat(media_template, frames)
    medias = np.repeat(np.arange(1, media_total + 1), frames)
    subject_of_template = np.r_[np.arange(GALLERY), rng.integers(0, GALLERY, PROBES)]
    centres = rng.standard_normal((GALLERY, dim), dtype=np.float32)
    # Template-level noise (pose, session) that averaging images does not remove keeps the
    # genuine scores spread out, so the TPR comparison below is not trivially all ones.
    offsets = rng.standard_normal((templates_total, dim), dtype=np.float32) * np.float32(2.2)
    features = centres[subject_of_template[templates - 1]] + offsets[templates - 1]
    features += rng.standard_normal(features.shape, dtype=np.float32) * np.float32(1.5)
    scores = np.where(
        rng.random(templates.size) < 0.97, rng.uniform(0.9, 1.0, templates.size), rng.uniform(0.1, 0.9, templates.size)
    )
    return {
        "templates": templates,
        "medias": medias,
        "features": features,
        "scores": scores.astype(np.float32),
        "subject_of_template": subject_of_template,
    }


def make_pairs(rng: np.random.Generator, subject_of_template: np.ndarray, scenario: str) -> tuple[np.ndarray, ...]:
    """``(t1, t2, label)`` template-id pairs of one scenario."""
    if scenario == "uniform":
        t1 = rng.integers(1, GALLERY + PROBES + 1, PAIRS)
        t2 = rng.integers(1, GALLERY + PROBES + 1, PAIRS)
        label = subject_of_template[t1 - 1] == subject_of_template[t2 - 1]
        return t1, t2, label.astype(np.int64)
    probe_subject = subject_of_template[GALLERY:]
    with_mate = np.ones(PROBES, bool)
    with_mate[rng.choice(PROBES, PROBES - GENUINE, replace=False)] = False
    impostors = (PAIRS - GENUINE) // PROBES
    extra = (PAIRS - GENUINE) - impostors * PROBES
    counts = impostors + (np.arange(PROBES) < extra)
    lefts, rights, labels = [], [], []
    for probe in range(PROBES):
        mate = probe_subject[probe]
        others = rng.choice(GALLERY - 1, counts[probe], replace=False)
        others += others >= mate  # skip the mate
        gallery = np.r_[mate, others] if with_mate[probe] else others
        lefts.append(gallery + 1)
        rights.append(np.full(gallery.size, GALLERY + probe + 1))
        labels.append((gallery == mate).astype(np.int64))
    t1, t2, label = (np.concatenate(x) for x in (lefts, rights, labels))
    order = np.lexsort((t2, t1)) if scenario == "ijbc-sorted" else rng.permutation(t1.size)
    return t1[order], t2[order], label[order]


# ----------------------------------------------------------------------------- reference


def reference_aggregate(img_feats: np.ndarray, faceness: np.ndarray, templates: np.ndarray, medias: np.ndarray):
    """Detector-score weighting, then image2template_feature's loop, then normalize."""
    img_input_feats = img_feats * faceness[:, np.newaxis]
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_input_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_input_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts, strict=True):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        template_feats[count_template] = np.sum(np.array(media_norm_feats), axis=0)
    norms = np.sqrt(np.einsum("ij,ij->i", template_feats, template_feats))
    norms[norms == 0] = 1.0
    return template_feats / norms[:, np.newaxis], unique_templates


def reference_score(template_norm_feats: np.ndarray, unique_templates: np.ndarray, p1: np.ndarray, p2: np.ndarray):
    """verification(): template2id table, then 100k-pair chunks of gather + multiply + sum."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    for s in [total_pairs[i : i + batchsize] for i in range(0, len(p1), batchsize)]:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(feat1 * feat2, -1).flatten()
    return score


# ----------------------------------------------------------------------------- facevib


def facevib_aggregate(features: np.ndarray, faceness: np.ndarray, templates: np.ndarray, medias: np.ndarray):
    return template_features(features, templates, medias, fusion_weights(faceness))


def facevib_score(template_ids: np.ndarray, unit: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    return score_pairs(unit, template_rows(template_ids, p1), template_rows(template_ids, p2))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- main


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=IMAGES, help="about this many images (default: IJB-C's)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--skip-reference", action="store_true", help="time facevib only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON results path")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {SCENARIOS}")

    rng = np.random.default_rng(args.seed)
    data = make_images(rng, args.images, args.dim)
    templates, medias, features, scores = data["templates"], data["medias"], data["features"], data["scores"]
    print(
        f"{features.shape[0]} images, {np.unique(templates).size} templates, {medias.max()} media, "
        f"{args.dim}-d, on {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    result: dict = {
        "images": int(features.shape[0]),
        "templates": int(np.unique(templates).size),
        "media": int(medias.max()),
        "dim": args.dim,
        "pairs": PAIRS,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scenarios": {},
    }
    (template_ids, unit), ours_agg = timed(facevib_aggregate, features, scores, templates, medias)
    result["aggregation"] = {"facevib_s": ours_agg}
    if not args.skip_reference:
        (ref_unit, ref_ids), ref_agg = timed(reference_aggregate, features, scores, templates, medias)
        assert np.array_equal(ref_ids, template_ids)
        result["aggregation"].update(
            reference_s=ref_agg, speedup=ref_agg / ours_agg, max_abs_diff=float(np.abs(unit - ref_unit).max())
        )
    rows = []
    agg = result["aggregation"]
    rows.append(
        [
            "aggregation",
            f"{agg.get('reference_s', float('nan')):.2f}",
            f"{ours_agg:.2f}",
            f"{agg.get('speedup', float('nan')):.1f}x",
            f"{agg.get('max_abs_diff', float('nan')):.1e}",
            "",
        ]
    )
    for scenario in scenarios:
        p1, p2, label = make_pairs(
            np.random.default_rng([args.seed, SCENARIOS.index(scenario)]), data["subject_of_template"], scenario
        )
        ours, ours_s = timed(facevib_score, template_ids, unit, p1, p2)
        entry: dict = {"facevib_s": ours_s, "facevib_total_s": ours_agg + ours_s, "genuine": int(label.sum())}
        tpr_ours = [p.tpr for p in tpr_at_fpr(ours, label, FPRS)]
        entry["facevib_tpr"] = tpr_ours
        if not args.skip_reference:
            ref, ref_s = timed(reference_score, ref_unit, ref_ids, p1, p2)
            tpr_ref = [p.tpr for p in tpr_at_fpr(ref, label, FPRS)]
            entry.update(
                reference_s=ref_s,
                reference_total_s=ref_agg + ref_s,
                speedup=ref_s / ours_s,
                total_speedup=(ref_agg + ref_s) / (ours_agg + ours_s),
                max_abs_score_diff=float(np.abs(ours - ref).max()),
                reference_tpr=tpr_ref,
                max_abs_tpr_diff=float(np.max(np.abs(np.array(tpr_ours) - np.array(tpr_ref)))),
            )
        result["scenarios"][scenario] = entry
        rows.append(
            [
                f"scoring {scenario}",
                f"{entry.get('reference_s', float('nan')):.2f}",
                f"{ours_s:.2f}",
                f"{entry.get('speedup', float('nan')):.1f}x",
                f"{entry.get('max_abs_score_diff', float('nan')):.1e}",
                f"{entry.get('max_abs_tpr_diff', float('nan')):.1e}",
            ]
        )
        rows.append(
            [
                f"  total {scenario}",
                f"{entry.get('reference_total_s', float('nan')):.2f}",
                f"{entry['facevib_total_s']:.2f}",
                f"{entry.get('total_speedup', float('nan')):.1f}x",
                "",
                "",
            ]
        )
        del p1, p2, label, ours
    print(format_table(["stage", "reference s", "facevib s", "speedup", "max |diff|", "max |TPR diff|"], rows))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
