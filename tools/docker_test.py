"""Build the images in docker/ on stand-in bases, run them, and check them: ``make docker-test``.

    python tools/docker_test.py --standin-base ../shared/tools/docker-standin-base.sh
    python tools/docker_test.py --skip-trainer --keep-dockerd

This machine reaches PyPI and Debian but no container registry, so every ``FROM`` image is
stood in for by a Debian bookworm root file system tagged with the name the Dockerfile asks
for (``--standin-base``; it has no CUDA). ``python:3.12-slim``, the trainer's base, is that
stand-in plus Debian's Python (3.11) in a venv at /usr/local, where the official image keeps
its Python. An image of that name already present is used as it is.

Serving image (docker/serve.Dockerfile), run with a small random-weight model exported by
``python -m facevib.export`` and mounted read-only: /health/live and /health/ready answer 200;
/v1/embed returns the embedding ONNX Runtime on this machine computes from the same file;
the server runs as the image's unprivileged user; the model mount is read-only; the start-up
log and /v1/info's warnings say that CUDA was requested and the CPU serves (no CUDA here); the
packages in the image are the versions of docker/serve-constraints.txt; torch is absent; the
image's HEALTHCHECK, left at its own interval, turns healthy.

Trainer image (docker/Dockerfile): ``python -m facevib.export ... --calibrate DATA --device cuda``
on a tiny synthetic RecordIO set writes a single-image calibrated file; onnxruntime-gpu is the
ONNX Runtime in it, and its CUDA major is torch's.

Needs root (``apt-get install docker.io debootstrap`` when missing; ``dockerd``, started under
``nice -n 10`` when not running and stopped at the end). Prints a table and writes
``OUT/summary.json``; exits 1 when a check fails. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy, torch and onnxruntime load only where used: --help needs none
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVE_DOCKERFILE = ROOT / "docker" / "serve.Dockerfile"
TRAINER_DOCKERFILE = ROOT / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "docker" / "serve-constraints.txt"
SERVE_TAG = "facevib-serve:docker-test"
TRAINER_TAG = "facevib:docker-test"
SERVE_CONTAINER = "facevib-docker-test-serve"
DEBIAN_STANDIN = "facevib-standin/debian:bookworm"
# The image's unprivileged user (docker/serve.Dockerfile: useradd --uid 10001).
SERVE_UID = 10001
# The server's warning when CUDA was asked for and ONNX Runtime runs elsewhere (facevib/serve/runtime.py).
FALLBACK_MESSAGE = "CUDA was requested"
# Run in the trainer image: the libraries onnxruntime-gpu's CUDA provider links that the dynamic
# linker cannot find on its own, and which of them `import torch` has loaded into the process (a
# loaded soname satisfies the provider's NEEDED entry when ONNX Runtime loads it).
TORCH_LOADS_CUDA = """
import json, os, subprocess, onnxruntime
provider = os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime_providers_cuda.so")
ldd = subprocess.run(["ldd", provider], capture_output=True, text=True).stdout
missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
import torch
maps = open("/proc/self/maps").read()
print(json.dumps({"missing": missing, "loaded_by_torch": [name for name in missing if "/" + name in maps]}))
"""
# A tiny cellVIB network: exports in seconds and embeds in milliseconds.
TINY = {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32}


# --------------------------------------------------------------------------- Dockerfiles


def logical_lines(path: Path) -> list[str]:
    """The instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current.strip())
    return lines


