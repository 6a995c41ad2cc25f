"""As the unprivileged service user (a real non-root user: as root, permission bits do not apply):
an unreadable file is failed/permission denied; a folder it may not list keeps its rows (never deleted) and
is reported; a root it may not list is an outage. Walks run in a subprocess through ``runuser``."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest

from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.services.service_user import ensure_service_user, run_as, shared_scratch

DAY = dt.date.today() - dt.timedelta(days=2)
START, END, TODAY = DAY - dt.timedelta(days=10), dt.date.today() + dt.timedelta(days=1), dt.date.today()
LAYOUT = ["A/IM1.dcm", "A/IM2.dcm", "A/secret.dcm", "B/IM3.dcm", "B/IM4.dcm", "B/C/IM5.dcm"]


@pytest.fixture
def site():
    user = ensure_service_user()
    scratch = shared_scratch(user)
    root = scratch / "nas"
    make_bulk_dicom_nas(scratch / "src", len(LAYOUT), start_date=DAY)
    for rel, src in zip(LAYOUT, sorted((scratch / "src").rglob("*.dcm")), strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, root / rel)
    for dirpath, _dirnames, filenames in os.walk(root):  # owned by root, world-readable: a read-only share
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(Path(dirpath, name), 0o644)
    os.chmod(root / "A" / "secret.dcm", 0)
    yield user, root, scratch / "state"
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    os.chmod(root, 0o755)
    shutil.rmtree(scratch)


def _run(user, root: Path, state: Path, do: str = "inventory", **extra) -> dict:
    spec = {"do": do, "nas_id": "share", "root": str(root), "index": str(state / "index.duckdb"),
            "state": str(state / "watch.sqlite"), "start": START.isoformat(), "end": END.isoformat(),
            "today": TODAY.isoformat(), **extra}
    done = run_as(user, ["-m", "pacs_assets_tests.services.walk_as_user", json.dumps(spec)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _rows(state: Path) -> tuple[dict[str, tuple], int]:
    with duckdb.connect(str(state / "index.duckdb"), read_only=True) as con:
        rows = {p: (s, r) for p, s, r in con.execute("SELECT file_path, status, reason FROM inventory").fetchall()}
        return rows, con.execute("SELECT count(*) FROM deleted_files").fetchall()[0][0]


def test_permissions_as_the_service_user(site):
    user, root, state = site
    first = _run(user, root, state)
    assert first["not_read"] == 0
    rows, _ = _rows(state)
    assert rows["A/secret.dcm"][0] == "failed" and "permission denied" in rows["A/secret.dcm"][1]
    assert {p for p, (s, _) in rows.items() if s == "ok"} == set(LAYOUT) - {"A/secret.dcm"}
    assert _run(user, root, state, "watch")["not_read"] == 0  # the watch's first look

    os.chmod(root / "B", 0)  # the service user may no longer list B (nor anything below it)
    os.utime(root)  # the watch then looks at the root again and does not find B unreadable-and-gone
    for folders in (None, ["B"], ["B/C"], [""]):  # a whole walk; incremental walks of B, its subfolder, the root
        result = _run(user, root, state, folders=folders)
        assert result["not_read"] == (folders != [""]) and "outage" not in result
        rows, deleted = _rows(state)
        assert deleted == 0
        assert all(rows[p][0] == "ok" for p in ("B/IM3.dcm", "B/IM4.dcm", "B/C/IM5.dcm")), rows
    assert "B" not in rows  # a folder is reported by the run (folders_not_read), not as a file
    tick = _run(user, root, state, "watch")
    assert tick["deleted"] == [] and tick["not_read"] >= 1

    os.chmod(root, 0)  # the root itself: an outage, the index stays as it was
    before = _rows(state)
    assert "outage" in _run(user, root, state)["outage"]
    assert "outage" in _run(user, root, state, "watch")["outage"]
    assert _rows(state) == before
