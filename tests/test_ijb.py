"""The IJB reader, pipeline and eval/ijb.py, on a directory whose answers are known.

The fixture's loose crops are uniform colours placed so that the aligned 112x112 crop lies
inside them (the crop is the same uniform colour), and the model (``ColourNet``: mean colour
-> fixed linear map, flip-invariant) is exported to ONNX. Every image feature, template
feature, score and metric is then computed here from the decoded colours alone and compared
with what the pipeline reports.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_eval_verification import ColourNet  # the known-answer model, shared with the .bin tests

from facevib.align import ARCFACE_TEMPLATE
from facevib.data.ijb import IJBFormatError, read_ijb
from facevib.eval.embed import Embedder
from facevib.eval.ijb import ImageFeatures, embed_ijb, evaluate_ijb, load_features, save_features

ROOT = Path(__file__).resolve().parents[1]
FPRS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID"


def _script():
    spec = importlib.util.spec_from_file_location("eval_script_ijb", ROOT / "eval" / "ijb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_known_ijb(root: Path, subjects: int = 6, probes_per_subject: int = 2, seed: int = 0) -> dict:
    """An IJBC folder of uniform-colour crops; returns what the expectations need."""
    rng = np.random.default_rng(seed)
    crops, meta = root / "loose_crop", root / "meta"
    crops.mkdir(parents=True)
    meta.mkdir()
    tid_mid, points, rows = [], [], {"G1": [], "G2": [], "probe": []}
    gallery_of, probes_of = {}, {}
    template, media, image = 100, 5000, 0
    for subject in range(1, subjects + 1):
        base = rng.integers(40, 215, 3)
        probes_of[subject] = []
        for t in range(1 + probes_per_subject):
            template += 3  # sparse, increasing ids
            group = ("G1" if subject % 2 else "G2") if t == 0 else "probe"
            if t == 0:
                gallery_of[subject] = template
            else:
                probes_of[subject].append(template)
            for _ in range(rng.integers(1, 4)):
                media += 1
                for _ in range(rng.integers(1, 3)):
                    image += 1
                    colour = np.clip(base + rng.integers(-25, 26, 3), 0, 255).astype(np.uint8)
                    size = int(rng.integers(130, 160))
                    crop = np.empty((size, size, 3), np.uint8)
                    crop[:] = colour[::-1]  # BGR on disk
                    name = f"{image}.jpg"
                    cv2.imwrite(str(crops / name), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    offset = rng.uniform(2.0, size - 114.0, 2)  # the 112x112 window stays inside
                    landmarks = ARCFACE_TEMPLATE + offset
                    score = rng.uniform(0.3, 1.0)
                    tid_mid.append(f"{name} {template} {media}\n")
                    coords = " ".join(f"{v:.4f}" for v in landmarks.ravel())
                    points.append(f"{name} {coords} {score:.3f}\n")
                    rows[group].append(f"{template},{subject},loose_crop/{name},{media}\n")
    pairs = [(gallery_of[s], p, int(s == o)) for s in gallery_of for o in probes_of for p in probes_of[o]]
    rng.shuffle(pairs)
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(tid_mid))
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(reversed(points)))  # other order: joined by name
    (meta / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    for group, name in (("G1", "gallery_G1"), ("G2", "gallery_G2"), ("probe", "probe_mixed")):
        (meta / f"ijbc_1N_{name}.csv").write_text(CSV_HEADER + "\n" + "".join(rows[group]))
    return {"pairs": pairs}


def expected_results(root: Path, net: ColourNet, weights_fn=None) -> dict:
    """Independent expectations: decoded colours -> features -> templates -> scores -> metrics."""
    names, templates, medias = [], [], []
    for line in (root / "meta" / "ijbc_face_tid_mid.txt").read_text().split("\n"):
        if line:
            name, t, m = line.split()
            names.append(name)
            templates.append(int(t))
            medias.append(int(m))
    score_of = {}
    for line in (root / "meta" / "ijbc_name_5pts_score.txt").read_text().split("\n"):
        if line:
            fields = line.split()
            score_of[fields[0]] = float(fields[-1])
    colours = []
    for name in names:
        decoded = cv2.imread(str(root / "loose_crop" / name))[:, :, ::-1]
        assert (decoded == decoded[0, 0]).all(), "fixture crops must decode to one colour"
        colours.append(decoded[0, 0])
    features = 2.0 * net.expected(np.array(colours))  # image + flip of a flip-invariant model
    weights = np.array([score_of[n] for n in names]) if weights_fn is None else weights_fn(names)
    weighted = features * weights[:, None]
    media_feats: dict[int, dict[int, list]] = {}
    for row, (t, m) in enumerate(zip(templates, medias, strict=True)):
        media_feats.setdefault(t, {}).setdefault(m, []).append(weighted[row])
    template_feat = {}
    for t, by_media in media_feats.items():
        total = sum(np.mean(v, axis=0) for v in by_media.values())
        template_feat[t] = total / np.linalg.norm(total)
    pairs = np.loadtxt(root / "meta" / "ijbc_template_pair_label.txt", dtype=np.int64, ndmin=2)
    scores = np.array([template_feat[a] @ template_feat[b] for a, b, _ in pairs])
    labels = pairs[:, 2].astype(bool)
    genuine, impostor = scores[labels], scores[~labels]
    tpr = []
    for f in FPRS:
        best = 0.0
        for threshold in np.r_[-np.inf, np.unique(scores)]:
            if np.mean(impostor > threshold) <= f:
                best = max(best, float(np.mean(genuine > threshold)))
        tpr.append(best)
    return {"features": features, "names": names, "templates": template_feat, "scores": scores, "tpr": tpr}


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The known-answer directory, the ColourNet model as ONNX, and the expectations."""
    from facevib.export import export_onnx

    folder = tmp_path_factory.mktemp("ijb_known")
    root = folder / "IJBC"
    write_known_ijb(root)
    net = ColourNet().eval()
    onnx_path = export_onnx(net, folder / "colour.onnx", dynamo=False, opset=17)
    return {"folder": folder, "root": root, "net": net, "onnx": onnx_path, "expected": expected_results(root, net)}


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from facevib.models import create_model

    folder = tmp_path_factory.mktemp("ijb_models")
    paths = {}
    for name in ("r18", "cellvib_r18"):
        torch.manual_seed(0)
        model = create_model(name, layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), embedding_dim=16).eval()
        paths[name] = folder / f"{name}.pt"
        torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": {}}, paths[name])
    return paths


