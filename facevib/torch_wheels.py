"""Which PyTorch wheel index a CUDA host installs torch from: ``python -m facevib.torch_wheels``.

``make install`` runs this on a host where ``nvidia-smi -L`` lists GPUs, before torch is
installed (so it imports nothing but the standard library). The driver's CUDA version is
the one ``nvidia-smi`` prints in its header (``CUDA Version: 12.8``): the newest CUDA its
driver runs. The index chosen is the newest PyTorch CUDA build not newer than that, so
the driver can run every kernel of the wheel; a driver older than the oldest build is
refused in one line (a CPU-only torch would train on the CPU without a word).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

__all__ = ["CUDA_BUILDS", "INDEX_URL", "driver_cuda_version", "torch_index_for"]

# PyTorch's CUDA wheel indexes, newest first: (CUDA major, minor, index tag). Those of the
# torch 2.9-2.11 releases; older tags (cu118, cu121, cu124) carry no current torch.
CUDA_BUILDS = ((13, 0, "cu130"), (12, 8, "cu128"), (12, 6, "cu126"))
INDEX_URL = "https://download.pytorch.org/whl/{tag}"
_VERSION = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")


def driver_cuda_version(nvidia_smi_output: str) -> tuple[int, int] | None:
    """(major, minor) of the ``CUDA Version:`` in ``nvidia-smi``'s header, or None."""
    found = _VERSION.search(nvidia_smi_output)
    return (int(found.group(1)), int(found.group(2))) if found else None


def torch_index_for(nvidia_smi_output: str) -> str:
    """The PyTorch wheel index URL for the driver ``nvidia_smi_output`` (plain ``nvidia-smi``) shows.

    Raises:
        ValueError: one line, when the output shows no CUDA version or one older than
            every build in :data:`CUDA_BUILDS`.
    """
    version = driver_cuda_version(nvidia_smi_output)
    oldest = f"{CUDA_BUILDS[-1][0]}.{CUDA_BUILDS[-1][1]}"
    if version is None:
        raise ValueError(
            "nvidia-smi shows no 'CUDA Version' (is the NVIDIA driver loaded?); "
            "set TORCH_INDEX=<PyTorch wheel index URL> to choose one"
        )
    for major, minor, tag in CUDA_BUILDS:
        if version >= (major, minor):
            return INDEX_URL.format(tag=tag)
    raise ValueError(
        f"the NVIDIA driver runs CUDA up to {version[0]}.{version[1]}, older than the oldest PyTorch CUDA build "
        f"({oldest}); update the driver, or set TORCH_INDEX=<PyTorch wheel index URL> to choose one"
    )


def main() -> int:
    """Print the index URL for this host's driver, or one ``error:`` line and exit 1."""
    executable = shutil.which("nvidia-smi")
    try:
        if executable is None:
            raise ValueError("nvidia-smi not found on PATH")
        shown = subprocess.run([executable], capture_output=True, text=True, timeout=60, check=False).stdout
        print(torch_index_for(shown))
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
