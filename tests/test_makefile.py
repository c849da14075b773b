"""`make install` picks the GPU or CPU stack from what nvidia-smi reports.

``make -n -B`` prints the recipe without running it. No GPU here: a stand-in ``nvidia-smi``
on PATH prints what the real tool lists on a GPU host (see tests/test_distributed.py), and
for the torch index, the header plain ``nvidia-smi`` prints (driver and CUDA version lines
as NVIDIA's driver 550 and 570 print them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import H200_LISTING, fake_nvidia_smi

from facevib.torch_wheels import torch_index_for

ROOT = Path(__file__).resolve().parents[1]


def install_recipe(path: str) -> list[str]:
    """The commands `make install` would run with ``PATH=path``, one per line."""
    env = {**os.environ, "PATH": path}
    done = subprocess.run(
        ["make", "-n", "-B", "install", "VENV=.venv"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_a_cuda_host_installs_serve_gpu_never_serve_and_checks_torch(tmp_path):
    recipe = install_recipe(fake_nvidia_smi(tmp_path / "bin", H200_LISTING))
    extras = next(line for line in recipe if " -e " in line)
    assert "serve-gpu" in extras and "serve," not in extras.replace("serve-gpu", "")
    assert not any("--system-site-packages" in line for line in recipe)
    torch_line = next(line for line in recipe if '"torch>=2.4"' in line)
    assert "index=$(.venv/bin/python -m facevib.torch_wheels) && " in torch_line
    assert '--index-url "$index"' in torch_line
    check = next(line for line in recipe if "cuda_mismatch" in line)
    if torch.cuda.is_available():
        pytest.skip("the refusal needs a torch that cannot use the GPUs")
    env = {**os.environ, "PATH": fake_nvidia_smi(tmp_path / "bin", H200_LISTING)}
    refused = subprocess.run(["sh", "-c", check], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: nvidia-smi lists 2 GPU(s)")


def test_a_cpu_host_installs_the_cpu_stack(tmp_path):
    recipe = install_recipe(fake_nvidia_smi(tmp_path / "bin", "", exit_code=9))
    extras = next(line for line in recipe if " -e " in line)
    assert "serve," in extras and "serve-gpu" not in extras
    assert any(line.endswith('pip install --quiet "torch==2.13.0"') for line in recipe)  # the local CPU wheel
    assert not any("cuda_mismatch" in line or "index" in line for line in recipe)


def nvidia_smi_header(driver: str, cuda: str) -> str:
    """The first lines plain ``nvidia-smi`` prints."""
    return (
        "Wed Dec  2 16:00:00 2026\n"
        "+-----------------------------------------------------------------------------------------+\n"
        f"| NVIDIA-SMI {driver}             Driver Version: {driver}     CUDA Version: {cuda}     |\n"
        "|-----------------------------------------+------------------------+----------------------+\n"
        "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n"
    )


@pytest.mark.parametrize(
    ("cuda", "index"),
    [("13.0", "cu130"), ("13.1", "cu130"), ("12.9", "cu128"), ("12.8", "cu128"), ("12.6", "cu126")],
)
def test_the_torch_index_is_the_newest_cuda_build_the_driver_runs(cuda, index):
    shown = nvidia_smi_header("580.95.05" if cuda.startswith("13") else "570.124.06", cuda)
    assert torch_index_for(shown) == f"https://download.pytorch.org/whl/{index}"


@pytest.mark.parametrize(
    ("shown", "reason"),
    [
        (
            nvidia_smi_header("550.54.15", "12.4"),
            "runs CUDA up to 12.4, older than the oldest PyTorch CUDA build (12.6)",
        ),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", "no 'CUDA Version'"),
    ],
)
def test_a_driver_without_a_torch_build_is_refused_in_one_line(shown, reason):
    with pytest.raises(ValueError) as caught:
        torch_index_for(shown)
    assert reason in str(caught.value) and "\n" not in str(caught.value) and "TORCH_INDEX=" in str(caught.value)


def test_the_selector_reads_the_hosts_nvidia_smi(tmp_path):
    """What the recipe runs, against a stand-in nvidia-smi: the URL, or one error line."""
    for cuda, expected in (("12.8", "https://download.pytorch.org/whl/cu128\n"), ("12.2", None)):
        path = fake_nvidia_smi(tmp_path / cuda, nvidia_smi_header("535.104.05", cuda))
        done = subprocess.run(
            [sys.executable, "-m", "facevib.torch_wheels"], cwd=ROOT, env={**os.environ, "PATH": path},
            capture_output=True, text=True,
        )  # fmt: skip
        if expected:
            assert (done.returncode, done.stdout) == (0, expected)
        else:
            assert done.returncode == 1 and done.stdout == ""
            assert done.stderr.count("\n") == 1 and done.stderr.startswith(
                "error: the NVIDIA driver runs CUDA up to 12.2"
            )


def test_torch_index_overrides_the_choice(tmp_path):
    env = {**os.environ, "PATH": fake_nvidia_smi(tmp_path / "bin", H200_LISTING)}
    done = subprocess.run(
        ["make", "-n", "-B", "install", "VENV=.venv", "TORCH_INDEX=https://example.org/whl/cu129"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    torch_line = next(line for line in done.stdout.splitlines() if '"torch>=2.4"' in line)
    assert torch_line.startswith('index=$(echo "https://example.org/whl/cu129") && ')
