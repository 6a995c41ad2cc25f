"""Fixtures: a real, private Orthanc per test (helpers live in harness.py, services in services/)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pacs_assets_tests.services.orthanc import OrthancServer
from pacs_assets_tests.services.orthanc_cluster import OrthancCluster
from pacs_assets_tests.services.process import pid_alive


@pytest.fixture
def orthanc(tmp_path_factory) -> OrthancServer:
    """A fresh, private Orthanc per test (it starts in ~0.2 s), killed by PID afterwards (its data is thrown away)."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")).throwaway() as server:
        yield server


@pytest.fixture
def orthanc_env(orthanc, monkeypatch) -> OrthancServer:
    monkeypatch.setenv("ORTHANC_USERNAME", orthanc.username)
    monkeypatch.setenv("ORTHANC_PASSWORD", orthanc.password)
    return orthanc


@pytest.fixture
def cluster_dir():
    # Not pytest's tmp_path: its parent (/tmp/pytest-of-root) is private, and PostgreSQL runs as
    # `postgres` and must traverse the folder.
    path = Path(tempfile.mkdtemp(prefix="orthanc-cluster-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    import shutil
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def orthanc_cluster(cluster_dir):
    c = OrthancCluster(cluster_dir / "cluster", nodes=2)
    started = []
    with c.throwaway():
        started = list(c.pids().values())
        yield c
    assert started and not any(pid_alive(pid) for pid in started), "a process outlived cluster.stop()"


@pytest.fixture(scope="session", autouse=True)
def _private_cache_folder(tmp_path_factory):
    """`pacs` commands remember validated configurations in the user's cache folder (cli/remembered_config.py):
    the tests' entries go to a private folder, inherited by the commands they start, not to the home of whoever
    runs them."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
