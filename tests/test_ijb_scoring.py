"""Template aggregation, pair scoring and 1:N metrics against straightforward re-implementations."""

from __future__ import annotations

import numpy as np
import pytest

from facevib.eval.identification import average_galleries, identification_metrics
from facevib.eval.templates import fusion_weights, score_pairs, template_features, template_rows


def _reference_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple:
    """insightface's image2template_feature loop, re-written: np.where per template and media."""
    unique_templates = np.unique(templates)
    out = np.zeros((unique_templates.size, features.shape[1]))
    for row, template in enumerate(unique_templates):
        (in_template,) = np.where(templates == template)
        template_feats, template_medias = features[in_template], medias[in_template]
        media_feats = []
        for media, count in zip(*np.unique(template_medias, return_counts=True), strict=True):
            (in_media,) = np.where(template_medias == media)
            media_feats.append(
                template_feats[in_media] if count == 1 else template_feats[in_media].mean(0, keepdims=True)
            )
        out[row] = np.sum(np.array(media_feats), axis=0)
    return unique_templates, out / np.sqrt(np.sum(out**2, -1, keepdims=True))


def _random_set(seed: int, images: int = 3000, templates: int = 250, dim: int = 32) -> tuple:
    rng = np.random.default_rng(seed)
    template_of = rng.integers(1, 10 * templates, templates)  # sparse, unordered ids
    tids = rng.choice(np.unique(template_of), images)
    mids = tids * 100 + rng.integers(0, 4, images)  # up to 4 media per template
    mids[rng.random(images) < 0.1] = 7  # a media id shared across templates stays per template
    features = rng.normal(size=(images, dim)).astype(np.float32)
    scores = rng.uniform(0.1, 1.0, images).astype(np.float32)
    return features, tids, mids, scores


@pytest.mark.parametrize("chunk", [65536, 97, 1])
def test_template_features_equal_the_reference_loop(chunk: int) -> None:
    features, tids, mids, scores = _random_set(0)
    weighted = features * scores[:, None]
    ref_ids, ref_feats = _reference_templates(weighted, tids, mids)
    ids, feats = template_features(features, tids, mids, scores, chunk_images=chunk)
    np.testing.assert_array_equal(ids, ref_ids)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref_feats, atol=2e-7)


@pytest.mark.parametrize("presorted", [True, False])
def test_template_features_without_weights(presorted: bool) -> None:
    features, tids, mids, _ = _random_set(1)
    order = np.lexsort((mids, tids)) if presorted else np.arange(tids.size)
    ref_ids, ref_feats = _reference_templates(features[order], tids[order], mids[order])
    ids, feats = template_features(features[order], tids[order], mids[order], chunk_images=300)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(feats, ref_feats, atol=2e-7)


def test_template_features_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="float32"):
        template_features(np.zeros((3, 2)), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        template_features(np.zeros((3, 2), np.float32), np.zeros(3), np.zeros(3), np.ones(2))


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    "layout",
    ["bipartite", "uniform", "tiles-sorted", "tiles-shuffled", "small-tiles"],
)
def test_pair_scores_equal_float64_gather(layout: str) -> None:
    rng = np.random.default_rng(2)
    feats = _unit(600, 64, seed=3)
    n = 50_000
    if layout == "uniform":
        left, right = rng.integers(0, 600, n), rng.integers(0, 600, n)
    else:  # IJB-like: 80 gallery templates x 520 probes
        left, right = rng.integers(0, 80, n), rng.integers(80, 600, n)
    if layout == "tiles-sorted":
        order = np.argsort(left, kind="stable")
        left, right = left[order], right[order]
    kwargs = {
        "tiles-sorted": {"tile_bytes": 4 * 520 * 9},
        "tiles-shuffled": {"tile_bytes": 4 * 520 * 9},
        "small-tiles": {"tile_bytes": 1},  # one left template per tile
    }.get(layout, {})
    seen = []
    scores = score_pairs(feats, left, right, progress=seen.append, **kwargs)
    expected = np.sum(feats[left].astype(np.float64) * feats[right].astype(np.float64), axis=1)
    assert scores.dtype == np.float32 and sum(seen) == n
    np.testing.assert_allclose(scores, expected, atol=3e-7, rtol=0)


def test_pair_scoring_edge_cases() -> None:
    feats = _unit(5, 8, seed=0)
    assert score_pairs(feats, np.array([], int), np.array([], int)).shape == (0,)
    with pytest.raises(ValueError, match=r"right indices must be in \[0, 5\)"):
        score_pairs(feats, np.array([0]), np.array([5]))
    with pytest.raises(ValueError, match="equal length"):
        score_pairs(feats, np.array([0, 1]), np.array([1]))


def test_template_rows_names_unknown_templates() -> None:
    ids = np.array([3, 8, 20])
    np.testing.assert_array_equal(template_rows(ids, np.array([20, 3, 8, 8])), [2, 0, 1, 1])
    with pytest.raises(ValueError, match=r"2 templates without features \(e.g. \[4, 99\]\)"):
        template_rows(ids, np.array([3, 4, 99]))  # outside the id range: binary search
    with pytest.raises(ValueError, match=r"1 templates without features \(e.g. \[4\]\)"):
        template_rows(ids, np.array([3, 4, 20]))  # inside it: lookup table
    sparse_ids = np.array([5, 10**9])
    np.testing.assert_array_equal(template_rows(sparse_ids, np.array([10**9, 5])), [1, 0])


