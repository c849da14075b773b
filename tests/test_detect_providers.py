"""Which ONNX Runtime providers the detectors run on, chosen from ``--device`` like the embedding runtime.

The pure choice is tested with provider lists (a CUDA build and a CPU build); the detectors
themselves are opened on this machine's real onnxruntime, whose ``get_available_providers()``
decides what ``auto`` and ``cuda`` get: the CUDA provider first on a build that has it, the CPU
provider with a note otherwise. No part of ONNX Runtime is mocked.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

from facevib.detect import load_detector
from facevib.detect.providers import CPU, CUDA, ProviderChoice, choose_providers, fallback_note

GPU_BUILD = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
]  # onnxruntime-gpu's list order
CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]
HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.mark.parametrize(
    ("device", "cuda_id"),
    [("auto", 0), ("cuda", 0), ("CUDA:1", 1), (" cuda:3 ", 3)],
)
def test_cuda_first_on_a_cuda_build(device: str, cuda_id: int) -> None:
    choice = choose_providers(device, GPU_BUILD)
    assert choice.providers == [(CUDA, {"device_id": cuda_id, "cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert choice.wants_cuda and choice.notes == []


def test_cpu_is_always_the_cpu_provider() -> None:
    assert choose_providers("cpu", GPU_BUILD) == ProviderChoice([CPU])
    assert choose_providers("cpu", CPU_BUILD) == ProviderChoice([CPU])


def test_without_a_cuda_provider_auto_is_quiet_and_cuda_says_why() -> None:
    assert choose_providers("auto", CPU_BUILD) == ProviderChoice([CPU])
    choice = choose_providers("cuda:0", CPU_BUILD)
    assert choice.providers == [CPU] and not choice.wants_cuda
    (note,) = choice.notes
    assert "no CUDAExecutionProvider (available: AzureExecutionProvider, CPUExecutionProvider)" in note


def test_a_cuda_provider_that_did_not_start_is_reported() -> None:
    chosen = choose_providers("cuda", GPU_BUILD)
    assert "runs it on CPUExecutionProvider" in fallback_note(chosen, [CPU], "cuda")
    assert fallback_note(chosen, [CUDA, CPU], "cuda") is None
    assert fallback_note(choose_providers("cpu", GPU_BUILD), [CPU], "cpu") is None


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", ""])
def test_bad_devices_are_named(device: str) -> None:
    with pytest.raises(ValueError, match=f"device must be auto, cpu, cuda or cuda:N, got {device!r}"):
        choose_providers(device, GPU_BUILD)
    with pytest.raises(ValueError, match="device must be"):
        load_detector("mtcnn", device=device)


@pytest.mark.parametrize("device", ["auto", "cuda", "cpu"])
def test_mtcnn_sessions_follow_this_builds_providers(device: str) -> None:
    detector = load_detector("mtcnn", threads=1, device=device)
    info = detector.describe()
    wanted = device != "cpu"
    assert info["requested_device"] == device
    if wanted and HAS_CUDA:  # a GPU host: CUDA first, or a note saying why it did not start
        assert info["providers"][0] == CUDA or any("failed to start" in w for w in info["warnings"])
    else:
        assert info["providers"] == [CPU]
        cuda_notes = [w for w in info["warnings"] if "no CUDAExecutionProvider" in w]
        # Only an explicit cuda on a build without the provider says why; auto falls back quietly.
        assert len(cuda_notes) == (1 if device == "cuda" else 0)
