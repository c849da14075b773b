"""Write a synthetic IJB-C-style directory in the layout insightface distributes.

::

    IJBC/loose_crop/<n>.jpg                 loose crops (not aligned), n = 1, 2, ...
    IJBC/meta/ijbc_face_tid_mid.txt         "<n>.jpg <template id> <media id>"
    IJBC/meta/ijbc_name_5pts_score.txt      "<n>.jpg x1 y1 ... x5 y5 <detector score>" (same order)
    IJBC/meta/ijbc_template_pair_label.txt  "<template 1> <template 2> <1 genuine | 0 impostor>"
    IJBC/meta/ijbc_1N_gallery_G1.csv        1:N protocol, a header line then one row per image:
    IJBC/meta/ijbc_1N_gallery_G2.csv          TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,
    IJBC/meta/ijbc_1N_probe_mixed.csv         FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT

As in IJB-C, every subject has one gallery (enrolment) template, in gallery G1 (even
subjects) or G2 (odd subjects), and probe templates; a template is several media (a photo,
or a video's frames: same scene, slightly moved head), each of one or more images. The 1:1
pairs compare gallery templates with probe templates (genuine: same subject), like
IJB-C's G1/G2-vs-mixed-probe verification list. The 1:N files list the same templates
with their subjects; probes of G2 subjects are non-mated searches against G1 and vice
versa. Landmarks are the detector's (noisy) points in crop pixels, scores are detector
confidences (lower for profiles, occlusion and blur). Both per-image files list images in
the same order, which insightface's scripts rely on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_ijb", "CSV_HEADER"]

CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"
_FIRST_MEDIA_ID = 10001  # media ids in a range of their own, so a reader mixing columns fails loudly


def _face_box(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """A face box around the landmarks, the way detectors frame a face (about 2x the eye-mouth span)."""
    centre = landmarks.mean(axis=0)
    span = max(np.ptp(landmarks[:, 0]), np.ptp(landmarks[:, 1]), 1.0) * 2.0
    x, y = centre[0] - span / 2, centre[1] - span / 2.2
    return int(round(x)), int(round(y)), int(round(span)), int(round(span))


def write_ijb(
    root: str | Path,
    subjects: list[list[list[list[tuple[bytes, np.ndarray, float]]]]],
    rng: np.random.Generator,
    impostor_pairs: int = 0,
) -> dict:
    """Write ``root`` (the ``IJBC`` folder) from rendered subjects.

    ``subjects[s][t][m][f]`` is ``(JPEG bytes, landmarks (5, 2), detector score)`` for frame
    ``f`` of media ``m`` of template ``t`` (``t = 0``: the gallery template) of subject ``s``.
    ``impostor_pairs > 0`` keeps that many impostor pairs (drawn with ``rng``) instead of all.
    """
    root = Path(root)
    crops, meta = root / "loose_crop", root / "meta"
    crops.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    tid_mid, five_points = [], []
    rows: dict[str, list[str]] = {"G1": [], "G2": [], "probe": []}
    gallery_of, probes_of = {}, {}
    template_id, media_id, image_no = 0, _FIRST_MEDIA_ID - 1, 0
    for s, templates in enumerate(subjects):
        subject_id = s + 1
        probes_of[subject_id] = []
        for t, medias in enumerate(templates):
            template_id += 1
            if t == 0:
                gallery_of[subject_id] = template_id
                group = "G1" if s % 2 == 0 else "G2"
            else:
                probes_of[subject_id].append(template_id)
                group = "probe"
            for shots in medias:
                media_id += 1
                for jpeg, landmarks, score in shots:
                    image_no += 1
                    name = f"{image_no}.jpg"
                    (crops / name).write_bytes(jpeg)
                    tid_mid.append(f"{name} {template_id} {media_id}\n")
                    coords = " ".join(f"{v:.3f}" for v in np.asarray(landmarks).ravel())
                    five_points.append(f"{name} {coords} {score:.3f}\n")
                    x, y, w, h = _face_box(np.asarray(landmarks))
                    rows[group].append(f"{template_id},{subject_id},loose_crop/{name},{media_id},{x},{y},{w},{h}\n")
    genuine = [(gallery_of[s], p, 1) for s in gallery_of for p in probes_of[s]]
    impostor = [
        (gallery_of[s], p, 0) for s in gallery_of for other in probes_of if other != s for p in probes_of[other]
    ]
    if 0 < impostor_pairs < len(impostor):
        keep = np.sort(rng.choice(len(impostor), impostor_pairs, replace=False))
        impostor = [impostor[i] for i in keep]
    pairs = sorted(genuine + impostor)
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(tid_mid), encoding="ascii")
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(five_points), encoding="ascii")
    (meta / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs), encoding="ascii")
    for group, filename in (
        ("G1", "ijbc_1N_gallery_G1.csv"),
        ("G2", "ijbc_1N_gallery_G2.csv"),
        ("probe", "ijbc_1N_probe_mixed.csv"),
    ):
        (meta / filename).write_text(CSV_HEADER + "\n" + "".join(rows[group]), encoding="ascii")
    return {
        "root": str(root),
        "subjects": len(subjects),
        "templates": template_id,
        "media": media_id - _FIRST_MEDIA_ID + 1,
        "images": image_no,
        "pairs": len(pairs),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
    }
