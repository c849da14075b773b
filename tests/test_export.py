"""ONNX export: interface, insightface routing, ONNX Runtime == PyTorch, metadata, calibration, Triton, CLI.

Exports use the TorchScript exporter (``dynamo=False``, ~10x faster) except the two that
cover the default ``torch.export``-based one (a one-output and a two-output graph).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto, helper
from serve_support import aligned_crops
from torch import nn
from tritonclient.grpc import model_config_pb2

from facevib.contract import EMBEDDING_OUTPUT, INPUT_NAME, UNCERTAINTY_OUTPUT
from facevib.data.bins import read_bin
from facevib.data.transforms import images_to_tensor
from facevib.eval.embed import Embedder, load_embedder
from facevib.export import (
    compare_onnx,
    export_onnx,
    insightface_problems,
    onnx_differences,
    read_onnx_metadata,
    write_metadata,
)
from facevib.export.__main__ import main
from facevib.export.calibrate import split_halves
from facevib.models import create_model, load_backbone
from facevib.onnx_meta import ModelMetadata, default_preprocess

TINY = {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32}
# name -> (model name, uncertainty output, dynamo exporter)
EXPORTS = {
    "r18": ("r18", False, True),
    "cellvib_r18": ("cellvib_r18", False, False),
    "deepvib_r18": ("deepvib_r18", False, False),
    "cellvib_r18+uncertainty": ("cellvib_r18", True, True),
    "deepvib_r18+uncertainty": ("deepvib_r18", True, False),
}


def _interface(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in graph.input], [(v.name, dims(v)) for v in graph.output]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Each family exported once, from training mode (the caller's mode must come back)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for seed, (key, (name, uncertainty, dynamo)) in enumerate(EXPORTS.items()):
        torch.manual_seed(seed)
        model = create_model(name, **TINY).train()
        path = export_onnx(model, folder / f"{key}.onnx", uncertainty=uncertainty, dynamo=dynamo)
        assert model.training
        out[key] = (model, path)
    return out


@pytest.fixture(scope="module")
def real_inputs() -> np.ndarray:
    """skimage's astronaut and matplotlib's Grace Hopper, aligned by facevib.align, normalised."""
    return images_to_tensor(aligned_crops()).numpy()


@pytest.mark.parametrize("key", list(EXPORTS))
def test_onnx_runtime_equals_pytorch_at_batch_1_and_7(exported: dict, real_inputs: np.ndarray, key: str) -> None:
    model, path = exported[key]
    uncertainty = EXPORTS[key][1]
    onnx.checker.check_model(str(path), full_check=True)
    inputs, outputs = _interface(path)
    assert len(inputs) == 1 and inputs[0][0] == INPUT_NAME and inputs[0][1][1:] == [3, 112, 112]
    assert isinstance(inputs[0][1][0], str)  # symbolic batch dimension
    assert outputs[0][0] == EMBEDDING_OUTPUT and outputs[0][1][1] == 32
    if uncertainty:
        assert len(outputs) == 2 and outputs[1][0] == UNCERTAINTY_OUTPUT and len(outputs[1][1]) == 1
    else:
        assert len(outputs) == 1
    names = {EMBEDDING_OUTPUT, UNCERTAINTY_OUTPUT} if uncertainty else {EMBEDDING_OUTPUT}
    for inputs_ in (None, real_inputs):
        worst = onnx_differences(model, path, batch_sizes=(1, 7), inputs=inputs_)
        assert set(worst) == names and max(worst.values()) <= 1e-4, worst
    assert model.training


def test_real_crops_give_distinct_finite_outputs(exported: dict, real_inputs: np.ndarray) -> None:
    """The photos really flow through the graph: two faces, two embeddings and uncertainties."""
    _, path = exported["cellvib_r18+uncertainty"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    embedding, uncertainty = session.run(None, {INPUT_NAME: real_inputs})
    assert embedding.shape == (2, 32) and uncertainty.shape == (2,)
    assert np.isfinite(embedding).all() and np.isfinite(uncertainty).all()
    assert np.abs(embedding[0] - embedding[1]).max() > 1e-3 and uncertainty[0] != uncertainty[1]


@pytest.mark.parametrize("key", ["r18", "cellvib_r18", "deepvib_r18"])
def test_default_file_is_an_insightface_drop_in(exported: dict, key: str) -> None:
    _, path = exported[key]
    assert insightface_problems(path) == []
    graph = onnx.load(str(path)).graph
    first = [node.name for node in graph.node[:8]]
    assert not (
        any(n.startswith(("Sub", "_minus")) for n in first) and any(n.startswith(("Mul", "_mul")) for n in first)
    ), first
    # No normalisation inside the graph: the input feeds the stem convolution and nothing else.
    assert [node.op_type for node in graph.node if INPUT_NAME in node.input] == ["Conv"]
    # What insightface's router reads off the session: square >= 112, multiple of 16, < 5 outputs.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert shape[2] == shape[3] == 112 and shape[2] % 16 == 0 and len(session.get_outputs()) == 1


def test_uncertainty_file_is_not_an_insightface_drop_in(exported: dict) -> None:
    _, path = exported["cellvib_r18+uncertainty"]
    assert insightface_problems(path) == ["2 outputs; ArcFaceONNX asserts exactly one"]


def _graph(first_nodes: list[str], size: int | str = 112) -> onnx.ModelProto:
    """``data -> Identity* -> output`` with the given node names."""
    nodes, previous = [], "data"
    for index, name in enumerate(first_nodes):
        nodes.append(helper.make_node("Identity", [previous], [f"t{index}"], name=name))
        previous = f"t{index}"
    nodes.append(helper.make_node("Identity", [previous], ["out"], name="last"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, size, size])],
    )
    return helper.make_model(graph)


def test_insightface_rules_flag_what_would_misroute() -> None:
    assert insightface_problems(_graph(["conv", "bn", "relu"])) == []
    flagged = insightface_problems(_graph(["Sub_0", "Mul_1", "conv"]))
    assert len(flagged) == 1 and "'Sub_0' and 'Mul_1'" in flagged[0] and "raw pixels" in flagged[0]
    assert len(insightface_problems(_graph(["_minus0", "conv", "_mul0"]))) == 1
    assert insightface_problems(_graph(["Sub_0", "conv"])) == []  # both are needed
    assert insightface_problems(_graph([f"n{i}" for i in range(8)] + ["Sub_0", "Mul_1"])) == []  # past the 8th
    assert "dynamic height/width" in insightface_problems(_graph(["conv"], size="H"))[0]
    assert "not routed to ArcFaceONNX" in insightface_problems(_graph(["conv"], size=192))[0]
    assert "not routed to ArcFaceONNX" in insightface_problems(_graph(["conv"], size=120))[0]


def test_vib_models_export_the_deterministic_mean(exported: dict) -> None:
    model, path = exported["cellvib_r18"]
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    model.train()
    torch.testing.assert_close(first, second)  # eval mode: no sampling
    images = ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    onnx_embedder = Embedder.from_onnx(path, batch_size=4)
    torch_embedder = Embedder.from_module(model, batch_size=4)
    np.testing.assert_allclose(onnx_embedder(images), torch_embedder(images), atol=1e-4)
    assert not onnx_embedder.has_uncertainty and torch_embedder.has_uncertainty


def test_uncertainty_file_feeds_the_embedder(exported: dict) -> None:
    """An ONNX file with the uncertainty output gives the torch model's embeddings and scores."""
    model, path = exported["deepvib_r18+uncertainty"]
    images = np.random.default_rng(4).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    from_onnx = Embedder.from_onnx(path, batch_size=4)
    from_torch = Embedder.from_module(model, batch_size=4)
    assert from_onnx.has_uncertainty
    for got, expected in zip(
        from_onnx.embed_with_uncertainty(images), from_torch.embed_with_uncertainty(images), strict=True
    ):
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_legacy_exporter_targets_older_opsets(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model("cellvib_r18", **TINY).eval()
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=False, opset=17)
    assert onnx.load(str(path)).opset_import[0].version == 17
    assert compare_onnx(model, path, batch_sizes=(1, 5)) < 1e-4
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(model, tmp_path / "n.onnx", opset=17)