# ----------------------------------------------------------------------------- reader


def test_reader_joins_the_per_image_files_by_name(known: dict) -> None:
    ijb = read_ijb(known["folder"], "ijbc")  # the parent folder works too
    assert ijb.target == "IJBC" and ijb.layout.root == known["root"]
    assert list(ijb.image_names) == known["expected"]["names"]
    first = (known["root"] / "meta" / "ijbc_name_5pts_score.txt").read_text().split("\n")[-2].split()
    assert first[0] == ijb.image_names[0]  # the 5-point file is in reverse order
    np.testing.assert_allclose(ijb.landmarks[0].ravel(), [float(v) for v in first[1:11]], rtol=1e-6)
    assert ijb.face_scores[0] == pytest.approx(float(first[11]))
    assert ijb.one_to_n is not None and set(ijb.one_to_n.galleries) == {"G1", "G2"}
    assert ijb.pair_templates.shape == (ijb.pair_labels.size, 2)


def _copy(known: dict, tmp_path: Path) -> Path:
    root = tmp_path / "IJBC"
    shutil.copytree(known["root"], root)
    return root


def test_missing_meta_lists_expected_paths(known: dict, tmp_path: Path) -> None:
    root = _copy(known, tmp_path)
    (root / "meta" / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        read_ijb(root, "IJBC")
    message = str(info.value)
    assert f"missing {root / 'meta' / 'ijbc_template_pair_label.txt'}" in message
    for expected in ("ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt", "loose_crop"):
        assert str(root / "meta" / expected) in message or str(root / expected) in message
    assert "found in" in message and "ijbc_1N_probe_mixed.csv" in message
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_ijb(tmp_path / "nothing", "IJBB")


def test_image_without_five_points_line_is_named(known: dict, tmp_path: Path) -> None:
    root = _copy(known, tmp_path)
    lines = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines(keepends=True)
    dropped = lines[3].split()[0]
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("".join(lines[:3] + lines[4:]))
    with pytest.raises(IJBFormatError, match=rf"1 images in ijbc_face_tid_mid.txt have no line .*\(e.g. {dropped}\)"):
        read_ijb(root, "IJBC")


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        ("ijbc_face_tid_mid.txt", "x.jpg 1\n", r"ijbc_face_tid_mid.txt:\d+: expected '<image> <template id>"),
        ("ijbc_name_5pts_score.txt", "x.jpg 1 2 3\n", r"ijbc_name_5pts_score.txt:\d+: expected .*12 fields"),
        ("ijbc_template_pair_label.txt", "103 999999 0\n", r"template ids have no image .*999999"),
        ("ijbc_template_pair_label.txt", "103 106 2\n", "label 2, expected 0 or 1"),
        ("ijbc_template_pair_label.txt", "103 a 1\n", "integer lines"),
        ("ijbc_1N_probe_mixed.csv", "4242,1,x.jpg,1\n", r"templates have no image .*4242"),
    ],
)
def test_malformed_meta_is_reported(known: dict, tmp_path: Path, file: str, line: str, message: str) -> None:
    root = _copy(known, tmp_path)
    with open(root / "meta" / file, "a") as handle:
        handle.write(line)
    with pytest.raises(IJBFormatError, match=message):
        read_ijb(root, "IJBC")


