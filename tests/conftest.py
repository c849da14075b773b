"""Shared fixtures: paths, a synthetic face set written once per session, CUDA detection."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# One inductor kernel cache per ATEN_CPU_CAPABILITY. torch 2.13 keys its on-disk cache
# without it: a kernel compiled under ATEN_CPU_CAPABILITY=avx2 and loaded by a later run on
# the native AVX-512 kernels crashed that run (docs/training.md). CI runs the suite under
# two capabilities, and developers switch between them by hand.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    str(
        Path(tempfile.gettempdir())
        / f"torchinductor_{getpass.getuser()}_{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}"
    ),
)

# Small enough to write in a few seconds on 2 cores, large enough that a tiny model learns it.
SYNTH_IDENTITIES = 24
SYNTH_IMAGES_PER_IDENTITY = 12


# Modules whose verdicts rest on floating-point results (learned outcomes, parity between
# implementations, rank equivalence): marked `numeric`, so that CI reruns them with torch's
# kernels forced to another CPU class (.ci/run) and a rounding-dependent verdict shows.
NUMERIC_MODULES = frozenset(
    {
        "test_train.py",
        "test_task_ranks.py",
        "test_partial_fc.py",
        "test_losses.py",
        "test_vib.py",
        "test_models.py",
        "test_cells_models.py",
        "test_export.py",
        "test_serve_runtime.py",
        "test_detect_embed.py",
        "test_detect_mtcnn.py",
        "test_eval_verification.py",
        "test_info_estimators.py",
        "test_uncertainty.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the `numeric` modules; skip `gpu`-marked tests cleanly on machines without CUDA."""
    for item in items:
        if item.path.name in NUMERIC_MODULES:
            item.add_marker(pytest.mark.numeric)
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
def mxnet_manifest(mxnet_fixture_dir: Path) -> dict:
    """What mxnet was asked to pack: labels, headers and MD5s per record (manifest.json)."""
    return json.loads((mxnet_fixture_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def mxnet_jpegs(mxnet_fixture_dir: Path) -> list[bytes]:
    """The 20 JPEGs mxnet packed, in key order."""
    from facevib.data.recordio import IndexedRecordReader, unpack

    reader = IndexedRecordReader(mxnet_fixture_dir / "no_header" / "train.rec")
    return [bytes(unpack(reader.read(key))[1]) for key in range(20)]


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic identity set in the real formats (train.rec/idx, .bin sets, IJBC/)."""
    from facevib.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(out, identities=SYNTH_IDENTITIES, images_per_identity=SYNTH_IMAGES_PER_IDENTITY, seed=0)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs)."""
    found, frontier = [], [pid]
    while frontier:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(frontier.pop())], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        found += children
        frontier += children
    return found


def _terminate_tree(proc: subprocess.Popen) -> None:
    """Stop a launcher and everything it started.

    torchrun starts each worker in a session of its own, so killing the launcher's process
    group would orphan them (blocked in a collective, forever): SIGTERM the launcher, which
    stops its workers, then SIGKILL whatever of the tree is left.
    """
    if proc.poll() is not None:
        return
    tree = _descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture()
def launch():
    """Start a command (cwd: the checkout, output captured); at the end of the test any
    still running is stopped together with every process it started."""
    started: list[subprocess.Popen] = []

    def start(cmd: list[str]) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        _terminate_tree(proc)


def _torchrun_command(nproc: int, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``python -m torch.distributed.run --standalone`` for ``nproc`` local ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra, *args]


@pytest.fixture()
def torchrun_command():
    """Builds a single-node torchrun command line: ``(nproc, *args, extra=launcher_flags)``."""
    return _torchrun_command


@pytest.fixture()
def run_torchrun(launch):
    """Run a torchrun job to completion and return its output; fail the test if it fails."""

    def run(nproc: int, *args: str, extra: tuple[str, ...] = (), timeout: float = 240) -> str:
        proc = launch(_torchrun_command(nproc, *args, extra=extra))
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun still running after {timeout} s: {' '.join(args)}")
        if proc.returncode != 0:
            pytest.fail(f"torchrun exited {proc.returncode}\n{output[-8000:]}")
        return output

    return run