def test_fusion_weights() -> None:
    scores = np.array([0.9, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(fusion_weights(scores), scores)
    u = np.array([-3.0, -2.0, -3.5])  # mean log sigma
    np.testing.assert_allclose(fusion_weights(scores, u), scores * np.exp(-2 * (u + 3.5)), rtol=1e-6)
    # Only ratios matter: the same as 1/sigma^2 with sigma = exp(u), up to one constant.
    ratio = fusion_weights(scores, u) / (scores / np.exp(u) ** 2)
    np.testing.assert_allclose(ratio / ratio[0], 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        fusion_weights(scores, np.array([0.0, np.nan, 1.0]))


def _brute_force_1n(probes, probe_subjects, gallery, gallery_subjects, fpirs, ranks):
    """Per-probe loops: ranks with ties counted against the probe; TPIR by threshold sweep."""
    sims = probes.astype(np.float64) @ gallery.astype(np.float64).T
    ranks_of, mate_scores, non_mated_best = [], [], []
    for q, subject in enumerate(probe_subjects):
        hits = np.flatnonzero(gallery_subjects == subject)
        if hits.size:
            mate = sims[q, hits[0]]
            ranks_of.append(int(np.sum(sims[q] >= mate)))
            mate_scores.append(mate)
        else:
            non_mated_best.append(sims[q].max())
    ranks_of, mate_scores, non_mated_best = map(np.array, (ranks_of, mate_scores, non_mated_best))
    out = {f"rank_{k}": float(np.mean(ranks_of <= k)) for k in ranks}
    tpir = []
    for f in fpirs:
        best = 0.0
        for t in np.r_[-np.inf, np.unique(non_mated_best)]:
            if np.mean(non_mated_best > t) <= f + 1e-12:
                best = max(best, float(np.mean((ranks_of == 1) & (mate_scores > t))))
        tpir.append(best)
    return out, tpir


@pytest.mark.parametrize("seed", [0, 1])
def test_identification_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    subjects = 40
    centres = _unit(subjects, 16, seed=seed + 10)
    gallery_subjects = rng.permutation(subjects)[:25]  # 15 subjects not enrolled
    gallery = centres[gallery_subjects] + rng.normal(scale=0.3, size=(25, 16))
    probe_subjects = rng.integers(0, subjects, 300)
    probes = centres[probe_subjects] + rng.normal(scale=0.6, size=(300, 16))
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    # Multiples of 1/8 make every score exact in float32 (so ties are ties in both
    # implementations) and create many of them.
    gallery, probes = np.round(gallery * 8) / 8, np.round(probes * 8) / 8
    fpirs, ranks = (0.01, 0.1, 0.3), (1, 5)
    result = identification_metrics(probes, probe_subjects, gallery, gallery_subjects, fpirs, ranks, chunk=37)
    expected_ranks, expected_tpir = _brute_force_1n(probes, probe_subjects, gallery, gallery_subjects, fpirs, ranks)
    assert result["mated"] + result["non_mated"] == 300 and result["gallery"] == 25
    for key, value in expected_ranks.items():
        assert result[key] == pytest.approx(value)
    assert [p["tpir"] for p in result["tpir_at_fpir"]] == pytest.approx(expected_tpir)
    assert all(p["achieved_fpir"] <= p["fpir"] for p in result["tpir_at_fpir"])


def test_identification_closed_set_and_duplicates() -> None:
    feats = _unit(4, 8, seed=0)
    closed = identification_metrics(feats, np.arange(4), feats, np.arange(4), ranks=(1,))
    assert closed["rank_1"] == 1.0 and closed["non_mated"] == 0 and closed["tpir_at_fpir"] == []
    with pytest.raises(ValueError, match=r"enrols subjects \[1\] more than once"):
        identification_metrics(feats, np.arange(4), feats, np.array([0, 1, 1, 2]))
    mean = average_galleries([closed, dict(closed, rank_1=0.5)])
    assert mean["rank_1"] == 0.75


def test_run_sums_add_rows_in_numpy_order_bit_for_bit() -> None:
    from facevib.eval.templates import _sum_runs

    rng = np.random.default_rng(5)
    sizes = np.where(rng.random(300) < 0.5, 1, rng.integers(2, 40, 300))
    x = (rng.normal(size=(sizes.sum(), 16)) * rng.uniform(0.1, 100, (sizes.sum(), 1))).astype(np.float32)
    got = _sum_runs(x, sizes, np.empty((sizes.size, 16), np.float32))
    starts = np.r_[0, np.cumsum(sizes[:-1])]
    expected = np.array([np.sum(x[a : a + n], axis=0) for a, n in zip(starts, sizes, strict=True)])
    np.testing.assert_array_equal(got, expected)  # the reference's np.mean sums in this order
