"""The Firebird/JPEG 2000 sample NAS generators, checked with fdb and glymur directly (no mocks)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import fdb
import glymur
import pytest

from pacs_assets.nas.base import FAILED, OK, SKIPPED
from pacs_assets.sample.firebird_nas import (
    FirebirdSampleManifest,
    make_bulk_firebird_nas,
    make_firebird_nas,
)

START = dt.date(2024, 3, 1)


@pytest.fixture(scope="module")
def nas(tmp_path_factory) -> FirebirdSampleManifest:
    return make_firebird_nas(tmp_path_factory.mktemp("fb") / "share", nas_id="fb_sample", seed=1, start_date=START)


def _query(m: FirebirdSampleManifest, sql: str) -> list[tuple]:
    con = fdb.connect(dsn=str(m.root / m.catalog), user="SYSDBA", password=m.password, charset="UTF8")
    try:
        return con.cursor().execute(sql).fetchall()
    finally:
        con.close()


def _entries(root: Path) -> set[str]:
    return {str(Path(d, n).relative_to(root)) for d, dirs, files in os.walk(root)
            for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]}


def test_manifest_lists_every_file_and_link(nas):
    on_disk = _entries(nas.root)
    through_links = {nas.row_paths[nas.special[c]] for c in ("missing", "folder_link_out")}
    assert on_disk == set(nas.expected) - through_links
    assert not (nas.root / nas.row_paths[nas.special["missing"]]).exists()
    assert nas.expected[nas.catalog] == SKIPPED
    assert {OK, SKIPPED, FAILED} <= set(nas.expected.values()) and {OK, FAILED} == set(nas.rows.values())


def test_catalog_is_firebird3_and_matches_the_manifest(nas):
    header = (nas.root / nas.catalog).read_bytes()[:20]
    assert int.from_bytes(header[18:20], "little") == 0x800C  # ODS 12, Firebird 3
    rows = dict((str(k), p) for k, p in _query(nas, "SELECT IMG_ID, IMG_PATH FROM IMAGES"))
    assert rows == nas.row_paths
    names = {n: f"{last}^{first}"
             for n, last, first in _query(nas, "SELECT PAT_NUMBER, PAT_LASTNAME, PAT_FIRSTNAME FROM PATIENTS")}
    assert names == nas.patients and any(not n.isascii() for n in names.values())
    dates = [d for (d,) in _query(nas, "SELECT STU_DATE FROM STUDIES")]
    assert None in dates and any(d and not d.isdigit() for d in dates)


def test_jp2_files_are_what_the_manifest_says(nas):
    for key, status in nas.rows.items():
        path = nas.row_paths[key]
        if status != OK:
            continue
        jp2 = glymur.Jp2k(str(nas.root / path.replace("\\", "/")))
        cod = next(s for s in jp2.codestream.segment if s.marker_id == "COD")
        lossy = path in nas.lossy
        assert cod.xform == (0 if lossy else 1), path  # 0 = 9/7 irreversible, 1 = 5/3 reversible
        assert jp2.shape[:2] == (48, 64)
    assert any(glymur.Jp2k(str(nas.root / p)).shape == (48, 64, 3) for p in nas.procedure_date_of)
    assert open(nas.root / nas.row_paths[nas.special["j2k"]], "rb").read(4) == b"\xff\x4f\xff\x51"
    assert nas.procedure_dates <= {START + dt.timedelta(days=i) for i in range(5)} and len(nas.procedure_dates) > 2
    for path, day in nas.procedure_date_of.items():
        mtime = dt.datetime.fromtimestamp((nas.root / path).stat().st_mtime)
        assert mtime.date() == day


def test_escaping_paths_point_at_real_files_outside(nas):
    target = nas.outside / "OTHER_SITE.jp2"
    glymur.Jp2k(str(target))  # valid: a reader that followed them would find an image
    link = nas.root / nas.row_paths[nas.special["symlink_out"]]
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (nas.root / nas.row_paths[nas.special["dotdot"]]).resolve() == target.resolve()
    assert Path(nas.row_paths[nas.special["absolute"]]).is_absolute()


def test_deterministic_for_a_seed(nas, tmp_path):
    again = make_firebird_nas(tmp_path / "share", nas_id="fb_sample", seed=1, start_date=START)
    def images(m):
        return {p: hashlib.sha1((m.root / p).read_bytes()).hexdigest()
                            for p in m.expected if p.endswith((".jp2", ".j2k")) and (m.root / p).is_file()}
    assert images(again) == images(nas) and again.rows == nas.rows


def test_bulk(tmp_path):
    # Its speed is measured in benchmarks/, not asserted here.
    m = make_bulk_firebird_nas(tmp_path / "bulk", 200, nas_id="bulk", images_per_series=50)
    files = [p for p in m.expected if p.endswith(".jp2")]
    assert len(files) == 200 == len(m.rows)
    assert len({(m.root / p).read_bytes() for p in files[:50]}) == 1
    assert _query(m, "SELECT COUNT(*), COUNT(DISTINCT IMG_PATH) FROM IMAGES") == [(200, 200)]
