"""Template features and pair scores for set-to-set (IJB) verification, vectorised.

Template aggregation follows insightface's IJB scripts (``image2template_feature`` with
``use_norm_score=True, use_detector_score=True, use_flip_test=True``):

1. an image's feature is its image + flip embedding sum, *not* normalised, multiplied by a
   per-image weight (insightface: the detector's face score);
2. the features of a template's images from the same media (frames of one video, or one
   still) are averaged;
3. the media features are **summed** (a mean would give the same direction: the next step
   removes the scale);
4. the sum is L2-normalised (float64, as sklearn's ``normalize``; all-zero stays zero).

The reference loops over templates with ``np.where`` per template and media; here one stable
sort by (template, media) and two vectorised run sums (:func:`_sum_runs`) do it, in the same
float32 arithmetic and the same summation order, so the template features match the
reference's to the last bit before normalisation.

Pair scores are cosines of template features. The reference gathers both features of every
pair (15.7M x 2 x 512 values on IJB-C) in float64, 100k pairs at a time. Here the distinct
"left" and "right" templates of the pairs span a block of scores that matrix products fill
in float32, by tiles of left templates: IJB protocols compare a few thousand gallery
templates with all probe templates (IJB-C: 3.5k x 19.6k, 23% of the block present), so the
product wastes little, and each tile's pairs are picked from it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facevib.eval.verification import l2_normalize

__all__ = ["fusion_weights", "template_features", "template_rows", "score_pairs"]

Progress = Callable[[int], object]


def fusion_weights(face_scores: np.ndarray, uncertainty: np.ndarray | None = None) -> np.ndarray:
    """Per-image weights for template aggregation, float32.

    Without ``uncertainty``: the detector face scores (insightface's weighting). With it:
    ``w = face_score * exp(-2 (u - min u))``, where ``u`` is the model's per-image uncertainty
    (:meth:`facevib.models.IResNet.forward_with_uncertainty`: the mean log sigma of the VIB
    cells closest to the embedding, averaged over their elements, or of the Deep VIB
    embedding). ``exp(-2u)`` is the reciprocal of the geometric mean of those cells' sigma^2,
    so an image whose cells learned to be noisier counts less.

    This is a heuristic quality weight, not inverse-variance weighting: ``exp(u)`` is not the
    standard deviation of the embedding (hidden-cell sigmas have no closed-form effect on
    it), and the cosine template score is not a Gaussian maximum-likelihood mean. Whether it
    helps is an empirical question: ``benchmarks/uncertainty.py`` measures how ``u`` tracks
    image degradation and verification errors. Subtracting ``min u`` rescales every weight by
    one constant, which the final normalisation removes, and keeps ``exp`` in ``(0, 1]``.
    """
    scores = np.asarray(face_scores, dtype=np.float32)
    if uncertainty is None:
        return scores
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != scores.shape:
        raise ValueError(f"uncertainty has shape {u.shape}, face scores {scores.shape}")
    if not np.isfinite(u).all():
        raise ValueError(
            f"uncertainty holds non-finite values at images {np.flatnonzero(~np.isfinite(u))[:5].tolist()}"
        )
    return (scores * np.exp(-2.0 * (u - u.min()))).astype(np.float32)


def _sum_runs(x: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[i]`` = sum of the ``sizes[i]`` consecutive rows of run ``i`` (runs tile ``x``).

        Rows are added in order (first row, + second, + third, ...): the order in which
        ``np.mean``/``np.sum`` over axis 0 accumulate, so the sums equal the reference's bit for
        bit. Vectorised across runs: step ``k`` adds the ``k``-th row of every run longer than
        ``k`` (``np.add.reduceat`` computes the same but walks memory across rows and was several times
    slower; see ``docs/results.md``).
    """
    starts = np.r_[0, np.cumsum(sizes[:-1])]
    by_size = np.argsort(-sizes, kind="stable")
    longer = np.cumsum(np.bincount(sizes)[::-1])[::-1]  # longer[k]: runs with size >= k
    np.take(x, starts, axis=0, out=out)
    for k in range(1, int(sizes.max())):
        runs = by_size[: longer[k + 1]]
        out[runs] += x[starts[runs] + k]
    return out


def template_features(
    features: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    chunk_images: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate image features into unit-norm template features (module docstring, steps 1-4).

    Args:
        features: ``(N, D)`` float32 image features (image + flip sums, not normalised).
        templates, medias: ``(N,)`` integer template and media id of each image.
        weights: ``(N,)`` per-image weights (e.g. :func:`fusion_weights`), or None for 1.
        chunk_images: images weighted/gathered at a time (bounds the extra memory).

    Returns:
        ``(template_ids, template_features)``: sorted distinct template ids ``(T,)`` and
        their L2-normalised features ``(T, D)`` float32.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.dtype != np.float32:
        raise ValueError(f"features must be a float32 (N, D) array, got {features.dtype} {features.shape}")
    count, dim = features.shape
    templates, medias = np.asarray(templates), np.asarray(medias)
    if templates.shape != (count,) or medias.shape != (count,):
        raise ValueError(f"templates {templates.shape} and medias {medias.shape} must be ({count},)")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (count,):
            raise ValueError(f"weights must be ({count},), got {weights.shape}")
    if count == 0:
        raise ValueError("no image features to aggregate")

    # Stable: images of one media keep their file order, as np.where yields them.
    order = np.lexsort((medias, templates))
    in_order = bool((order == np.arange(count)).all())
    sorted_templates, sorted_medias = templates[order], medias[order]
    template_start = np.r_[True, sorted_templates[1:] != sorted_templates[:-1]]
    media_start = template_start | np.r_[True, sorted_medias[1:] != sorted_medias[:-1]]
    media_first = np.flatnonzero(media_start)  # image position where each media begins
    media_sizes = np.diff(np.r_[media_first, count])
    template_first_media = np.flatnonzero(template_start[media_first])  # first media of each template
    template_sizes = np.diff(np.r_[template_first_media, media_first.size])  # medias per template
    template_ids = sorted_templates[media_first[template_first_media]]
    num_medias = media_first.size

    media_means = np.empty((num_medias, dim), np.float32)
    gathered = np.empty((0, dim), np.float32)  # reused: a fresh buffer costs a page fault per 4 kB
    lo = 0
    while lo < num_medias:
        # Whole medias per chunk, at least one, about chunk_images images.
        start = media_first[lo]
        hi = max(lo + 1, int(np.searchsorted(media_first, start + chunk_images, side="left")))
        stop = media_first[hi] if hi < num_medias else count
        if in_order and weights is None:
            x = features[start:stop]
        else:
            if gathered.shape[0] < stop - start:
                gathered = np.empty((max(stop - start, chunk_images), dim), np.float32)
            x = gathered[: stop - start]
            rows = slice(start, stop) if in_order else order[start:stop]
            if in_order:
                np.multiply(features[rows], weights[rows, None], out=x)
            else:
                np.take(features, rows, axis=0, out=x)
                if weights is not None:
                    x *= weights[rows, None]  # the reference's float32 feature * score
        _sum_runs(x, media_sizes[lo:hi], media_means[lo:hi])
        media_means[lo:hi] /= media_sizes[lo:hi, None].astype(np.float32)
        lo = hi
    sums = _sum_runs(media_means, template_sizes, np.empty((template_ids.size, dim), np.float32))
    return template_ids, l2_normalize(sums).astype(np.float32)


def template_rows(template_ids: np.ndarray, wanted: np.ndarray, *, what: str = "pairs") -> np.ndarray:
    """Row of each id of ``wanted`` in the sorted ``template_ids``; unknown ids raise ValueError.

    IJB template ids are small integers: a dense lookup table (one gather) replaces a binary
    search per pair when the id range is at most a few times the number of templates.
    """
    wanted = np.asarray(wanted)
    if wanted.size == 0:
        return np.zeros(0, np.int64)
    lo, hi = int(template_ids[0]), int(template_ids[-1])
    inside = lo <= int(wanted.min()) and int(wanted.max()) <= hi
    if inside and hi - lo < max(4 * template_ids.size, 1 << 20):
        table = np.full(hi - lo + 1, -1, np.int32)
        table[template_ids - lo] = np.arange(template_ids.size, dtype=np.int32)
        rows = table[wanted - lo]
        unknown = rows < 0
    else:
        rows = np.minimum(np.searchsorted(template_ids, wanted), template_ids.size - 1)
        unknown = template_ids[rows] != wanted
    if unknown.any():
        missing = np.unique(wanted[unknown])
        raise ValueError(f"{what} name {missing.size} templates without features (e.g. {missing[:5].tolist()})")
    return rows


def _compact(indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct used indices ascending, position of each entry among them) in O(n)."""
    used = np.zeros(size, bool)
    used[indices] = True
    position = np.cumsum(used, dtype=np.int32) - 1  # int32 halves the per-pair arrays
    return np.flatnonzero(used), position[indices]


def _score_by_tiles(
    features: np.ndarray,
    left_rows: np.ndarray,
    left_pos: np.ndarray,
    right_block: np.ndarray,
    right_pos: np.ndarray,
    tile: int,
    scores: np.ndarray,
    progress: Progress | None,
) -> None:
    """Pairs bucketed by tile of left templates; each tile's scores by one matrix product."""
    tile_of = left_pos // tile
    num_tiles = -(-left_rows.size // tile)
    if np.all(tile_of[1:] >= tile_of[:-1]):  # already grouped (e.g. pairs listed by template)
        order = None
    else:
        # Few distinct keys: numpy's stable sort is a radix sort for 16-bit integers.
        key = tile_of.astype(np.int16) if num_tiles < 2**15 else tile_of
        order = np.argsort(key, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(tile_of, minlength=num_tiles))]
    block = np.empty((tile, right_block.shape[0]), np.float32)  # reused: see template_features
    for t in range(num_tiles):
        lo, hi = bounds[t], bounds[t + 1]
        if lo == hi:
            continue
        members = slice(lo, hi) if order is None else order[lo:hi]
        rows = left_rows[t * tile : (t + 1) * tile]
        products = block[: rows.size]
        np.matmul(features[rows], right_block.T, out=products)
        scores[members] = products[left_pos[members] - t * tile, right_pos[members]]
        if progress is not None:
            progress(int(hi - lo))


def score_pairs(
    features: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    *,
    progress: Progress | None = None,
    tile_bytes: int = 64 << 20,
) -> np.ndarray:
    """Cosine score of each pair ``(features[left[i]], features[right[i]])``, float32 ``(P,)``.

    The distinct left and right templates span a block of scores (IJB-C: 3.5k x 19.6k, 23%
    filled by its pairs). The pairs are bucketed by tiles of left templates, ``tile_bytes`` of
    scores each; every tile is one matrix product against all right templates, and its pairs
    are picked from it.

    Args:
        features: ``(T, D)`` float32 unit-norm template features.
        left, right: ``(P,)`` row indices into ``features``.
        progress: called with numbers of pairs done, adding up to ``P`` (e.g. a tqdm's
            ``update``).
        tile_bytes: memory of one tile of scores (at least one left template per tile).

    Scores agree with a float64 evaluation to float32 rounding: a few float32 ulps, under
    1e-6 for 512-d unit vectors (the reference gathers and sums in float64).
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    left, right = np.asarray(left), np.asarray(right)
    if features.ndim != 2:
        raise ValueError(f"features must be (T, D), got {features.shape}")
    if left.shape != right.shape or left.ndim != 1:
        raise ValueError(f"left and right must be 1-D of equal length, got {left.shape} and {right.shape}")
    num_templates = features.shape[0]
    for name, index in (("left", left), ("right", right)):
        if index.size and (index.min() < 0 or index.max() >= num_templates):
            raise ValueError(f"{name} indices must be in [0, {num_templates}), got [{index.min()}, {index.max()}]")
    scores = np.empty(left.size, np.float32)
    if left.size == 0:
        return scores

    left_rows, left_pos = _compact(left, num_templates)
    right_rows, right_pos = _compact(right, num_templates)
    right_block = features[right_rows]
    tile = max(1, min(left_rows.size, tile_bytes // (4 * right_rows.size)))
    _score_by_tiles(features, left_rows, left_pos, right_block, right_pos, tile, scores, progress)
    return scores
