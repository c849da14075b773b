"""A real PostgreSQL server for the gallery tests: initdb + pg_ctl in a temporary folder, Unix socket only.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``; .ci/run
installs it). PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["postgres_bin", "postgres_server"]


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").is_file() and Path(folder, "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _as_owner(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throw-away cluster; yield a ``postgresql://`` URL of its ``postgres`` database."""
    binaries = postgres_bin()
    assert binaries is not None, "PostgreSQL binaries are not installed"
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="facevib-pg-"))
    data, socket_dir = folder / "data", folder / "socket"
    socket_dir.mkdir()
    if user:
        owner = pwd.getpwnam(user)
        for path in (folder, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    role = user or pwd.getpwuid(os.geteuid()).pw_name
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run(
            _as_owner(
                [str(binaries / "initdb"), "-D", str(data), "-U", role, "-A", "trust", "-E", "UTF8", "--no-sync"], user
            ),
            check=True,
            capture_output=True,
            env=env,
        )
        options = f"-c listen_addresses='' -c unix_socket_directories='{socket_dir}' -c fsync=on"
        subprocess.run(
            _as_owner(
                [str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
                user,
            ),
            check=True,
            capture_output=True,
            env=env,
        )
        yield f"postgresql://{role}@/postgres?host={socket_dir}"
    finally:
        subprocess.run(
            _as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user),
            capture_output=True,
            env=env,
        )
        shutil.rmtree(folder, ignore_errors=True)
