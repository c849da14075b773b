"""Device resolution against what nvidia-smi reports.

This machine has no GPU, so ``nvidia-smi`` is a stand-in script on PATH that prints what
the real tool prints on a GPU host (``-L``: one ``GPU i: name (UUID: ...)`` line per GPU) or
fails as it does without a driver. torch cannot use a GPU here, the case to refuse.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from facevib.distributed import cuda_mismatch, init_distributed, visible_nvidia_gpus

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch that cannot use the GPUs")

H200_LISTING = (
    "GPU 0: NVIDIA H200 (UUID: GPU-6f0c9a55-0d1c-4e0c-9c7e-1d2b3c4d5e6f)\n"
    "GPU 1: NVIDIA H200 (UUID: GPU-7a1d0b66-1e2d-5f1d-0d8f-2e3c4d5e6f70)\n"
)


def fake_nvidia_smi(folder: Path, stdout: str, exit_code: int = 0) -> str:
    """A PATH whose first entry holds an ``nvidia-smi`` printing ``stdout``."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{stdout}EOF\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


# What torch.version.cuda says of a CPU wheel (None) and of a CUDA wheel that no driver on
# this machine runs; set by hand, so both cases are checked whichever torch is installed.
@pytest.mark.parametrize(("cuda_build", "why"), [(None, "CPU-only build"), ("13.0", "built for CUDA 13.0")])
def test_auto_refuses_an_unusable_torch_on_a_gpu_host_in_one_line(tmp_path, monkeypatch, cuda_build, why):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", H200_LISTING))
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    assert visible_nvidia_gpus() == 2
    with pytest.raises(ValueError) as caught:
        init_distributed("auto")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("run.device=auto: nvidia-smi lists 2 GPU(s) but torch")
    assert why in message and "run.device=cpu" in message
    assert init_distributed("cpu").device == torch.device("cpu")  # an explicit CPU run still works


@pytest.mark.parametrize(
    ("stdout", "exit_code"),
    [("", 0), ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9)],
)
def test_auto_is_the_cpu_when_nvidia_smi_sees_no_gpu(tmp_path, monkeypatch, stdout, exit_code):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", stdout, exit_code))
    assert visible_nvidia_gpus() == 0 and cuda_mismatch() is None
    assert init_distributed("auto").device == torch.device("cpu")


def test_auto_is_the_cpu_without_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi at all
    assert visible_nvidia_gpus() == 0
    assert init_distributed("auto").device == torch.device("cpu")
