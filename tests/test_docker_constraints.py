"""docker/serve-constraints.txt pins every serving dependency, inside pyproject.toml's ranges,
and both images install with it.

The ranges are read from pyproject.toml and compared by ``packaging`` (pip's own version
logic), not by this project's code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _docker_test():
    """tools/docker_test.py as a module (registered first: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("tools_docker_test", ROOT / "tools" / "docker_test.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


docker_test = _docker_test()
PINS = docker_test.read_constraints()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _package_names(args: list[str]) -> list[str]:
    """The package arguments of a ``pip install``: options and the constraints file left out."""
    return [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-c")]


def _requirements(extra: str | None) -> list[Requirement]:
    listed = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in listed]


@pytest.mark.parametrize("requirement", _requirements("serve-gpu"), ids=str)
def test_every_serve_gpu_dependency_is_pinned_inside_its_range(requirement: Requirement) -> None:
    name = canonicalize_name(requirement.name)
    assert name in PINS, f"{name} (serve-gpu in pyproject.toml) is not pinned in docker/serve-constraints.txt"
    assert requirement.specifier.contains(Version(PINS[name]), prereleases=True), (
        f"{name}=={PINS[name]} is outside pyproject.toml's {requirement.specifier}"
    )


def test_the_base_dependencies_the_server_imports_are_pinned_inside_their_ranges() -> None:
    for requirement in _requirements(None):
        name = canonicalize_name(requirement.name)
        if name in ("torch", "tqdm"):  # the server never imports them; the serving image has neither
            assert name not in PINS
            continue
        assert requirement.specifier.contains(Version(PINS[name])), f"{name}=={PINS[name]} vs {requirement}"


def test_the_file_holds_exact_pins_of_released_versions_only() -> None:
    assert all(not Version(v).is_prerelease and not Version(v).is_devrelease for v in PINS.values())
    # serve-gpu and serve must never meet in one environment: the CPU build would shadow the GPU one.
    assert "onnxruntime" not in PINS and "onnxruntime-gpu" in PINS


def test_a_malformed_line_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "constraints.txt"
    bad.write_text("numpy==2.4.6\nfastapi>=0.110\n")
    with pytest.raises(ValueError, match=r"constraints.txt:2: expected name==version, got 'fastapi>=0.110'"):
        docker_test.read_constraints(bad)
    bad.write_text("Pillow==13.0.0\npillow==13.0.0\n")
    with pytest.raises(ValueError, match=r"constraints.txt:2: pillow is pinned twice"):
        docker_test.read_constraints(bad)


@pytest.mark.parametrize("dockerfile", ["serve.Dockerfile", "Dockerfile"])
def test_each_image_installs_its_serving_packages_through_the_constraints(dockerfile: str) -> None:
    path = ROOT / "docker" / dockerfile
    text = path.read_text()
    assert "COPY docker/serve-constraints.txt /tmp/serve-constraints.txt" in text
    constrained = [args for args in docker_test.pip_installs(path) if "-c" in args]
    assert constrained, f"{dockerfile}: no pip install -c"
    for args in constrained:
        assert args[args.index("-c") + 1] == "/tmp/serve-constraints.txt"
        names = _package_names(args)
        assert names and all(canonicalize_name(n) in PINS for n in names), f"{dockerfile}: {names} not all pinned"
        assert all(len(Requirement(n).specifier) == 0 for n in names), "the versions come from the file"
    if dockerfile == "serve.Dockerfile":
        # Nothing else is pip-installed there, so every package in the image is pinned.
        assert len(docker_test.pip_installs(path)) == len(constrained)
        installed = {canonicalize_name(n) for args in constrained for n in _package_names(args)}
        serve_gpu = {canonicalize_name(r.name) for r in _requirements("serve-gpu")}
        assert serve_gpu - installed == {"onnx"}  # the server reads its metadata through onnxruntime


def test_dockerfile_reader_joins_continuations_and_splits_commands(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# comment\nFROM --platform=linux/amd64 nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS base\n"
        "RUN apt-get update \\\n    && pip install -c c.txt a \\\n        b && rm c.txt\nRUN pip install 'x>=1'\n"
    )
    assert docker_test.base_image(path) == "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04"
    assert docker_test.pip_installs(path) == [["-c", "c.txt", "a", "b"], ["x>=1"]]
