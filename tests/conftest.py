"""Shared fixtures: paths, a synthetic face set written once per session, CUDA detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Small enough to write in a few seconds on 2 cores, large enough that a tiny model learns it.
SYNTH_IDENTITIES = 24
SYNTH_IMAGES_PER_IDENTITY = 12


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mxnet_fixture_dir() -> Path:
    """The RecordIO set written by real mxnet 1.9.1 (see tests/fixtures/mxnet_rec/README.md)."""
    return FIXTURES / "mxnet_rec"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic identity set in the real formats (train.rec/idx, .bin sets, IJBC/)."""
    from facevib.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(out, identities=SYNTH_IDENTITIES, images_per_identity=SYNTH_IMAGES_PER_IDENTITY, seed=0)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


def _torchrun_command(nproc: int, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``python -m torch.distributed.run --standalone`` for ``nproc`` local ranks."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra, *args]


@pytest.fixture()
def torchrun_command():
    """Builds a single-node torchrun command line: ``(nproc, *args, extra=launcher_flags)``."""
    return _torchrun_command


@pytest.fixture()
def run_torchrun():
    """Run a torchrun job to completion; fail the test with its output if it fails."""
    import os
    import subprocess

    def run(nproc: int, *args: str, extra: tuple[str, ...] = (), timeout: float = 240) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(
            _torchrun_command(nproc, *args, extra=extra),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"torchrun exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
            )
        return proc

    return run
