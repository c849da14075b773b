"""`make install` picks the GPU or CPU stack from what nvidia-smi reports.

``make -n -B`` prints the recipe without running it. No GPU here: a stand-in ``nvidia-smi``
on PATH prints what the real tool lists on a GPU host (see tests/test_distributed.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_distributed import H200_LISTING, fake_nvidia_smi

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
    assert any('"torch>=2.4"' in line for line in recipe)
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
    assert any('"torch==2.13.0"' in line for line in recipe)
    assert not any("cuda_mismatch" in line for line in recipe)
