"""An index lost or rebuilt: the rerun asks Orthanc in bulk which instances it holds and records those files
without sending them again (each re-sent file would cost Orthanc a full write and delete)."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path

import pydicom
import pytest
import requests

from pacs_assets.config import DicomFolderNas
from pacs_assets.nas.base import IdDomain
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.orthanc.ids import orthanc_series_id
from pacs_assets.pipeline.already_stored import FOUND, FOUND_SERIES
from pacs_assets.pipeline.hierarchy import build_hierarchy
from pacs_assets.pipeline.identity_guard import IdentityGuard
from pacs_assets.pipeline.inventory import take_inventory
from pacs_assets.pipeline.upload import upload_window
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import NAS, SAMPLE_START, materialize_nas, write_config
from pacs_assets_tests.services.orthanc import OrthancServer


def _orthanc_changes(orthanc) -> int:
    return requests.get(f"{orthanc.url}/changes", params={"limit": 1}, auth=orthanc.auth, timeout=10).json()["Last"]


def test_a_rebuilt_index_records_what_orthanc_holds_without_sending_it(tmp_path, orthanc_env):
    import duckdb

    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct").success
    index = tmp_path / "index.duckdb"
    with duckdb.connect(str(index), read_only=True) as con:
        before = dict(con.execute("SELECT file_path, status FROM file_status").fetchall())
    in_orthanc = {p for p, s in before.items() if s in ("imported", "duplicate")}
    assert in_orthanc
    changes = _orthanc_changes(orthanc_env)

    for leftover in tmp_path.glob("index.duckdb*"):
        leftover.unlink()  # the index is lost
    assert materialize_nas(config, "ct").success

    assert _orthanc_changes(orthanc_env) == changes  # Orthanc received nothing: no POST reached it
    with duckdb.connect(str(index), read_only=True) as con:
        after = dict(con.execute("SELECT file_path, status FROM file_status").fetchall())
        sent = con.execute("SELECT count(*) FROM import_history WHERE attempts > 0").fetchall()[0][0]
        found = dict(con.execute("SELECT status, count(*) FROM import_history WHERE error_message IN (?, ?) "
                                 "GROUP BY ALL", [FOUND, FOUND_SERIES]).fetchall())
    assert {p for p, s in after.items() if s in ("imported", "duplicate")} == in_orthanc
    assert sent == 0 and sum(found.values()) == len(in_orthanc)
    # What was pending or failed before is what is left (nothing the NAS holds is dropped).
    assert {p: s for p, s in after.items() if p not in in_orthanc} == {p: s for p, s in before.items()
                                                                        if p not in in_orthanc}
    assert len(after) == len(before) and manifest.root.is_dir()


# -- the lookup by series (pipeline/already_stored.py), straight on the pipeline with a bulk NAS -------------

BULK, START, END = "bulk", dt.date(2000, 1, 1), dt.date.today() + dt.timedelta(days=1)


def _index(root: Path, index: Path) -> None:
    nas = DicomFolderNas(id=BULK, kind="dicom_folder", root=root, partitions_start=START)
    take_inventory(DicomFolderSource(BULK, root, workers=1), nas, index, START, END, today=dt.date.today())
    build_hierarchy(index, BULK, START, END)


def _upload(orthanc, root: Path, index: Path, domain: IdDomain | None):
    return upload_window(DicomFolderSource(BULK, root, workers=1),
                         OrthancClient(orthanc.url, orthanc.username, orthanc.password), index, BULK, START, END,
                         identity=IdentityGuard.load({BULK: domain}, index))


def _lose(index: Path) -> None:
    for leftover in index.parent.glob("index.duckdb*"):
        leftover.unlink()
    for folder in ("staging", "journal"):
        shutil.rmtree(index.parent / folder, ignore_errors=True)


def _history(index: Path) -> dict[str, tuple[str, str | None, int]]:
    import duckdb

    with duckdb.connect(str(index), read_only=True) as con:
        rows = con.execute("SELECT file_path, status, error_message, attempts FROM import_history").fetchall()
    return {path: (status, message, attempts) for path, status, message, attempts in rows}


@pytest.mark.parametrize("domain", [None, IdDomain(issuer="ARCHIVE_VENDOR", prefix="AR-")])
def test_a_series_whose_orthanc_copy_differs_is_not_recorded_whole(tmp_path, orthanc, domain):
    """Three series of 12 files in Orthanc; one loses an instance, one gets another file (same UIDs, other size)
    in place of one of its own; the index is lost. Only the untouched series is recorded as a whole; in the other
    two every file Orthanc holds as sent is found one by one, and the two tampered files go to the upload, which
    sends the missing one and finds the other a conflict. With an ID domain the series are Orthanc's under the
    PatientID sent, and the sizes those of the rewritten files."""
    root, index = tmp_path / "nas", tmp_path / "var" / "index.duckdb"
    assert make_bulk_dicom_nas(root, 36, files_per_series=12) == 36
    _index(root, index)
    assert {k: v for k, v in _upload(orthanc, root, index, domain).totals.items() if v} == {"imported": 36}
    series = sorted({p.parent for p in root.rglob("*.dcm")})
    missing, changed = sorted(series[0].glob("*.dcm"))[3], sorted(series[1].glob("*.dcm"))[5]
    ids = dict(_ids(index))
    api = f"{orthanc.url}/instances"
    requests.delete(f"{api}/{ids[str(missing.relative_to(root))]}", auth=orthanc.auth, timeout=30).raise_for_status()
    stored = requests.get(f"{api}/{ids[str(changed.relative_to(root))]}/file", auth=orthanc.auth, timeout=30).content
    other = pydicom.dcmread(io.BytesIO(stored))
    parent = requests.get(f"{api}/{ids[str(changed.relative_to(root))]}", auth=orthanc.auth, timeout=30).json()
    assert parent["ParentSeries"] == orthanc_series_id(other.PatientID, other.StudyInstanceUID,
                                                       other.SeriesInstanceUID)  # the ID we compute is Orthanc's
    other.ImageComments = "another file reusing these UIDs"
    buf = io.BytesIO()
    other.save_as(buf)
    requests.delete(f"{api}/{ids[str(changed.relative_to(root))]}", auth=orthanc.auth, timeout=30).raise_for_status()
    assert requests.post(api, data=buf.getvalue(), auth=orthanc.auth, timeout=30).json()["ID"] == \
        ids[str(changed.relative_to(root))]
    _lose(index)
    _index(root, index)

    done = _upload(orthanc, root, index, domain)

    history = _history(index)
    rel = {p: str(p.relative_to(root)) for s in series for p in s.glob("*.dcm")}
    assert {history[rel[p]] for p in series[2].glob("*.dcm")} == {("imported", FOUND_SERIES, 0)}
    for tampered, other_files in ((missing, series[0]), (changed, series[1])):
        assert {history[rel[p]] for p in other_files.glob("*.dcm") if p != tampered} == {("imported", FOUND, 0)}
    assert history[rel[missing]][0::2] == ("imported", 1)  # sent again
    assert history[rel[changed]][0::2] == ("uid_conflict", 1)  # sent, and Orthanc's other copy kept
    assert done.already_stored == 34


def _ids(index: Path) -> list[tuple[str, str]]:
    import duckdb

    with duckdb.connect(str(index), read_only=True) as con:
        return con.execute("SELECT file_path, orthanc_instance_id FROM import_history").fetchall()  # as sent


def test_a_find_answer_cut_short_by_the_sites_limit_still_finds_every_series(tmp_path):
    """The series of a rebuild are listed 20 to a /tools/find, the files of small series 100 to one; with
    LimitFindResults and LimitFindInstances 2 Orthanc lists three of five series, three of nine files. What is
    left out is asked for by its ID (a 404 alone says it is not there): every file is found, none sent again."""
    root, index = tmp_path / "nas", tmp_path / "var" / "index.duckdb"
    assert make_bulk_dicom_nas(root, 60, files_per_series=12) == 60  # series of >= SERIES_MIN files
    assert make_bulk_dicom_nas(root, 9, files_per_series=3, seed=1) == 9  # small series: looked up per file
    limits = {"LimitFindResults": 2, "LimitFindInstances": 2}  # a site's, which /tools/find obeys too
    with OrthancServer(tmp_path / "orthanc", settings=limits).throwaway() as orthanc:
        _index(root, index)
        assert {k: v for k, v in _upload(orthanc, root, index, None).totals.items() if v} == {"imported": 69}
        heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in root.rglob("*.dcm")]
        client = OrthancClient(orthanc.url, orthanc.username, orthanc.password)
        series = sorted({h.SeriesInstanceUID for h in heads if h.PatientID.startswith("BLK00")})
        small = [h.SOPInstanceUID for h in heads if h.PatientID.startswith("BLK01")]
        assert len(series) == 5 and len(client.find_series_instances(series)) < 5  # cut short (1.10.1: 3)
        assert len(small) == 9 and len(client.find_instances(small)) < 9
        _lose(index)
        _index(root, index)
        done = _upload(orthanc, root, index, None)
    assert done.already_stored == 69
    assert {status for status, _, _ in _history(index).values()} == {"imported"}