def base_image(path: Path) -> str:
    """The image of the Dockerfile's first ``FROM`` (its only stage here)."""
    for line in logical_lines(path):
        words = line.split()
        if words[0].upper() == "FROM":
            return next(w for w in words[1:] if not w.startswith("--"))
    raise ValueError(f"{path}: no FROM instruction")


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every ``pip install`` that the Dockerfile's RUN instructions run."""
    installs = []
    for line in logical_lines(path):
        if not line.upper().startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line[4:]):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
    return installs


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file of ``name==version`` lines.

    Raises:
        ValueError: a line that is not an exact pin, or a package pinned twice.
    """
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected name==version, got {line!r}")
        name = canonical(match.group(1))
        if name in pins:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        pins[name] = match.group(2)
    return pins


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Pillow`` = ``pillow``, ``ml_dtypes`` = ``ml-dtypes``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- running things


@dataclass
class Check:
    """One line of the summary."""

    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """What the run found: checks, timings (s) and image sizes (MB)."""

    checks: list[Check] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    image_mb: dict[str, float] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return bool(ok)

    def timed(self, name: str, action: Callable[[], object]) -> object:
        start = time.monotonic()
        try:
            return action()
        finally:
            self.seconds[name] = round(time.monotonic() - start, 1)


def run(
    args: list, *, timeout: float = 600, check: bool = True, quiet: bool = False, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it; its output is captured (and shown on failure)."""
    print("+ " + shlex.join(str(a) for a in args), flush=True)
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError(f"{shlex.join(str(a) for a in args[:4])} ... exited with {done.returncode}")
    if not quiet and done.returncode == 0 and done.stdout.strip():
        print("  " + done.stdout.strip().splitlines()[-1][:200], flush=True)
    return done


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` through :func:`run`."""
    return run(["docker", *args], **kwargs)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, quiet=True).returncode == 0


def image_mb(tag: str) -> float:
    return round(int(docker("image", "inspect", "--format", "{{.Size}}", tag, quiet=True).stdout) / 1e6, 1)


def ensure_tools() -> None:
    """docker.io and debootstrap from Debian, when ``dockerd`` or ``debootstrap`` is missing."""
    if shutil.which("dockerd") and shutil.which("debootstrap") and shutil.which("docker"):
        return
    run(["apt-get", "update"], timeout=900)
    run(["apt-get", "install", "-y", "docker.io", "debootstrap"], timeout=900)


@contextmanager
def docker_daemon(log: Path, keep: bool) -> Iterator[None]:
    """A running dockerd: the one already running, or one started here (under nice -n 10, so
    builds yield the CPU) and stopped on the way out unless ``keep``."""
    if docker("info", check=False, quiet=True).returncode == 0:
        yield
        return
    print(f"starting dockerd (log: {log})", flush=True)
    with open(log, "ab") as sink:
        daemon = subprocess.Popen(["nice", "-n", "10", "dockerd"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while docker("info", check=False, quiet=True).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {log}")
            time.sleep(1)
        yield
    finally:
        if not keep:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def stand_in(tag: str, script: Path) -> str:
    """Make ``tag`` exist locally: the stand-in script's Debian image, plus Python for ``python:*``."""
    if image_exists(tag):
        return f"{tag}: present, used as it is"
    if not tag.startswith("python:"):
        run(["nice", "-n", "10", "bash", script, tag], timeout=1200)
        return f"{tag}: stand-in built (Debian bookworm, no CUDA)"
    if not image_exists(DEBIAN_STANDIN):
        run(["nice", "-n", "10", "bash", script, DEBIAN_STANDIN], timeout=1200)
    recipe = (
        f"FROM {DEBIAN_STANDIN}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv "
        "&& rm -rf /var/lib/apt/lists/* && python3 -m venv /usr/local\n"
    )
    run(["docker", "build", "-t", tag, "-"], input=recipe, timeout=900)
    return f"{tag}: stand-in built (Debian bookworm + Debian's Python 3.11 in /usr/local, no CUDA)"


# --------------------------------------------------------------------------- HTTP


def http(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict | str]:
    """``(status, JSON or text)`` of a GET, or of a POST of ``body`` as JSON; 0 when unreachable."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def wait_for(probe: Callable[[], bool], timeout: float, every: float = 1.0) -> float | None:
    """Seconds until ``probe()`` held, or None when ``timeout`` passed first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return round(time.monotonic() - start, 1)
        time.sleep(every)
    return None


# --------------------------------------------------------------------------- inputs made on the host


def write_checkpoint(path: Path) -> Path:
    """A random-weight tiny cellVIB checkpoint (facevib's format), seeded."""
    import torch

    from facevib.models import create_model

    torch.manual_seed(0)
    model = create_model("cellvib_r18", **TINY).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": {}}, path)
    return path


def probe_image() -> np.ndarray:
    """A deterministic 112x112 aligned RGB crop (smooth colour ramps, PNG-exact)."""
    import numpy as np

    y, x = np.mgrid[0:112, 0:112]
    return np.stack([(2 * x) % 256, (2 * y) % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def host_embedding(model: Path, image: np.ndarray) -> list[float]:
    """The model's L2-normalised embedding of ``image`` by this machine's ONNX Runtime, from
    the input convention of BRIEF section 3: RGB, (x / 255 - 0.5) / 0.5, NCHW float32."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    batch = ((image.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    embedding = session.run(None, {session.get_inputs()[0].name: batch})[0][0]
    return (embedding / np.linalg.norm(embedding)).tolist()


def png_base64(image: np.ndarray) -> str:
    """``image`` (RGB) as base64 PNG, the way a client sends it."""
    import cv2

    ok, encoded = cv2.imencode(".png", image[:, :, ::-1])  # OpenCV writes BGR
    assert ok
    return base64.b64encode(encoded.tobytes()).decode()


# --------------------------------------------------------------------------- the serving image


def check_serving_image(report: Report, work: Path, port: int) -> None:
    """Build docker/serve.Dockerfile, run it with a read-only model, check it."""
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    checkpoint = write_checkpoint(work / "checkpoint" / "backbone.pt")
    model = models / "model.onnx"
    report.timed(
        "export_model",
        lambda: run([sys.executable, "-m", "facevib.export", checkpoint, "--out", model, "--uncertainty"], timeout=900),
    )
    os.chmod(models, 0o755)
    os.chmod(model, 0o644)
    report.timed(
        "build_serve_image",
        lambda: run(["docker", "build", "-f", SERVE_DOCKERFILE, "-t", SERVE_TAG, "."], cwd=ROOT, timeout=1800),
    )
    report.image_mb["serve"] = image_mb(SERVE_TAG)
    docker("rm", "-f", SERVE_CONTAINER, check=False, quiet=True)
    docker(
        "run", "-d", "--name", SERVE_CONTAINER, "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{models}:/models:ro", "-e", "FACEVIB_MODEL=/models/model.onnx", SERVE_TAG,
    )  # fmt: skip
    try:
        check_server(report, f"http://127.0.0.1:{port}", model)
    finally:
        (work / "serve.log").write_text(logs(SERVE_CONTAINER))
        docker("rm", "-f", SERVE_CONTAINER, check=False, quiet=True)


def logs(container: str) -> str:
    done = docker("logs", container, check=False, quiet=True)
    return done.stdout + done.stderr


def in_container(*command: str) -> subprocess.CompletedProcess[str]:
    """``docker exec`` in the serving container; never raises on a non-zero exit."""
    return docker("exec", SERVE_CONTAINER, *command, check=False, quiet=True)


def check_server(report: Report, url: str, model: Path) -> None:
    import numpy as np

    live = wait_for(lambda: http(url + "/health/live")[0] == 200, timeout=180)
    report.check(
        "serve /health/live", live is not None, f"200 after {live} s" if live is not None else "no 200 in 180 s"
    )
    ready = wait_for(lambda: http(url + "/health/ready")[0] == 200, timeout=180)
    status, body = http(url + "/health/ready")
    report.check("serve /health/ready", ready is not None, f"{status} after {ready} s: {json.dumps(body)[:160]}")

    image = probe_image()
    status, body = http(url + "/v1/embed", {"images": [{"data": png_base64(image), "aligned": True}]}, timeout=60)
    try:
        served = body["results"][0]["faces"][0]["embedding"]
        cosine = float(np.dot(served, host_embedding(model, image)))
        detail = f"{status}, {len(served)}-d embedding, cosine {cosine:.6f} to this machine's onnxruntime on the file"
        ok = status == 200 and len(served) == TINY["embedding_dim"] and cosine > 0.9999
    except (KeyError, IndexError, TypeError) as err:
        ok, detail = False, f"{status}: {type(err).__name__} reading {json.dumps(body)[:200]}"
    report.check("serve /v1/embed", ok, detail)

    status_lines = in_container("cat", "/proc/1/status").stdout
    uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status_lines, re.MULTILINE)
    user = docker("inspect", "--format", "{{.Config.User}}", SERVE_CONTAINER, quiet=True).stdout.strip()
    report.check(
        "serve unprivileged user",
        uid is not None and int(uid.group(1)) == int(uid.group(2)) == SERVE_UID,
        f"PID 1 uid {uid.groups() if uid else '?'}, image USER {user!r}",
    )
    write = in_container("sh", "-c", "echo x > /models/probe")
    mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", SERVE_CONTAINER, quiet=True).stdout)
    rw = [m["RW"] for m in mounts if m["Destination"] == "/models"]
    report.check(
        "serve model mount read-only",
        write.returncode != 0 and rw == [False],
        f"RW={rw}; writing /models/probe: {(write.stderr or write.stdout).strip()[:100]!r}",
    )

    status, info = http(url + "/v1/info")
    warned = [w for w in info.get("warnings", []) if FALLBACK_MESSAGE in w] if isinstance(info, dict) else []
    log_lines = [line for line in logs(SERVE_CONTAINER).splitlines() if FALLBACK_MESSAGE in line]
    providers = info.get("runtime", {}).get("providers") if isinstance(info, dict) else None
    report.check(
        "serve CPU-fallback message",
        status == 200 and bool(warned) and bool(log_lines),
        f"log: {log_lines[0].strip()[:150] if log_lines else 'absent'!r}; /v1/info warnings: {len(warned)}, providers {providers}",
    )
    missing = in_container(
        "sh", "-c",
        'ldd "$(python3 -c \'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))\')'
        '/capi/libonnxruntime_providers_cuda.so" | grep "not found"',
    ).stdout.split()  # fmt: skip
    missing = [word for word in missing if word.startswith("lib")]
    report.check(
        "serve CUDA provider: only CUDA libraries missing",
        bool(missing) and all(name.startswith("libcu") for name in missing),
        "not found in the image (the stand-in has no CUDA): " + (", ".join(missing) or "none"),
    )

    freeze = in_container("pip", "freeze", "--all").stdout.splitlines()
    installed = {canonical(n): v for n, v in (line.split("==", 1) for line in freeze if "==" in line)}
    pins = read_constraints()
    unpinned = sorted(set(installed) - set(pins) - {"pip", "setuptools", "wheel"})
    differ = sorted(f"{n} {v} (pinned {pins[n]})" for n, v in installed.items() if n in pins and pins[n] != v)
    report.check(
        "serve image packages = docker/serve-constraints.txt",
        bool(installed) and not unpinned and not differ,
        f"{len(installed)} installed; not pinned: {unpinned or 'none'}; other versions: {differ or 'none'}",
    )
    torch_import = in_container("python3", "-c", "import torch")
    report.check("serve image has no torch", torch_import.returncode != 0, "import torch fails, as it should")

    def health() -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", SERVE_CONTAINER, quiet=True).stdout.strip()

    healthy = wait_for(lambda: health() == "healthy", timeout=240, every=2)
    config = docker("inspect", "--format", "{{json .Config.Healthcheck}}", SERVE_CONTAINER, quiet=True).stdout
    interval = json.loads(config).get("Interval", 0) / 1e9
    report.check(
        "serve HEALTHCHECK",
        healthy is not None,
        f"{health()} {healthy} s after the checks above (the image's interval, {interval:.0f} s)",
    )


# --------------------------------------------------------------------------- the trainer image


def check_trainer_image(report: Report, work: Path, build_args: list[str]) -> None:
    """Build docker/Dockerfile; export and calibrate a checkpoint inside it."""
    checkpoint = write_checkpoint(work / "checkpoint" / "backbone.pt")
    data, out = work / "calibration-set", work / "trainer-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if not (data / "train.rec").is_file():
        run(
            [sys.executable, "-m", "facevib.synth", "--out", data, "--identities", "12", "--images-per-identity", "6",
             "--lfw-identities", "0", "--cfp-fp-identities", "0", "--agedb-30-identities", "0",
             "--ijb-identities", "0", "--workers", "1"],
            timeout=600,
        )  # fmt: skip
    flags = [a for arg in build_args for a in ("--build-arg", arg)]
    report.timed(
        "build_trainer_image",
        lambda: run(
            ["docker", "build", "-f", TRAINER_DOCKERFILE, *flags, "-t", TRAINER_TAG, "."], cwd=ROOT, timeout=3600
        ),
    )
    report.image_mb["trainer"] = image_mb(TRAINER_TAG)

    versions = docker(
        "run", "--rm", TRAINER_TAG, "python", "-c",
        "import json, torch, onnxruntime as ort; from onnxruntime.capi import build_and_package_info as b; "
        "print(json.dumps({'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'ort': ort.__version__, "
        "'ort_package': b.package_name, 'ort_cuda': getattr(b, 'cuda_version', None), "
        "'providers': ort.get_available_providers()}))",
        check=False, quiet=True,
    )  # fmt: skip
    found = json.loads(versions.stdout.strip().splitlines()[-1]) if versions.returncode == 0 else {}
    pinned = read_constraints()["onnxruntime-gpu"]
    report.check(
        "trainer onnxruntime-gpu",
        found.get("ort_package") == "onnxruntime-gpu" and found.get("ort") == pinned
        and "CUDAExecutionProvider" in found.get("providers", []),
        f"{found.get('ort_package')} {found.get('ort')} (pinned {pinned}), providers {found.get('providers')}",
    )  # fmt: skip
    torch_cuda, ort_cuda = found.get("torch_cuda"), found.get("ort_cuda")
    if torch_cuda is None:
        report.check(
            "trainer CUDA majors (information)", True, f"torch {found.get('torch')} is a CPU build: not compared"
        )
    else:
        report.check(
            "trainer CUDA majors",
            str(torch_cuda).split(".")[0] == str(ort_cuda).split(".")[0],
            f"torch {found.get('torch')} CUDA {torch_cuda}, onnxruntime-gpu CUDA {ort_cuda}",
        )

    if torch_cuda is not None:
        done = docker("run", "--rm", TRAINER_TAG, "python", "-c", TORCH_LOADS_CUDA, check=False, quiet=True)
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
        # libcuda.so.1 is the driver's: the NVIDIA container toolkit mounts it on a GPU host.
        left = sorted(set(found.get("missing", ["?"])) - set(found.get("loaded_by_torch", [])) - {"libcuda.so.1"})
        report.check(
            "trainer: import torch loads the CUDA libraries onnxruntime-gpu needs",
            done.returncode == 0 and not left,
            f"not on the linker's path: {found.get('missing')}; loaded by torch: {found.get('loaded_by_torch')}",
        )

    command = [
        "python", "-m", "facevib.export", "/in/backbone.pt", "--out", "/out/model.onnx", "--uncertainty",
        "--calibrate", "/data", "--target-fpr", "1e-2", "--device", "cuda", "--no-progress",
    ]  # fmt: skip
    start = time.monotonic()
    done = docker(
        "run", "--rm", "-v", f"{checkpoint.parent}:/in:ro", "-v", f"{data}:/data:ro", "-v", f"{out}:/out",
        TRAINER_TAG, *command, check=False, timeout=1800,
    )  # fmt: skip
    report.seconds["trainer_export_calibrate"] = round(time.monotonic() - start, 1)
    (work / "trainer-export.log").write_text(done.stdout + done.stderr)
    calibration = None
    if done.returncode == 0 and (out / "model.onnx").is_file():
        import onnxruntime as ort

        from facevib.onnx_meta import read_metadata

        calibration = read_metadata(ort.InferenceSession(str(out / "model.onnx"))).calibration
    ran_on = re.search(r"ran on ([^)]*\))", done.stdout + done.stderr)
    report.check(
        "trainer export + calibrate",
        calibration is not None and calibration.protocol == "single_image",
        f"exit {done.returncode}; threshold {calibration.threshold if calibration else None}, protocol "
        f"{calibration.protocol if calibration else None}; {ran_on.group(1) if ran_on else 'provider not printed'}",
    )


# --------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--standin-base",
        type=Path,
        default=ROOT.parent / "shared" / "tools" / "docker-standin-base.sh",
        help="script that builds a stand-in for a FROM image: SCRIPT IMAGE:TAG",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "build" / "docker-test", help="work files, logs, summary.json"
    )
    parser.add_argument("--port", type=int, default=18080, help="host port (127.0.0.1) for the serving container")
    parser.add_argument("--skip-trainer", action="store_true", help="leave the trainer image out")
    parser.add_argument("--skip-serving", action="store_true", help="leave the serving image out")
    parser.add_argument(
        "--trainer-build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="docker build --build-arg for the trainer image, e.g. TORCH_SPEC=torch==2.13.0",
    )
    parser.add_argument("--keep-dockerd", action="store_true", help="leave a dockerd started here running")
    parser.add_argument("--remove-images", action="store_true", help="remove the facevib test images at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.standin_base.is_file():
        print(f"error: --standin-base {args.standin_base} does not exist", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    try:
        ensure_tools()
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as err:
        print(f"error: cannot install docker.io and debootstrap (root needed): {err}", file=sys.stderr)
        return 2
    with docker_daemon(args.out / "dockerd.log", keep=args.keep_dockerd):
        try:
            chosen = ((SERVE_DOCKERFILE, args.skip_serving), (TRAINER_DOCKERFILE, args.skip_trainer))
            for dockerfile in [path for path, skip in chosen if not skip]:
                tag = base_image(dockerfile)
                report.check(
                    f"base {tag}", True, report.timed(f"base {tag}", lambda tag=tag: stand_in(tag, args.standin_base))
                )
            if not args.skip_serving:
                check_serving_image(report, args.out, args.port)
            if not args.skip_trainer:
                check_trainer_image(report, args.out, args.trainer_build_arg)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            report.check("run", False, str(err))
        finally:
            if args.remove_images:
                docker("image", "rm", "-f", SERVE_TAG, TRAINER_TAG, check=False)
    report.seconds["total"] = round(time.monotonic() - started, 1)
    (args.out / "summary.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print_summary(report, args.out / "summary.json")
    return 0 if all(c.ok for c in report.checks) else 1


def print_summary(report: Report, path: Path) -> None:
    failed = sum(not c.ok for c in report.checks)
    print(f"\n== make docker-test: {len(report.checks) - failed} passed, {failed} failed ({path})")
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in report.seconds.items()))
    print("image MB: " + ", ".join(f"{k} {v}" for k, v in report.image_mb.items()))


if __name__ == "__main__":
    sys.exit(main())
