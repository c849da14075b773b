"""The open-set threshold: its rule against a hand count and facevib.eval's 1:N metrics, and the
exported one reproduced through the server's /v1/galleries search decision on the same IJB data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from facevib.data.ijb import read_ijb
from facevib.eval.embed import Embedder
from facevib.eval.identification import identification_metrics
from facevib.eval.ijb import embed_ijb
from facevib.eval.templates import fusion_weights, template_features, template_rows
from facevib.export.__main__ import main
from facevib.export.calibrate import identification_threshold
from facevib.models import create_model
from facevib.onnx_meta import ModelMetadata
from facevib.serve import create_app
from facevib.serve.settings import ServeSettings

pytestmark = pytest.mark.timeout(300)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _searches(seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for gallery_size in (7, 9):
        subjects = rng.permutation(20)[:gallery_size]
        gallery = unit(rng.standard_normal((gallery_size, 6)))
        probe_subjects = rng.integers(0, 20, 40)
        probes = unit(rng.standard_normal((40, 6)))
        for i, s in enumerate(probe_subjects):  # mated probes lean towards their mate
            if s in subjects:
                probes[i] = unit(probes[i] + 1.5 * gallery[list(subjects).index(s)])
        out.append((probes, probe_subjects, gallery, subjects))
    return out


def test_threshold_rule_against_a_hand_count() -> None:
    searches = _searches(0)
    non_mated, mated = [], []  # (best score) and (mate score, mate ranks strictly first)
    for probes, probe_subjects, gallery, subjects in searches:
        for probe, subject in zip(probes, probe_subjects, strict=True):
            scores = [float(sum(float(a) * float(b) for a, b in zip(probe, row, strict=True))) for row in gallery]
            if subject in subjects:
                mate = scores[list(subjects).index(subject)]
                mated.append((mate, sum(s >= mate for s in scores) == 1))
            else:
                non_mated.append(max(scores))
    for target in (0.05, 0.2, 0.5):
        got = identification_threshold(searches, target)
        allowed = math.floor(target * len(non_mated))
        want = sorted(non_mated, reverse=True)[allowed]  # the (allowed+1)-th largest
        assert got["threshold"] == pytest.approx(want, abs=1e-6)
        assert got["non_mated"] == len(non_mated) and got["mated"] == len(mated)
        assert got["fpir"] == sum(s > want + 1e-6 for s in non_mated) / len(non_mated) <= target
        assert got["tpir"] == pytest.approx(sum(first and s > want + 1e-6 for s, first in mated) / len(mated))
        assert got["resolved"] is (allowed >= 1)


def test_one_search_set_agrees_with_facevib_eval_identification_metrics() -> None:
    probes, probe_subjects, gallery, subjects = _searches(1)[0]
    got = identification_threshold([(probes, probe_subjects, gallery, subjects)], 0.1)
    (point,) = identification_metrics(probes, probe_subjects, gallery, subjects, fpirs=[0.1])["tpir_at_fpir"]
    assert got["threshold"] == pytest.approx(point["threshold"], abs=1e-6)
    assert (got["fpir"], got["tpir"]) == pytest.approx((point["achieved_fpir"], point["tpir"]))


def test_exported_threshold_gives_its_fpir_and_tpir_through_the_server(synthetic_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = create_model("r18", layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), embedding_dim=32).eval()
    checkpoint = tmp_path / "backbone.pt"
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict()}, checkpoint)
    out = tmp_path / "m.onnx"
    data = synthetic_dir / "IJBC"
    args = [str(checkpoint), "--out", str(out), "--legacy-exporter", "--calibrate-identification", str(data)]
    assert main([*args, "--target-fpir", "0.25"]) == 0
    import onnx

    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    ident = meta.identification
    assert ident is not None and ident.target_fpir == 0.25 and ident.resolved and ident.fpir <= 0.25

    # The same templates as evaluation builds, enrolled one per subject; every probe searched over HTTP.
    ijb = read_ijb(data, "IJBC")
    features = embed_ijb(ijb, Embedder.from_onnx(out), progress=False)
    ids, templates = template_features(
        features.features, ijb.templates, ijb.medias, fusion_weights(features.face_scores)
    )
    protocol = ijb.one_to_n
    probes = templates[template_rows(ids, protocol.probe_templates)]
    accepted_non_mated = hits = non_mated = mated = 0
    settings = ServeSettings(model=str(out), detector="none", gallery_db=str(tmp_path / "g.db"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for name, (gallery_templates, subjects) in protocol.galleries.items():
            client.put(f"/v1/galleries/{name}")
            rows = templates[template_rows(ids, gallery_templates)]
            faces = [{"subject": str(s), "embedding": r.tolist()} for s, r in zip(subjects, rows, strict=True)]
            assert client.post(f"/v1/galleries/{name}/faces", json={"faces": faces}).status_code == 200
            for probe, subject in zip(probes, protocol.probe_subjects, strict=True):
                answer = client.post(f"/v1/galleries/{name}/search", json={"embedding": probe.tolist()}).json()
                decision = answer["decision"]
                assert decision["threshold_source"] == "calibration" and decision["target_fpir"] == 0.25
                if subject in subjects:
                    mated += 1
                    hits += decision["subject"] == str(subject)
                else:
                    non_mated += 1
                    accepted_non_mated += decision["subject"] is not None
    assert (non_mated, mated) == (ident.non_mated, ident.mated)
    assert accepted_non_mated / non_mated == pytest.approx(ident.fpir)
    assert hits / mated == pytest.approx(ident.tpir)


def test_target_fpir_needs_the_identification_data(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["x.pt", "--out", str(tmp_path / "m.onnx"), "--target-fpir", "0.1"])
    assert exit_.value.code == 2 and "--target-fpir needs --calibrate-identification" in capsys.readouterr().err
