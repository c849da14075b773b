"""The serving image's base provides the CUDA and cuDNN majors its onnxruntime-gpu was built for.

ONNX Runtime falls back to the CPU, without an error, when its CUDA provider library cannot
load the CUDA libraries it was linked against. This reads that library's ``DT_NEEDED``
entries (and the wheel's own ``cuda``/``cudnn`` extras) from the onnxruntime-gpu wheel pinned
in docker/serve-constraints.txt, and compares them with the ``FROM`` tag of
docker/serve.Dockerfile. The wheel is fetched by ``make ort-gpu-wheel`` (part of ``make
test``), never installed (the venv has the CPU onnxruntime; never both); without it the wheel
tests skip and say so. The ELF reader is checked against binutils' ``readelf``.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from test_docker_constraints import docker_test

ROOT = Path(__file__).resolve().parents[1]
PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
# nvidia/cuda tags for CUDA 12.4 onwards say "cudnn" without a number and ship cuDNN 9
# (NVIDIA's container-images/cuda supported-tags list); older ones said cudnn8 or cudnn9.
UNNUMBERED_CUDNN_MAJOR = 9
# CUDA toolkit libraries whose soname major is the CUDA major (curand, cufft, ... number their own).
CUDA_MAJOR_LIBRARIES = ("libcudart", "libcublas", "libcublasLt")

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10


def elf_needed(open_stream) -> list[str]:
    """The ``DT_NEEDED`` sonames of a little-endian ELF64 shared library, in order.

    ``open_stream()`` returns a new binary stream at offset 0 each call; it is read forwards
    only (a member of a zip seeks backwards by decompressing again), once to the dynamic
    section and once to its string table.
    """

    def read_at(offset: int, size: int) -> bytes:
        with open_stream() as stream:
            stream.seek(offset)
            data = stream.read(size)
        if len(data) != size:
            raise ValueError(f"ELF truncated at {offset + len(data)}")
        return data

    header = read_at(0, 64)
    if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, phentsize, phnum = struct.unpack_from("<Q", header, 0x20)[0], *struct.unpack_from("<HH", header, 0x36)
    table = read_at(phoff, phentsize * phnum)
    segments = [struct.unpack_from("<IIQQQQQQ", table, i * phentsize) for i in range(phnum)]
    loads = [(vaddr, offset, filesz) for kind, _, offset, vaddr, _, filesz, _, _ in segments if kind == PT_LOAD]
    dynamic = next(((offset, filesz) for kind, _, offset, _, _, filesz, _, _ in segments if kind == PT_DYNAMIC), None)
    if dynamic is None:
        raise ValueError("no PT_DYNAMIC segment: a static executable")
    entries = read_at(*dynamic)
    needed, strtab, strsz = [], None, None
    for tag, value in struct.iter_unpack("<qQ", entries):
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
    if strtab is None or strsz is None:
        raise ValueError("dynamic section without DT_STRTAB/DT_STRSZ")
    # DT_STRTAB is an address: the load segment holding it maps it to a file offset.
    vaddr, offset, _ = next(s for s in loads if s[0] <= strtab < s[0] + s[2])
    strings = read_at(strtab - vaddr + offset, strsz)
    return [strings[i : strings.index(b"\0", i)].decode() for i in needed]


def cuda_majors(needed: list[str]) -> dict[str, int]:
    """``{library: soname major}`` for the CUDA libraries (and cuDNN) in a NEEDED list."""
    majors = {}
    for soname in needed:
        match = re.fullmatch(r"(lib[A-Za-z]+)\.so\.(\d+)", soname)
        if match and (match.group(1) in CUDA_MAJOR_LIBRARIES or match.group(1).startswith("libcudnn")):
            majors[match.group(1)] = int(match.group(2))
    return majors


def cuda_base(image: str) -> tuple[int, int | None]:
    """``(CUDA major, cuDNN major or None)`` of an ``nvidia/cuda`` image tag.

    Raises:
        ValueError: not an nvidia/cuda tag with a CUDA version.
    """
    match = re.fullmatch(r"(?:[\w.-]+/)?nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-(?:(cudnn)(\d*)-)?\w+-\w+[\d.]*", image)
    if match is None:
        raise ValueError(f"{image!r} is not an nvidia/cuda:X.Y.Z-...-OS tag")
    cudnn = None if match.group(2) is None else int(match.group(3) or UNNUMBERED_CUDNN_MAJOR)
    return int(match.group(1)), cudnn


def mismatches(needed: list[str], wheel_cudnn: int | None, image: str) -> list[str]:
    """What the base lacks for these NEEDED entries (and the wheel's declared cuDNN major)."""
    base_cuda, base_cudnn = cuda_base(image)
    problems = []
    for library, major in cuda_majors(needed).items():
        if library.startswith("libcudnn"):
            if base_cudnn != major:
                problems.append(f"{library}.so.{major} needs cuDNN {major}, {image} has {base_cudnn}")
        elif major != base_cuda:
            problems.append(f"{library}.so.{major} needs CUDA {major}, {image} is CUDA {base_cuda}")
    if wheel_cudnn is not None and wheel_cudnn != base_cudnn:
        problems.append(f"the wheel asks for cuDNN {wheel_cudnn}, {image} has {base_cudnn}")
    return problems


def extra_majors(metadata: str) -> dict[str, int]:
    """Majors the wheel's ``cuda``/``cudnn`` extras ask for: ``{'cuda': 13, 'cudnn': 9}``."""
    majors = {}
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        versions = [s.version.split(".")[0] for s in requirement.specifier]
        if requirement.name == "nvidia-cuda-runtime" and versions:
            majors["cuda"] = int(versions[0])
        elif requirement.name.startswith("nvidia-cudnn") and versions:
            majors["cudnn"] = int(versions[0])
    return majors


# --------------------------------------------------------------------------- the reader itself


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf, the reference, is not installed")
def test_the_elf_reader_agrees_with_readelf_on_onnxruntime() -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    libraries = sorted(Path(onnxruntime.__file__).parent.glob("capi/*.so*"))
    assert libraries
    for library in libraries:
        dump = subprocess.run(["readelf", "-d", library], capture_output=True, text=True, check=True).stdout
        expected = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dump)
        assert elf_needed(lambda library=library: open(library, "rb")) == expected, library.name


