"""Test harness: real Orthanc servers on 127.0.0.1 with private folders, sample NAS devices, and helpers
to materialize a NAS's partitions the way a backfill does (one run over the whole range)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pacs_assets.local_services.orthanc_server import OrthancServer


@pytest.fixture
def orthanc(tmp_path_factory) -> OrthancServer:
    """A fresh, private Orthanc per test (it starts in ~0.2 s), stopped by PID afterwards."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def orthanc_env(orthanc, monkeypatch) -> OrthancServer:
    monkeypatch.setenv("ORTHANC_USERNAME", orthanc.username)
    monkeypatch.setenv("ORTHANC_PASSWORD", orthanc.password)
    return orthanc


def write_config(path: Path, nas: list[dict], *, orthanc_url: str, index: str = "index.duckdb", **extra) -> Path:
    body = {"nas": nas, "orthanc": {"url": orthanc_url, "run_retries": 0, "retries": 1, "timeout_seconds": 10},
            "index": {"path": index}, **extra}
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def tree_fingerprint(root: Path) -> dict[str, tuple]:
    """Every entry under root with its size, mtime and content hash: proves a walk wrote nothing."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = None
            if p.is_symlink():
                digest = os.readlink(p)
            elif p.is_file():
                digest = hashlib.sha1(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return out
