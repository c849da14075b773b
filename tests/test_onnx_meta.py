"""The ONNX metadata contract: round trip, exact keys, named errors, the fallback, no torch needed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from facevib.align import ARCFACE_TEMPLATE, arcface_template
from facevib.onnx_meta import (
    Calibration,
    IdentificationCalibration,
    MetadataError,
    MissingMetadataError,
    ModelMetadata,
    default_preprocess,
    read_metadata,
)

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "0123456789abcdef" * 4
CALIBRATION = Calibration(
    threshold=0.3125,
    target_fpr=1e-4,
    fpr=9.5e-5,
    tpr=0.9625,
    impostor_pairs=20_000,
    genuine_pairs=3_000,
    resolved=True,
    source="verification pairs (single image, no flip): lfw.bin in /data",
)


def _full() -> ModelMetadata:
    return ModelMetadata(
        facevib_version="0.1.0",
        model_name="cellvib_r18",
        arch={"name": "cellvib_r18", "kwargs": {"widths": [8, 16, 16, 32], "embedding_dim": 32}},
        embedding_dim=32,
        input_size=112,
        preprocess=default_preprocess(112),
        config_digest=DIGEST,
        outputs=["embedding", "uncertainty"],
        uncertainty={"definition": "mean_log_sigma", "source": {"kind": "cell", "blocks": [3]}},
        calibration=CALIBRATION,
    )


def test_round_trip_and_exact_keys() -> None:
    meta = _full()
    props = meta.to_props()
    assert sorted(props) == sorted(
        "facevib." + k
        for k in (
            "schema",
            "version",
            "model_name",
            "arch",
            "embedding_dim",
            "input_size",
            "preprocess",
            "config_digest",
            "outputs",
            "uncertainty",
            "calibration",
        )
    )
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["facevib.calibration"])["threshold"] == 0.3125
    assert props["facevib.embedding_dim"] == "32" and props["facevib.schema"] == "1"
    # Other tools' keys are ignored; the parsed object equals the original.
    assert ModelMetadata.from_props({**props, "producer.note": "x"}) == meta
    # Optional fields left out read back as None.
    bare = dataclasses.replace(meta, config_digest=None, outputs=["embedding"], uncertainty=None, calibration=None)
    assert set(bare.to_props()) == set(props) - {"facevib.config_digest", "facevib.uncertainty", "facevib.calibration"}
    assert ModelMetadata.from_props(bare.to_props()) == bare
    json.dumps(meta.as_dict())  # JSON-ready, e.g. for /v1/info


def test_preprocess_template_equals_facevib_align() -> None:
    for size in (112, 224, 128, 256):
        np.testing.assert_allclose(default_preprocess(size)["template"], arcface_template(size), atol=1e-9)
    np.testing.assert_array_equal(np.float32(default_preprocess()["template"]), ARCFACE_TEMPLATE)
    assert default_preprocess() | {"template": None} == {
        "color": "RGB",
        "layout": "NCHW",
        "mean": [127.5] * 3,
        "std": [127.5] * 3,
        "alignment": "arcface_5pt",
        "template": None,
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.pop("facevib.embedding_dim"), "facevib.embedding_dim: missing"),
        (lambda p: p.update({"facevib.embedding_dim": "32.5"}), "facevib.embedding_dim: expected a decimal integer"),
        (lambda p: p.update({"facevib.input_size": "0"}), "facevib.input_size: expected an integer >= 1"),
        (lambda p: p.update({"facevib.arch": "{not json"}), "facevib.arch: not valid JSON"),
        (lambda p: p.update({"facevib.schema": "2"}), "facevib.schema: expected '1'"),
        (lambda p: p.update({"facevib.outputs": '["uncertainty", "embedding"]'}), "first output must be the embedding"),
        (lambda p: p.pop("facevib.uncertainty"), "facevib.uncertainty: must be given exactly when"),
        (lambda p: p.update({"facevib.config_digest": "abc"}), "facevib.config_digest: expected 64 lowercase hex"),
        (lambda p: p.update({"facevib.preprocess": '{"color": "RGB"}'}), "facevib.preprocess: missing field"),
        (
            lambda p: p.update({"facevib.calibration": json.dumps({**dataclasses.asdict(CALIBRATION), "tpr": 1.5})}),
            r"facevib.calibration.tpr: 1.5 is outside",
        ),
        (
            lambda p: p.update({"facevib.calibration": json.dumps({"threshold": 0.3})}),
            "facevib.calibration: missing field",
        ),
        (
            lambda p: p.update(
                {"facevib.calibration": json.dumps({**dataclasses.asdict(CALIBRATION), "threshold": None})}
            ),
            "facevib.calibration.threshold: expected a finite number",
        ),
    ],
)
def test_malformed_metadata_names_the_key(edit, message: str) -> None:
    props = _full().to_props()
    edit(props)
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_props(props)


IDENTIFICATION = {
    "threshold": 0.41,
    "target_fpir": 1e-2,
    "fpir": 9e-3,
    "tpir": 0.88,
    "non_mated": 1000,
    "mated": 900,
    "resolved": True,
    "source": "IJB-C 1:N, G1",
}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fpir", 1.5, "facevib.identification.fpir: 1.5 is outside"),
        ("threshold", float("nan"), "facevib.identification.threshold: expected a finite number"),
        ("mated", 0, "facevib.identification.mated"),
        ("resolved", "yes", "facevib.identification.resolved: expected true or false"),
        ("source", 3, "facevib.identification.source: expected a string"),
    ],
)
def test_malformed_identification_names_the_field(field: str, value: object, message: str) -> None:
    assert IdentificationCalibration.from_dict(IDENTIFICATION).tpir == 0.88
    with pytest.raises(MetadataError, match=message):
        IdentificationCalibration.from_dict({**IDENTIFICATION, field: value})


def _plain_onnx(path: Path, output: str = "fc1", size: int = 112) -> Path:
    """An insightface-like file with no facevib metadata: (N, 3, S, S) -> (N, 3) global average."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], [output], name="flatten"),
        ],
        "plain",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_fallback_names_only_the_embedding_output_of_a_two_output_file(tmp_path: Path) -> None:
    """A foreign file with an extra (undescribed) ``uncertainty`` output still gets defaults."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["fc1"], name="flatten"),
            helper.make_node("ReduceMean", ["fc1"], ["uncertainty"], name="mean", keepdims=0),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [
            helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("uncertainty", TensorProto.FLOAT, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    session = ort.InferenceSession(str(tmp_path / "two.onnx"), providers=["CPUExecutionProvider"])
    assert read_metadata(session) == ModelMetadata.default(3, 112, outputs=["fc1"])


def test_file_without_facevib_metadata_falls_back_to_insightface_defaults(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(_plain_onnx(tmp_path / "plain.onnx")), providers=["CPUExecutionProvider"])
    with pytest.raises(MissingMetadataError, match="no facevib metadata"):
        ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    meta = read_metadata(session)
    assert meta == ModelMetadata.default(3, 112, outputs=["fc1"])
    assert meta.preprocess == default_preprocess(112) and meta.calibration is None and meta.facevib_version == "unknown"
    # A mapping source needs the sizes, which only the session could tell.
    with pytest.raises(MetadataError, match="sizes are unknown"):
        read_metadata({})
    assert read_metadata({}, input_size=112, embedding_dim=512).embedding_dim == 512
    # Malformed facevib metadata is an error, never a silent default.
    with pytest.raises(MetadataError, match="facevib.version: missing"):
        read_metadata({"facevib.schema": "1"}, input_size=112, embedding_dim=3)


def test_imports_and_parses_without_torch_numpy_or_onnx() -> None:
    props = json.dumps(_full().to_props())
    code = (
        "import sys\n"
        "for name in ('torch', 'numpy', 'onnx', 'cv2'):\n"
        "    sys.modules[name] = None  # any import of them raises ImportError\n"
        "import json\n"
        "from facevib.onnx_meta import ModelMetadata\n"
        f"meta = ModelMetadata.from_props(json.loads({props!r}))\n"
        "print(meta.calibration.threshold, meta.embedding_dim, meta.outputs)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.3125", "32", "['embedding',", "'uncertainty']"]