def test_the_elf_reader_refuses_what_is_not_an_elf64_library(tmp_path: Path) -> None:
    path = tmp_path / "not.so"
    path.write_bytes(b"#!/bin/sh\n" + bytes(100))
    with pytest.raises(ValueError, match="not a little-endian ELF64 file"):
        elf_needed(lambda: open(path, "rb"))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04", (13, 9)),
        ("nvcr.io/nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04", (12, 9)),
        ("nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04", (11, 8)),
        ("nvidia/cuda:13.0.2-runtime-ubuntu24.04", (13, None)),
    ],
)
def test_base_tags_give_their_cuda_and_cudnn_majors(image: str, expected: tuple[int, int | None]) -> None:
    assert cuda_base(image) == expected


def test_a_base_that_is_not_nvidia_cuda_is_refused() -> None:
    with pytest.raises(ValueError, match="'python:3.12-slim' is not an nvidia/cuda"):
        cuda_base("python:3.12-slim")


# --------------------------------------------------------------------------- the pinned wheel


@pytest.fixture(scope="module")
def wheel() -> Path:
    version = docker_test.read_constraints()["onnxruntime-gpu"]
    found = sorted((ROOT / "build").glob(f"onnxruntime_gpu-{version}-*.whl"))
    if not found:
        pytest.skip(f"build/onnxruntime_gpu-{version}-*.whl absent: `make ort-gpu-wheel` fetches it (needs PyPI)")
    return found[0]


@pytest.fixture(scope="module")
def provider_needed(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return elf_needed(lambda: archive.open(PROVIDER))


@pytest.fixture(scope="module")
def wheel_extras(wheel: Path) -> dict[str, int]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return extra_majors(archive.read(name).decode())


@pytest.mark.slow  # decompresses the 284 MB provider library from the wheel (a few seconds)
def test_the_serving_base_has_the_cuda_and_cudnn_of_the_pinned_onnxruntime_gpu(
    provider_needed: list[str], wheel_extras: dict[str, int]
) -> None:
    image = docker_test.base_image(ROOT / "docker" / "serve.Dockerfile")
    majors = cuda_majors(provider_needed)
    assert set(CUDA_MAJOR_LIBRARIES) <= set(majors), provider_needed
    assert len({majors[lib] for lib in CUDA_MAJOR_LIBRARIES}) == 1, majors
    # The wheel's `cuda` extra names the same CUDA major as its linked libraries.
    assert wheel_extras["cuda"] == majors["libcudart"]
    assert mismatches(provider_needed, wheel_extras.get("cudnn"), image) == []


def test_a_base_one_cuda_major_older_is_caught(provider_needed: list[str], wheel_extras: dict[str, int]) -> None:
    """The check would have refused the base of the issue: CUDA 12.6.3 under a CUDA 13 wheel."""
    major = cuda_majors(provider_needed)["libcudart"]
    image = f"nvidia/cuda:{major - 1}.6.3-cudnn-runtime-ubuntu24.04"
    problems = mismatches(provider_needed, wheel_extras.get("cudnn"), image)
    for library in CUDA_MAJOR_LIBRARIES:
        assert f"{library}.so.{major} needs CUDA {major}, {image} is CUDA {major - 1}" in problems
