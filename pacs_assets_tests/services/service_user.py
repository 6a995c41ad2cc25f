"""Running code as the unprivileged service user, as production does (docs/production.md, Real shares).

As root, permission bits are not enforced, so permission tests must run as a real non-root user: the harness
creates it with ``scripts/create_service_user.sh`` (idempotent) and runs a command through ``runuser``. When
the tests themselves run as a non-root user, commands run as that user directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICE_USER = "pacs"


def ensure_service_user(user: str = SERVICE_USER) -> str | None:
    """The user to run as (created if missing), or None when this process is already unprivileged."""
    if os.geteuid() != 0:
        return None
    subprocess.run(["bash", str(REPO / "scripts" / "create_service_user.sh"), user], check=True,
                   capture_output=True, text=True)
    return user


def _python_for(user: str) -> str:
    """An interpreter the user may execute: ours, unless it lives in a private folder (pyenv under /root);
    then the system's python3 of the same version, with our packages on PYTHONPATH."""
    ours = sys.executable
    if subprocess.run(["runuser", "-u", user, "--", ours, "-c", "pass"], capture_output=True).returncode == 0:
        return ours
    system = shutil.which("python3", path="/usr/bin:/bin")
    return system or ours


def run_as(user: str | None, args: Sequence[str], *, cwd: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """``python args...`` as ``user`` (or as ourselves when None), with this checkout importable."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([str(REPO), *site]), "LANG": "C.UTF-8"}
    python = sys.executable if user is None else _python_for(user)
    prefix = [] if user is None else ["runuser", "-u", user, "--"]
    return subprocess.run([*prefix, "env", *(f"{k}={v}" for k, v in env.items()), python, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def shared_scratch(user: str | None) -> Path:
    """A fresh folder the user can write (pytest's tmp_path is private to root). The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix="pacs-user-", dir="/tmp"))
    os.chmod(path, 0o711)
    state = path / "state"
    state.mkdir()
    if user is not None:
        shutil.chown(state, user, user)
    return path
