"""The folder lists the new-files sensor hands its runs.

Folder names often name the patient, so a run's config carries only a reference to its list: a 0600 file
in a 0700 folder beside the watch state. Lists older than a week are removed when a new one is written.
Paths are in the index's stored form (nas/names.py), so any byte string survives the JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

FOLDER_LIST_DAYS = 7


def write_folder_list(state_dir: Path, folders: list[str]) -> str:
    """Store a folder list; returns its reference (a digest of its content)."""
    body = json.dumps(sorted(folders)).encode()
    ref = hashlib.sha1(body).hexdigest()[:20]
    base = Path(state_dir) / "folder_lists"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    cutoff = time.time() - FOLDER_LIST_DAYS * 86400
    for old in base.glob("*.json"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    target = base / f"{ref}.json"
    if not target.exists():
        tmp = base / f".{ref}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, target)
    return ref


def read_folder_list(state_dir: Path, ref: str) -> list[str] | None:
    """The folder list behind a reference, or None if it is gone (the run then walks the whole NAS)."""
    if not ref.isalnum():
        return None
    try:
        return json.loads((Path(state_dir) / "folder_lists" / f"{ref}.json").read_text())
    except FileNotFoundError:
        return None