def test_checkpoint_to_onnx_through_load_embedder(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = create_model("deepvib_r18", **TINY).eval()
    checkpoint = tmp_path / "backbone.pt"
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": {}}, checkpoint)
    path = export_onnx(load_backbone(checkpoint), tmp_path / "backbone.onnx", dynamo=False)
    images = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    from_checkpoint = load_embedder(checkpoint, batch_size=4)
    from_onnx = load_embedder(path, batch_size=4)
    assert from_onnx.backend == "onnxruntime:CPUExecutionProvider" and from_checkpoint.backend == "torch:cpu"
    np.testing.assert_allclose(from_onnx(images), from_checkpoint(images), atol=1e-4)
    np.testing.assert_allclose(from_onnx(images, flip=False), from_checkpoint.embed(images), atol=1e-4)


def test_arcface_torch_state_dict_needs_the_network_name(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = create_model("r18").eval()  # full size: a plain state dict carries no architecture
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="plain state_dict"):
        load_embedder(path)
    images = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    got = load_embedder(path, network="r18")(images)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        expected = (model(x) + model(torch.flip(x, dims=[3]))).numpy()
    scale = np.abs(expected).max()  # an untrained deep net's outputs are huge (~1e8)
    np.testing.assert_allclose(got / scale, expected / scale, atol=1e-5)


class _TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def test_models_without_one_embedding_output_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one \(N, D\) tensor"):
        export_onnx(_TwoOutputs(), tmp_path / "x.onnx", dynamo=False, opset=17)
    with pytest.raises(ValueError, match="'r18' has no sigma branches"):
        export_onnx(create_model("r18", **TINY), tmp_path / "y.onnx", dynamo=False, uncertainty=True)


def test_bad_onnx_file_and_device(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        load_embedder(tmp_path / "bad.onnx")
    with pytest.raises(FileNotFoundError):
        load_embedder(tmp_path / "absent.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            Embedder.from_module(nn.Linear(2, 2), device="cuda")


# ---------------------------------------------------------------- the command line


TRAINING_CONFIG = {"model": {"name": "cellvib_r18", "kwargs": {"widths": [8, 16, 16, 32]}}, "optim": {"lr": 0.1}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A facevib checkpoint of a tiny cellVIB model, with a training config."""
    torch.manual_seed(5)
    model = create_model("cellvib_r18", **TINY).eval()
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pt"
    torch.save(
        {"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": TRAINING_CONFIG}, path
    )
    return model, path


def _reference_calibration(model: nn.Module, data: Path, target_fpr: float) -> dict:
    """Threshold, rates and counts computed here from the .bin files and the PyTorch model, on
    the calibration half of the pairs (the split is a seeded choice, taken from the code)."""
    scores, same = [], []
    for path in sorted(data.glob("*.bin")):
        pairs = read_bin(path)
        with torch.no_grad():
            emb = model(images_to_tensor(pairs.images)).double()
        emb = emb / emb.norm(dim=1, keepdim=True)
        scores.append((emb[0::2] * emb[1::2]).sum(dim=1).numpy())
        same.append(np.asarray(pairs.issame, bool))
    scores, same = np.concatenate(scores), np.concatenate(same)
    first, second = split_halves(np.arange(scores.size), seed=0)
    held_scores, held_same = scores[second], same[second]
    scores, same = scores[first], same[first]
    impostor, genuine = np.sort(scores[~same])[::-1], scores[same]
    allowed = int(np.floor(target_fpr * impostor.size + 1e-9))
    threshold = impostor[allowed]
    return {
        "threshold": threshold,
        "tpr": float(np.mean(genuine > threshold)),
        "fpr": float(np.mean(impostor > threshold)),
        "impostor_pairs": impostor.size,
        "genuine_pairs": genuine.size,
        "resolved": allowed >= 1,
        "held_false_accepts": int(np.sum(held_scores[~held_same] > threshold)),
        "held_impostor_pairs": int((~held_same).sum()),
        "held_genuine_pairs": int(held_same.sum()),
    }


def _session_metadata(path: Path) -> ModelMetadata:
    """Read back the way the server does: ONNX Runtime's custom metadata map."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)


def test_cli_writes_metadata_calibration_and_triton_repository(
    checkpoint: tuple[nn.Module, Path], synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, path = checkpoint
    out, repo, data = tmp_path / "face.onnx", tmp_path / "triton", tmp_path / "bins"
    data.mkdir()  # two of the synthetic sets: every .bin of the folder is used
    for name in ("cfp_fp.bin", "agedb_30.bin"):
        (data / name).symlink_to(synthetic_dir / name)
    args = [str(path), "--out", str(out), "--uncertainty", "--legacy-exporter", "--calibrate", str(data)]
    assert main(args + ["--target-fpr", "0.05", "--triton-repo", str(repo), "--max-batch", "16"]) == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and "not an insightface drop-in: 2 outputs" in printed

    meta = _session_metadata(out)
    assert meta == read_onnx_metadata(out)
    assert meta.model_name == "cellvib_r18" and meta.arch == json.loads(json.dumps(model.arch))
    assert (meta.embedding_dim, meta.input_size, meta.outputs) == (32, 112, ["embedding", "uncertainty"])
    assert meta.preprocess == default_preprocess(112)
    # `printf '%s' '{"model":{"kwargs":{"widths":[8,16,16,32]},"name":"cellvib_r18"},"optim":{"lr":0.1}}'
    # | sha256sum`: the config as keys-sorted JSON with no spaces, digested by coreutils.
    assert meta.config_digest == "f45dbae086766d125d9f74f49a908cec3acce8e9c0c37c03ba5806611e9b9475"
    assert meta.uncertainty["definition"] == "mean_log_sigma"
    assert meta.uncertainty["source"] == {"kind": "cell", "blocks": [3]}  # r18 TINY: stage 4 is block 3

    # The calibration equals one computed here with the PyTorch model (ORT differs by <= 1e-4).
    cal, ref = meta.calibration, _reference_calibration(model, data, 0.05)
    assert cal.target_fpr == 0.05 and cal.resolved is ref["resolved"] is True
    assert (cal.impostor_pairs, cal.genuine_pairs) == (ref["impostor_pairs"], ref["genuine_pairs"])
    assert cal.threshold == pytest.approx(ref["threshold"], abs=1e-4)
    assert abs(cal.tpr - ref["tpr"]) <= 1.0 / ref["genuine_pairs"] and cal.fpr <= 0.05
    assert cal.source.startswith("verification pairs agedb_30.bin,cfp_fp.bin") and cal.protocol == "single_image"
    held = cal.holdout
    assert (held.impostor_pairs, held.genuine_pairs) == (ref["held_impostor_pairs"], ref["held_genuine_pairs"])
    assert abs(held.false_accepts - ref["held_false_accepts"]) <= 1 and held.identities == 0  # unknown

    # Triton: the config parses with Triton's own protobuf and names the file's tensors.
    config = text_format.Parse((repo / "face" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (repo / "face" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert config.name == "face" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert [(i.name, list(i.dims)) for i in config.input] == [(i.name, i.shape[1:]) for i in session.get_inputs()]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    triton_outputs = [(o.name, list(o.reshape.shape) if o.HasField("reshape") else list(o.dims)) for o in config.output]
    assert (
        triton_outputs
        == [(o.name, o.shape[1:]) for o in session.get_outputs()]
        == [
            ("embedding", [32]),
            ("uncertainty", []),
        ]
    )


def test_cli_calibrates_on_an_ijb_folder(
    checkpoint: tuple[nn.Module, Path], synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, path = checkpoint
    ijb = synthetic_dir / "IJBC"
    out = tmp_path / "ijb.onnx"
    common = [str(path), "--out", str(out), "--legacy-exporter", "--calibrate", str(ijb), "--device", "cpu"]
    # Single image (the default): every pair of images, subjects from the 1:N files.
    assert main([*common, "--target-fpr", "1e-2"]) == 0
    assert "held out (" in capsys.readouterr().out
    meta = _session_metadata(out)
    assert meta.outputs == ["embedding"] and meta.uncertainty is None and insightface_problems(out) == []
    cal, held = meta.calibration, meta.calibration.holdout
    subjects = {}
    for name in ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"):
        for line in (ijb / "meta" / name).read_text().splitlines()[1:]:
            template, subject = line.split(",")[:2]
            subjects[int(template)] = int(subject)
    per_subject: dict[int, int] = {}
    for line in (ijb / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines():
        subject = subjects[int(line.split()[1])]
        per_subject[subject] = per_subject.get(subject, 0) + 1
    # Each half's pairs are all the pairs of its images; together the halves hold every subject.
    images = sum(per_subject.values())
    assert held.identities == len(per_subject) - len(per_subject) // 2  # the held-out half is the larger
    genuine_all = sum(k * (k - 1) // 2 for k in per_subject.values())
    assert cal.genuine_pairs + held.genuine_pairs == genuine_all
    first_images = round((1 + math.sqrt(1 + 8 * (cal.impostor_pairs + cal.genuine_pairs))) / 2)
    assert first_images * (first_images - 1) // 2 == cal.impostor_pairs + cal.genuine_pairs
    second_images = images - first_images
    assert held.impostor_pairs + held.genuine_pairs == second_images * (second_images - 1) // 2
    assert cal.protocol == "single_image" and cal.resolved
    assert cal.source.startswith("IJBC images") and cal.fpr <= 1e-2

    # The template protocol on request: IJB 1:1 template pairs, and the CLI says it is not served.
    assert main([*common, "--calibration-protocol", "template"]) == 0
    assert "/v1/verify will not apply it" in capsys.readouterr().out
    labels = np.loadtxt(ijb / "meta" / "ijbc_template_pair_label.txt", dtype=int)[:, 2]
    cal = _session_metadata(out).calibration
    assert (cal.impostor_pairs, cal.genuine_pairs) == (int((labels == 0).sum()), int((labels == 1).sum()))
    assert cal.target_fpr == 1e-4 and cal.resolved is (cal.impostor_pairs * 1e-4 >= 1) is False
    assert cal.fpr == 0.0 and cal.source.startswith("IJBC 1:1 template pairs") and cal.protocol == "template"
    assert cal.holdout is None


@pytest.mark.slow
def test_cli_exports_an_arcface_torch_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = create_model("r18").eval()  # a plain state dict has no architecture: full size
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "r18.onnx"
    assert main([str(path), "--network", "r18", "--out", str(out), "--legacy-exporter"]) == 0
    meta = _session_metadata(out)
    assert (meta.model_name, meta.embedding_dim, meta.config_digest, meta.calibration) == ("r18", 512, None, None)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {INPUT_NAME: x.numpy()})
    scale = np.abs(expected).max()  # an untrained full-size net's outputs are large
    np.testing.assert_allclose(got / scale, expected / scale, atol=1e-5)


def _cli(args: list[str]) -> int:
    """Exit code of the command line, whether argparse exits or ``main`` returns."""
    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-fpr", "1e-3"], "--target-fpr needs --calibrate"),
        (["--triton-name", "x"], "--triton-name needs --triton-repo"),
        (["--calibrate", "{empty}", "--target-fpr", "2"], "target FPR must be in (0, 1), got 2.0"),
        (["--calibrate", "{empty}"], "holds no verification .bin files, no IJB-B/C meta/ folder, no train.rec"),
        (["--device", "cuda"], "--device needs --calibrate"),
        (["--calibration-protocol", "template"], "--calibration-protocol needs --calibrate"),
        (["--calibrate", "{empty}", "--calibration-images", "3"], "--calibration-images must be >= 4, got 3"),
        (["--triton-repo", "{tmp}/t", "--triton-name", "a b"], "Triton model name must be"),
        (["--triton-repo", "{tmp}/t", "--max-batch", "0"], "Triton max_batch_size must be >= 1"),
        (["--opset", "17"], "the dynamo exporter needs opset >= 18"),
        (["--parity-data", "{empty}"], "--parity-data needs --fp16"),
        (["--fp16-min-cosine", "0.9"], "--fp16-min-cosine needs --fp16"),
        (["--fp16"], "the float16 export is checked against the float32 graph on aligned face crops"),
        (["--fp16", "--parity-data", "{empty}"], "holds no verification .bin files"),
    ],
)
def test_cli_user_mistakes_are_one_line_exit_2(
    checkpoint: tuple[nn.Module, Path], tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "m.onnx"
    args = [a.format(empty=tmp_path / "empty", tmp=tmp_path) for a in extra]
    legacy = [] if "--opset" in extra else ["--legacy-exporter"]
    code = _cli([str(checkpoint[1]), "--out", str(out), *legacy, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    if "Triton" in message or "needs --" in message or "FPR" in message or "--fp16" in extra:
        assert not out.exists()  # refused before any work


def test_cli_model_mistakes_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "plain.pth"
    torch.save(create_model("r18", **TINY).state_dict(), plain)
    checkpoint = tmp_path / "r18.pt"
    model = create_model("r18", **TINY)
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict()}, checkpoint)
    cases = [
        ([str(tmp_path / "absent.pt")], "absent.pt does not exist"),
        ([str(plain)], "needs name="),
        ([str(checkpoint), "--uncertainty"], "'r18' has no sigma branches"),
        ([str(checkpoint), "--out-of-place"], "unrecognized arguments"),
    ]
    for args, message in cases:
        code = _cli([*args, "--out", str(tmp_path / "m.onnx"), "--legacy-exporter"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.gpu
def test_onnx_on_cuda_provider_when_available(exported: dict) -> None:
    _, path = exported["r18"]
    embedder = Embedder.from_onnx(path, device="cuda")
    assert embedder.backend.startswith("onnxruntime:")
    images = np.zeros((2, 112, 112, 3), np.uint8)
    assert embedder(images).shape == (2, 32)


def test_metadata_makes_one_self_contained_file_with_the_exported_permissions(exported: dict, tmp_path: Path) -> None:
    """torch's dynamo exporter keeps the weights in ``<file>.data``; after ``write_metadata``
    the weights are inside the file, the stale sidecar is gone and the mode is the export's."""
    model, source = exported["r18"]
    sidecars = [p for p in source.parent.iterdir() if p.name.startswith(source.name) and p != source]
    assert sidecars, "the dynamo exporter wrote no external data file: this test no longer tests anything"
    for file in [source, *sidecars]:
        (tmp_path / file.name).write_bytes(file.read_bytes())
    path = tmp_path / source.name
    path.chmod(0o644)
    write_metadata(path, ModelMetadata.default(32, 112, model_name="r18"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]
    assert path.stat().st_mode & 0o777 == 0o644
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    was_training = model.training  # the fixture's model is shared: leave its mode as found
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    model.train(was_training)
    assert np.abs(got - expected).max() <= 1e-4


# ---------------------------------------------------------------- float16


@pytest.fixture(scope="module")
def parity_bin(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic .bin set alone: its first 256 images are the parity crops."""
    folder = tmp_path_factory.mktemp("parity")
    (folder / "agedb_30.bin").symlink_to(synthetic_dir / "agedb_30.bin")
    return folder


def _float_weights(path: Path) -> list[np.ndarray]:
    """Every floating-point initializer of rank >= 1, read with onnx's own numpy_helper."""
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    return [a for a in arrays if a.ndim >= 1 and np.issubdtype(a.dtype, np.floating)]


def _edge_types(path: Path) -> list[int]:
    graph = onnx.load(str(path)).graph
    return [v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp16_export_is_checked_for_parity_and_served_as_float16(
    checkpoint: tuple[nn.Module, Path], parity_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from onnx.reference import ReferenceEvaluator

    from facevib.serve.runtime import ModelRuntime

    model, path = checkpoint
    out, out32 = tmp_path / "face16.onnx", tmp_path / "face32.onnx"
    common = ["--legacy-exporter", "--device", "cpu"]
    assert main([str(path), "--out", str(out), "--fp16", "--parity-data", str(parity_bin), *common]) == 0
    printed = capsys.readouterr().out
    assert "float16 graph (float32 input and outputs)" in printed and "note: CPUExecutionProvider" in printed
    assert main([str(path), "--out", str(out32), "--legacy-exporter"]) == 0

    # The file: float16 weights, float32 edges, still a drop-in. Its weights are the float32
    # file's to float16's precision: the exporter folds batch norms into the convolutions in
    # the model's own type, so a folded weight carries a few float16 roundings (unit roundoff
    # 2^-11 each), and 8 of them bound its relative error.
    weights16, weights32 = _float_weights(out), _float_weights(out32)
    assert weights16 and {w.dtype for w in weights16} == {np.dtype(np.float16)}
    assert {w.dtype for w in weights32} == {np.dtype(np.float32)}
    assert [w.shape for w in weights16] == [w.shape for w in weights32]
    for half, full in zip(weights16, weights32, strict=True):
        assert np.linalg.norm(half.astype(np.float64) - full) <= 8 * 2.0**-11 * np.linalg.norm(full)
    assert _edge_types(out) == [TensorProto.FLOAT, TensorProto.FLOAT] == _edge_types(out32)
    assert insightface_problems(out) == []

    # The metadata: the parity on the first (up to 256) crops of the .bin set, on the CPU provider.
    crops = read_bin(parity_bin / "agedb_30.bin").images[:256]
    meta, meta32 = _session_metadata(out), _session_metadata(out32)
    precision, parity = meta.precision, meta.precision.parity
    assert (precision.weights, precision.io) == ("float16", "float32") and meta.weights_precision == "float16"
    assert meta32.precision.weights == "float32" and meta32.precision.parity is None
    assert (parity.images, parity.bound, parity.provider) == (len(crops), 0.999, "CPUExecutionProvider")
    assert parity.source.startswith(f"the first {len(crops)} images of verification pairs agedb_30.bin")
    # What the stored figures say, recomputed from the PyTorch float32 model and ONNX Runtime's
    # float16 file on the same crops (torch and ORT float32 agree to ~1e-6 in cosine).
    with torch.no_grad():
        reference = model.eval()(images_to_tensor(crops)).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (served,) = session.run(None, {INPUT_NAME: images_to_tensor(crops).numpy()})
    cosines = _cosines(served, reference)
    assert parity.min_cosine == pytest.approx(cosines.min(), abs=1e-5) and parity.min_cosine >= 0.999
    assert parity.mean_cosine == pytest.approx(cosines.mean(), abs=1e-5)
    # float16 arithmetic, which the CPU provider does not do: onnx's reference evaluator
    # computes every node in the graph's own types (float16 activations between the casts).
    (arithmetic,) = ReferenceEvaluator(str(out)).run(None, {INPUT_NAME: images_to_tensor(crops[:8]).numpy()})
    assert _cosines(arithmetic, reference[:8]).min() >= 0.999

    # The server's runtime reports the precision (/v1/info's "runtime" and "model" entries).
    runtime = ModelRuntime.load(out, device="cpu", intra_op_threads=1)
    assert runtime.info()["precision"] == "float16" and runtime.metadata.precision == precision
    assert ModelRuntime.load(out32, device="cpu", intra_op_threads=1).info()["precision"] == "float32"


def test_fp16_export_below_the_bound_is_refused_and_writes_nothing(
    parity_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    few = tmp_path / "few"  # 8 crops of the .bin set as an image folder (identities do not matter here)
    for i, crop in enumerate(read_bin(parity_bin / "agedb_30.bin").images[:8]):
        (few / f"id{i % 4}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(few / f"id{i % 4}" / f"{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    torch.manual_seed(7)
    model = create_model("r18", **TINY).eval()
    with torch.no_grad():
        model.fc.weight[0, 0] = 1e5  # finite in float32, beyond float16's largest value (65504)
    path = tmp_path / "big.pt"
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict()}, path)
    out = tmp_path / "big16.onnx"
    args = [str(path), "--out", str(out), "--fp16", "--parity-data", str(few), "--legacy-exporter"]
    assert _cli(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "float16 export refused: the smallest cosine between float16 and float32 embeddings" in line
    assert "-1.000000" in line and "below the bound 0.999" in line  # non-finite embeddings count as -1
    assert list(tmp_path.glob("big16*")) == []


def test_fp16_uncertainty_graph_keeps_float32_edges(tmp_path: Path) -> None:
    torch.manual_seed(8)
    model = create_model("cellvib_r18", **TINY).eval()
    path = export_onnx(model, tmp_path / "u16.onnx", uncertainty=True, fp16=True, dynamo=False)
    assert _edge_types(path) == [TensorProto.FLOAT] * 3
    assert {w.dtype for w in _float_weights(path)} == {np.dtype(np.float16)}
    x = images_to_tensor(aligned_crops()).numpy()
    embedding, uncertainty = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    with torch.no_grad():
        ref_embedding, ref_uncertainty = model.forward_with_uncertainty(torch.from_numpy(x))
    assert _cosines(embedding, ref_embedding.numpy()).min() >= 0.999
    # mean log sigma in nats: float16 weights move it by far less than its spread over faces.
    np.testing.assert_allclose(uncertainty, ref_uncertainty.numpy(), atol=1e-2)
