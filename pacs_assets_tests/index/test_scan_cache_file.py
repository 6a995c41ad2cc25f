"""The scan cache lives in its own file beside the index (index/scan_cache.py): it outlives the index, so a
rebuild reads no header again, and a cache that cannot be trusted is ignored (one log line), never believed.

Whether a header was read is seen from the result: files whose bytes are replaced while their size and mtime
stay (the change token) keep their old values only if they came from the cache."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import duckdb
import pytest

from pacs_assets.index.scan_cache import cache_path
from pacs_assets.nas.dicom_folder.settings import DicomFolderNas
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.pipeline.inventory import take_inventory
from pacs_assets.pipeline.reconciliation import reconcile
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.harness import log_lines

START = dt.date(2024, 3, 1)
TODAY = dt.date(2024, 6, 1)


def _nas(root) -> DicomFolderNas:
    return DicomFolderNas(id="ct", kind="dicom_folder", root=root, partitions_start=START)


def _walk(root, index):
    nas = _nas(root)
    return take_inventory(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, START, dt.date.max,
                          today=TODAY)


def _rows(index) -> list[tuple]:
    with duckdb.connect(str(index), read_only=True) as con:
        return con.execute("SELECT * EXCLUDE (scanned_at) FROM inventory ORDER BY file_path").fetchall()


def _blank_keeping_token(paths) -> None:
    """Zero each file's bytes, keeping its size and mtime: only a header read can tell."""
    for path in paths:
        st = path.stat()
        path.write_bytes(b"\0" * st.st_size)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _lose_index(index) -> None:
    for p in (index, index.with_name(index.name + ".wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(index.parent / "staging", ignore_errors=True)


@pytest.fixture()
def walked_once(tmp_path):
    root = tmp_path / "nas"
    make_bulk_dicom_nas(root / "bulk", 60, files_per_series=10, days=20, start_date=START)
    (root / "notes.txt").write_text("not dicom")
    index = tmp_path / "index" / "index.duckdb"
    _walk(root, index)
    return root, index, _rows(index)


def test_a_rebuild_takes_every_unchanged_file_from_the_cache_file(walked_once):
    root, index, first = walked_once
    assert cache_path(index).is_file() and cache_path(index).parent == index.parent
    assert {r[5] for r in first} == {"ok", "skipped"}
    _lose_index(index)
    _blank_keeping_token(sorted(root.rglob("*.dcm")))
    result = _walk(root, index)
    assert result.walked == 61 and result.known_before == 61
    assert _rows(index) == first  # every row re-derived from the cache: no header read again
    assert oct(cache_path(index).stat().st_mode & 0o777) == "0o600"


def test_a_reconciliation_after_the_index_is_lost_rebuilds_it_from_the_cache(walked_once):
    root, index, first = walked_once
    _lose_index(index)
    _blank_keeping_token(sorted(root.rglob("*.dcm"))[:5])
    nas = _nas(root)
    found = reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY)
    assert found.totals()["added"] == 61 and _rows(index) == first
    assert not reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY).changes


def _garbage(path, index):
    path.write_bytes(os.urandom(4096))


def _truncated(path, index):
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _other_format(path, index):
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE cache_format SET format = 'pacs-scan-cache-0'")


def _tampered(path, index):  # a row changed behind the cache's back: its checksum no longer matches
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE scan_cache SET patient_id = 'TAMPERED' WHERE file_path = "
                    "(SELECT min(file_path) FROM scan_cache WHERE status = 'ok')")


@pytest.mark.parametrize("damage", [_garbage, _truncated, _other_format, _tampered])
def test_a_damaged_cache_is_ignored_with_one_log_line(walked_once, damage, tmp_path):
    root, index, _ = walked_once
    blanked = sorted(root.rglob("*.dcm"))[:3]
    _blank_keeping_token(blanked)
    damage(cache_path(index), index)
    with log_lines("pacs_assets.index.scan_cache") as lines:
        _walk(root, index)
    assert len(lines) == 1 and "read again" in lines[0]
    fresh = tmp_path / "fresh" / "index.duckdb"
    _walk(root, fresh)
    rows = _rows(index)
    assert rows == _rows(fresh)  # what the files hold now, read again
    assert {r[5] for r in rows if r[1] in {str(p.relative_to(root)) for p in blanked}} != {"ok"}
    assert not any("TAMPERED" in str(r) for r in rows)
    with log_lines("pacs_assets.index.scan_cache") as lines:
        _walk(root, index)  # the cache written again is trusted again
    assert not lines