def test_partial_one_to_n_and_missing_crops(known: dict, tmp_path: Path) -> None:
    root = _copy(known, tmp_path)
    (root / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    with pytest.raises(IJBFormatError, match=r"1:N protocol incomplete: .* missing .*ijbc_1N_gallery_G2.csv"):
        read_ijb(root, "IJBC")
    (root / "meta" / "ijbc_1N_gallery_G1.csv").unlink()
    (root / "meta" / "ijbc_1N_probe_mixed.csv").unlink()
    assert read_ijb(root, "IJBC").one_to_n is None
    (root / "loose_crop" / "2.jpg").unlink()
    with pytest.raises(IJBFormatError, match=r"1 of \d+ listed images are missing \(e.g. 2.jpg\)"):
        read_ijb(root, "IJBC")
    listed = read_ijb(root, "IJBC", require_images=False).image_names  # still every listed image, 2.jpg included
    np.testing.assert_array_equal(listed, read_ijb(known["root"], "IJBC").image_names)


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_reproduces_the_independent_computation(known: dict) -> None:
    ijb = read_ijb(known["root"], "IJBC")
    embedder = Embedder.from_onnx(known["onnx"], batch_size=8)
    features = embed_ijb(ijb, embedder, progress=False, workers=2)
    expected = known["expected"]
    # float32 means over 112 x 112 pixels inside the network: ~1e-5 of rounding.
    np.testing.assert_allclose(features.features, expected["features"], atol=1e-4)
    result = evaluate_ijb(ijb, features)
    np.testing.assert_allclose(result.scores, expected["scores"], atol=1e-4)
    exact = result.summary["tpr_at_fpr"]["exact"]
    assert [p["tpr"] for p in exact] == pytest.approx(expected["tpr"])
    assert [p["target_fpr"] for p in exact] == list(FPRS)
    assert len(result.summary["tpr_at_fpr"]["nearest_roc_point"]) == len(FPRS)
    assert result.summary["genuine"] == 12 and result.summary["impostor"] == 60
    assert set(result.summary["one_to_n"]) == {"G1", "G2", "mean", "G1+G2"}


def test_unreadable_crop_is_named(known: dict, tmp_path: Path) -> None:
    root = _copy(known, tmp_path)
    (root / "loose_crop" / "3.jpg").write_bytes(b"not an image")
    ijb = read_ijb(root, "IJBC")
    with pytest.raises(IJBFormatError, match=r"3\.jpg: cannot be read as an image"):
        embed_ijb(ijb, Embedder.from_onnx(known["onnx"]), progress=False)


def test_one_to_n_matches_brute_force(known: dict) -> None:
    ijb = read_ijb(known["root"], "IJBC")
    features = ImageFeatures(ijb.image_names, known["expected"]["features"].astype(np.float32), ijb.face_scores)
    result = evaluate_ijb(ijb, features).summary["one_to_n"]
    template_feat = known["expected"]["templates"]
    protocol = ijb.one_to_n
    for name, (templates, subjects) in protocol.galleries.items():
        gallery = np.array([template_feat[t] for t in templates])
        probes = np.array([template_feat[t] for t in protocol.probe_templates])
        sims = probes @ gallery.T
        mated = np.isin(protocol.probe_subjects, subjects)
        correct = [subjects[np.argmax(sims[q])] == protocol.probe_subjects[q] for q in np.flatnonzero(mated)]
        assert result[name]["rank_1"] == pytest.approx(np.mean(correct))
        assert result[name]["mated"] == mated.sum() and result[name]["non_mated"] == (~mated).sum()
    assert result["G1+G2"]["non_mated"] == 0


def test_uncertainty_fusion_weights_images(known: dict) -> None:
    ijb = read_ijb(known["root"], "IJBC")
    features = known["expected"]["features"].astype(np.float32)
    u = np.random.default_rng(0).normal(-3.0, 0.5, len(ijb.image_names)).astype(np.float32)
    cached = ImageFeatures(ijb.image_names, features, ijb.face_scores, uncertainty=u)
    fused = evaluate_ijb(ijb, cached, uncertainty_fusion=True)
    weight_of = dict(zip(ijb.image_names, ijb.face_scores * np.exp(-2.0 * (u - u.min())), strict=True))
    expected = expected_results(known["root"], known["net"], lambda names: np.array([weight_of[n] for n in names]))
    np.testing.assert_allclose(fused.scores, expected["scores"], atol=1e-5)
    assert "exp(-2 (u - min u))" in fused.summary["weighting"]
    with pytest.raises(ValueError, match="computed without them"):
        evaluate_ijb(ijb, ImageFeatures(ijb.image_names, features, ijb.face_scores), uncertainty_fusion=True)


def test_feature_cache_round_trip(known: dict, tmp_path: Path) -> None:
    ijb = read_ijb(known["root"], "IJBC")
    u = np.linspace(-1, 1, len(ijb.image_names)).astype(np.float32)
    original = ImageFeatures(ijb.image_names, known["expected"]["features"].astype(np.float32), ijb.face_scores, u, "m")
    path = save_features(tmp_path / "f.npz", original)
    assert path == tmp_path / "f.npz" and not list(tmp_path.glob(".*"))
    loaded = load_features(path)
    for field in ("names", "features", "face_scores", "uncertainty"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(original, field))
    assert loaded.model == "m"
    shuffled = ImageFeatures(original.names[::-1], original.features[::-1], original.face_scores[::-1])
    np.testing.assert_array_equal(shuffled.matched_to(ijb).features, original.features)
    partial = ImageFeatures(original.names[1:], original.features[1:], original.face_scores[1:])
    with pytest.raises(ValueError, match="lacks 1 of the"):
        partial.matched_to(ijb)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read it"):
        load_features(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a facevib IJB features file"):
        load_features(tmp_path / "other.npz")


# ----------------------------------------------------------------------------- eval/ijb.py


def test_cli_on_onnx_writes_table_json_png_and_rescores_the_cache(
    known: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    script = _script()
    root = _copy(known, tmp_path)
    out = tmp_path / "out"
    args = ["--data-root", str(root), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert script.main(args + ["--model", str(known["onnx"]), "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "IJBC exact" in printed and "nearest ROC point" in printed and "1:N gallery" in printed
    summary = json.loads((out / "ijbc.json").read_text())
    assert [p["tpr"] for p in summary["tpr_at_fpr"]["exact"]] == pytest.approx(known["expected"]["tpr"])
    assert (out / "ijbc_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "ijbc_features.npz").is_file()
    # Second run: no --model, the cache is re-scored; the crops are not even needed.
    shutil.rmtree(root / "loose_crop")
    rescored = tmp_path / "rescored"
    cache = str(out / "ijbc_features.npz")
    assert script.main(["--data-root", str(root), "--out", str(rescored), "--features", cache, "--no-progress"]) == 0
    again = json.loads((rescored / "ijbc.json").read_text())
    assert again["tpr_at_fpr"] == summary["tpr_at_fpr"] and again["one_to_n"] == summary["one_to_n"]
    assert "re-scoring cached features" in capsys.readouterr().err


def test_cli_checkpoints_and_uncertainty_fusion(
    known: dict, tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    script = _script()
    base = ["--data-root", str(known["root"]), "--no-progress", "--device", "cpu"]
    out = tmp_path / "cell"
    assert (
        script.main(base + ["--model", str(tiny_checkpoints["cellvib_r18"]), "--out", str(out), "--uncertainty-fusion"])
        == 0
    )
    summary = json.loads((out / "ijbc.json").read_text())
    assert "uncertainty" in summary["weighting"]
    # The same model through the library gives the same numbers.
    from facevib.eval.embed import load_embedder

    ijb = read_ijb(known["root"], "IJBC")
    features = embed_ijb(ijb, load_embedder(tiny_checkpoints["cellvib_r18"]), with_uncertainty=True, progress=False)
    cached = load_features(out / "ijbc_features.npz")
    np.testing.assert_allclose(cached.uncertainty, features.uncertainty, rtol=1e-6)
    np.testing.assert_allclose(cached.features, features.features, rtol=1e-6)
    direct = evaluate_ijb(ijb, features, uncertainty_fusion=True).summary
    assert direct["tpr_at_fpr"] == summary["tpr_at_fpr"]
    capsys.readouterr()
    # A baseline model has no sigma branches; an ONNX graph holds the mean only.
    for model in (tiny_checkpoints["r18"], known["onnx"]):
        code = script.main(base + ["--model", str(model), "--out", str(tmp_path / "x"), "--uncertainty-fusion"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and "provides no per-image uncertainty" in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data-root", "{tmp}/missing"], "missing"),
        (["--data-root", "{root}"], "--model is needed"),
        (["--data-root", "{root}", "--model", "{tmp}/none.pt"], "does not exist"),
    ],
)
def test_cli_user_mistakes_exit_2(
    known: dict, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    argv = ["--out", str(tmp_path / "o"), "--no-progress"] + [a.format(tmp=tmp_path, root=known["root"]) for a in extra]
    assert _script().main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_cache_of_another_model_is_refused(known: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ijb = read_ijb(known["root"], "IJBC")
    cache = tmp_path / "c.npz"
    save_features(
        cache,
        ImageFeatures(
            ijb.image_names,
            known["expected"]["features"].astype(np.float32),
            ijb.face_scores,
            model="/elsewhere/model.onnx",
        ),
    )
    argv = [
        "--data-root",
        str(known["root"]),
        "--out",
        str(tmp_path),
        "--features",
        str(cache),
        "--model",
        str(known["onnx"]),
        "--no-progress",
    ]
    assert _script().main(argv) == 2
    assert "holds features of /elsewhere/model.onnx" in capsys.readouterr().err


def test_cli_on_the_synthetic_set(
    request: pytest.FixtureRequest, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    synthetic = request.getfixturevalue("synthetic_dir")
    out = tmp_path / "out"
    argv = ["--data-root", str(synthetic), "--model", str(tiny_checkpoints["r18"]), "--out", str(out), "--no-progress"]
    assert _script().main(argv) == 0
    summary = json.loads((out / "ijbc.json").read_text())
    pair_file = synthetic / "IJBC" / "meta" / "ijbc_template_pair_label.txt"
    labels = [line.split()[2] for line in pair_file.read_text().splitlines() if line.strip()]
    assert (summary["genuine"], summary["impostor"]) == (labels.count("1"), labels.count("0"))
    assert {"G1", "G2", "mean", "G1+G2"} <= set(summary["one_to_n"])
    assert (out / "ijbc_roc.png").is_file()
