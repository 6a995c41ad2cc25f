"""Fixtures: a real, private Orthanc per test (helpers live in harness.py, services in services/)."""

from __future__ import annotations

import pytest

from pacs_assets_tests.services.orthanc import OrthancServer


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