def test_a_cache_made_for_another_root_is_not_trusted(walked_once, tmp_path):
    root, index, _ = walked_once
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # same relative paths, sizes and mtimes: the same change tokens
    _blank_keeping_token(sorted(moved.rglob("*.dcm"))[:2])
    with log_lines("pacs_assets.index.scan_cache") as lines:
        _walk(moved, index)
    assert len(lines) == 1, lines
    fresh = tmp_path / "fresh" / "index.duckdb"
    _walk(moved, fresh)
    assert _rows(index) == _rows(fresh)


def test_an_index_that_kept_its_cache_inside_moves_it_to_the_file(walked_once):
    root, index, first = walked_once
    # An index from before the cache had its own file: the cache was its table scan_cache.
    with duckdb.connect(str(index)) as con:
        con.execute(f"ATTACH '{cache_path(index)}' AS sc (READ_ONLY)")
        con.execute("CREATE TABLE scan_cache AS SELECT * FROM sc.scan_cache")
    cache_path(index).unlink()
    _blank_keeping_token(sorted(root.rglob("*.dcm")))
    _walk(root, index)
    assert _rows(index) == first
    with duckdb.connect(str(index), read_only=True) as con:
        assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'scan_cache'").fetchall()[0][0]


def _files_state(index) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(index.parent.iterdir()) if p.is_file()}


def test_a_reconciliation_of_an_unchanged_nas_writes_nothing(walked_once):
    root, index, first = walked_once
    nas = _nas(root)
    assert not reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY).changes
    before = _files_state(index)
    assert not reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY).changes
    assert _files_state(index) == before  # neither the index nor the cache file (nor a log beside them) was written
    assert _rows(index) == first


@pytest.mark.parametrize("part_rows", [None, 7])
def test_a_reconciliation_puts_back_index_rows_that_differ_from_an_unchanged_walk(walked_once, part_rows,
                                                                                  monkeypatch):
    """The cache says what the walked files hold; an index that says otherwise (a merge killed after the cache
    was written, a hand edit) is corrected, in whichever part of the walk the difference is."""
    from pacs_assets.index import walk_cache

    if part_rows:
        monkeypatch.setattr(walk_cache, "PART_ROWS", part_rows)
    root, index, first = walked_once
    paths = [r[1] for r in first if r[5] == "ok"]
    with duckdb.connect(str(index)) as con:
        con.execute("UPDATE inventory SET status = 'failed', reason = 'x' WHERE file_path = ?", [paths[0]])
        con.execute("DELETE FROM inventory WHERE file_path = ?", [paths[-1]])
        con.execute("INSERT INTO inventory SELECT * REPLACE ('gone/' || file_path AS file_path) FROM inventory "
                    "WHERE file_path = ?", [paths[1]])
    nas = _nas(root)
    found = reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY)
    assert (found.totals()["changed"], found.totals()["added"], found.totals()["deleted"]) == (1, 1, 1)
    assert _rows(index) == first


class _AnotherRunMidWalk(DicomFolderSource):
    """A real source whose walk, once it has listed everything, lets another run change the NAS and merge a
    folder before the walk looks at what to parse (the look-ahead read the cache before that)."""

    def __init__(self, *args, during, **kwargs):
        super().__init__(*args, **kwargs)
        self.during = during

    def scan(self, cache, **kwargs):
        unmatched = cache.unmatched

        def late(batch_size):
            cache.look_ahead()
            self.during()
            yield from unmatched(batch_size)

        cache.unmatched = late
        yield from super().scan(cache, **kwargs)


def test_a_folder_merged_by_another_run_during_the_walk_is_not_undone(tmp_path):
    """The usual night trusts the cache as the look-ahead read it before the walk; another run that merges a
    changed file meanwhile must not be undone by that stale view, nor its file read as deleted."""
    root, index = tmp_path / "nas", tmp_path / "index" / "index.duckdb"
    make_bulk_dicom_nas(root / "bulk", 40, files_per_series=10, days=10, start_date=START)  # DICOM files only
    nas = _nas(root)
    assert reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY).totals()["added"] == 40
    target = sorted(root.rglob("*.dcm"))[0]
    folder = target.parent.relative_to(root).as_posix()
    st = target.stat()
    token = f"{st.st_size}-{st.st_mtime_ns + 10**9}"

    def another_run():
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new change token
        take_inventory(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, START, dt.date.max,
                       today=TODAY, folders=[folder])

    found = reconcile(_AnotherRunMidWalk(nas.id, nas.root, workers=1, during=another_run), nas, index, today=TODAY)
    assert found.totals()["deleted"] == 0
    path = target.relative_to(root).as_posix()
    with duckdb.connect(str(index), read_only=True) as con:
        tokens = con.execute("SELECT change_token FROM inventory WHERE file_path = ?", [path]).fetchall()
    assert tokens == [(token,)]  # the other run's row stands
    assert not reconcile(DicomFolderSource(nas.id, nas.root, workers=1), nas, index, today=TODAY).changes
