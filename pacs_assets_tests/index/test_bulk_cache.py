"""A whole walk matches the scan cache in SQL (index/walk_cache.py StagingCache; the merge reads the unchanged
rows from the cache file): the rows it leaves in the index must be exactly those a walk from scratch gives,
including the procedure dates that depend on "today"."""

from __future__ import annotations

import datetime as dt
import os

import duckdb
import pytest

from pacs_assets.index import walk_cache
from pacs_assets.nas.dicom_folder.settings import DicomFolderNas
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.pipeline.inventory import take_inventory
from pacs_assets.pipeline.reconciliation import reconcile
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

START = dt.date(2024, 3, 1)
DAYS = 12


def _rows(index) -> list[tuple]:
    con = duckdb.connect(str(index), read_only=True)
    try:
        return con.execute("SELECT * EXCLUDE (scanned_at) FROM inventory ORDER BY file_path").fetchall()
    finally:
        con.close()


def _walk(nas, index, today):
    return take_inventory(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, nas.partitions_start,
                          dt.date.max, today=today)


@pytest.fixture(params=["one part", "parts of 37 files"])
def part_rows(request, monkeypatch):
    """A big NAS is matched and merged in parts (walk_cache.PART_ROWS files each): the same rows either way."""
    if request.param != "one part":
        monkeypatch.setattr(walk_cache, "PART_ROWS", 37)


def test_cached_rows_equal_a_fresh_walk_as_today_moves(tmp_path, part_rows):
    root = tmp_path / "nas"
    make_bulk_dicom_nas(root / "bulk", 300, files_per_series=10, days=DAYS, start_date=START)
    (root / "notes.txt").write_text("not dicom")
    os.symlink("/nonexistent/target", root / "dangling")
    old = dt.datetime(2024, 3, 3, 12, tzinfo=dt.timezone.utc).timestamp()
    latest = sorted((root / "bulk").rglob("*.dcm"), key=lambda p: p.parent.parent.name)[-7:]
    for path in latest:  # future StudyDates, mtimes inside the range: the file_mtime fallback
        os.utime(path, (old, old))
    nas = DicomFolderNas(id="ct", kind="dicom_folder", root=root, partitions_start=START)
    early = START + dt.timedelta(days=3)  # most StudyDates are in the future: fallbacks
    cached = tmp_path / "cached" / "index.duckdb"
    _walk(nas, cached, early)
    # Changes between the walks: one file rewritten, one new file.
    changed = sorted((root / "bulk").rglob("*.dcm"))[-1]
    changed.write_bytes(changed.read_bytes())
    (root / "new.dcm").write_bytes(changed.read_bytes())
    seen = []
    for today in (early + dt.timedelta(days=4), dt.date(2030, 1, 1)):
        walked = _walk(nas, cached, today)
        fresh = tmp_path / f"fresh-{today}" / "index.duckdb"
        _walk(nas, fresh, today)
        assert walked.walked == 303
        rows = _rows(cached)
        assert rows == _rows(fresh)
        seen.append({r[-2] for r in rows})  # date_source
    assert seen[0] == {"study_date", "file_mtime", "partitions_start"}  # the fallbacks were exercised
    assert "file_mtime" in seen[1]  # the non-DICOM files: their mtime is now within the range


def test_reconciliation_redates_fallbacks_when_today_moves(tmp_path, part_rows):
    root = tmp_path / "nas"
    make_bulk_dicom_nas(root / "bulk", 100, files_per_series=10, days=DAYS, start_date=START)
    nas = DicomFolderNas(id="ct", kind="dicom_folder", root=root, partitions_start=START)
    index = tmp_path / "index.duckdb"
    _walk(nas, index, START + dt.timedelta(days=2))
    source = DicomFolderSource(nas.id, nas.root, workers=1)
    found = reconcile(source, nas, index, today=dt.date(2030, 1, 1))
    assert found.walked == 100 and found.changes  # the future StudyDates became valid: dates moved
    fresh = tmp_path / "fresh" / "index.duckdb"
    _walk(nas, fresh, dt.date(2030, 1, 1))
    assert _rows(index) == _rows(fresh)
    assert not reconcile(source, nas, index, today=dt.date(2030, 1, 1)).changes
