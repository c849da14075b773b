"""Starting a server process and knowing when it is ready: for tests, benchmarks and the demo.

Everything that launches ``serve/app.py`` (or ``uvicorn --factory``) in a subprocess needs a
free port and a wait until ``GET /health`` answers 200, failing fast when the process dies
first. Standard library only, like the rest of what the serving image imports.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

__all__ = ["free_port", "wait_healthy"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    url: str,
    process: subprocess.Popen,
    timeout: float,
    *,
    request_timeout: float = 2.0,
    poll_s: float = 0.25,
) -> None:
    """Block until ``GET {url}/health`` answers 200.

    ``/health`` runs a real inference, so a slow model may need a longer ``request_timeout``.

    Raises:
        RuntimeError: ``process`` exited first (its status is named), or ``timeout`` seconds
            passed without a 200. The caller still owns (and stops) the process.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=request_timeout) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 503 while loading
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not healthy after {timeout:g} s")
        time.sleep(poll_s)
