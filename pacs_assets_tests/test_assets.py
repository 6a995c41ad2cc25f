"""The plain-DICOM NAS end to end: real files, real DuckDB, a real Orthanc."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import duckdb
import pydicom.data
import pytest
import requests

from pacs_assets.identity.collisions import KINDS
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import (
    NAS,
    SAMPLE_START,
    materialize_nas,
    people_mixed_in_orthanc,
    step_failure_message,
    tree_fingerprint,
    write_config,
)
from pacs_assets_tests.services.process import free_port

# Partitions start shortly before the sample's procedure dates: a run over all partitions stays small.


def orthanc_sop_uids(orthanc) -> set[str]:
    answer = requests.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=30,
                           json={"Level": "Instance", "Query": {}, "Expand": True}).json()
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in answer}


def query(index: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(index), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def sample_site(tmp_path, orthanc_env):
    manifest = make_dicom_nas(tmp_path / "nas", patients=5, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    return manifest, config, tmp_path / "index.duckdb"


def test_sample_nas_is_fully_imported_and_every_file_has_one_status(sample_site, orthanc_env):
    manifest, config, index = sample_site
    before = tree_fingerprint(manifest.root)

    assert materialize_nas(config, "ct").success

    assert orthanc_sop_uids(orthanc_env) == manifest.sop_instance_uids
    rows = query(index, "SELECT file_path, status, reason FROM file_status WHERE nas_id = 'ct'")
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "a file has more than one current status"
    status = {r[0]: r[1] for r in rows}
    assert set(status) == set(manifest.expected)
    by_sop = defaultdict(list)
    sops = dict(query(index, "SELECT file_path, sop_instance_uid FROM instances"))
    for path, expected in manifest.expected.items():
        if expected in ("ok", "duplicate"):
            by_sop[sops[path]].append(status[path])
        else:
            assert status[path] == expected, (path, status[path])
    # Of the files holding one instance, exactly one was imported; the others are duplicates.
    for statuses in by_sop.values():
        assert sorted(statuses) == sorted(["imported"] + ["duplicate"] * (len(statuses) - 1))
    assert all(reason for _, st, reason in rows if st in ("failed", "skipped"))
    assert tree_fingerprint(manifest.root) == before, "the walk changed the NAS"


def test_rerun_uploads_nothing_and_rewrites_identical_rows(sample_site, orthanc_env):
    manifest, config, index = sample_site
    assert materialize_nas(config, "ct").success
    tables = {t: f"SELECT * EXCLUDE (last_updated) FROM {t} ORDER BY ALL"
              for t in ("patients", "studies", "series", "instances")}
    tables["inventory"] = "SELECT * EXCLUDE (scanned_at) FROM inventory ORDER BY ALL"
    first = {t: query(index, sql) for t, sql in tables.items()}
    attempts = query(index, "SELECT count(*) FROM import_history")[0][0]
    stats = requests.get(f"{orthanc_env.url}/statistics", auth=orthanc_env.auth).json()

    assert materialize_nas(config, "ct").success

    assert {t: query(index, sql) for t, sql in tables.items()} == first
    assert query(index, "SELECT count(*) FROM import_history")[0][0] == attempts
    now = requests.get(f"{orthanc_env.url}/statistics", auth=orthanc_env.auth).json()
    assert now["CountInstances"] == stats["CountInstances"]


def test_changed_file_is_uploaded_again(sample_site, orthanc_env):
    manifest, config, index = sample_site
    assert materialize_nas(config, "ct").success
    path = manifest.paths("ok")[0]
    os.utime(manifest.root / path, ns=(1, os.stat(manifest.root / path).st_mtime_ns + 10**9))

    assert materialize_nas(config, "ct").success

    attempts = query(index, "SELECT status FROM import_history WHERE file_path = ? ORDER BY attempt_id", [path])
    assert [a[0] for a in attempts] == ["imported", "duplicate"]
    attempts = query(index, "SELECT count(*) FROM import_history")[0][0]
    assert attempts == len(manifest.paths("ok")) + len(manifest.paths("duplicate")) + 1


def test_a_file_that_comes_back_leaves_deleted_files(sample_site, tmp_path):
    manifest, config, index = sample_site
    assert materialize_nas(config, "ct").success
    back, gone = manifest.paths("ok")[:2]
    (manifest.root / back).rename(tmp_path / "away.dcm")  # moved off the NAS: rename keeps its mtime
    (manifest.root / gone).unlink()
    assert materialize_nas(config, "ct").success
    deleted = "SELECT file_path, last_status FROM deleted_files ORDER BY 1"
    assert query(index, deleted) == sorted([(back, "imported"), (gone, "imported")])

    (tmp_path / "away.dcm").rename(manifest.root / back)  # and back, unchanged
    assert materialize_nas(config, "ct").success

    assert query(index, deleted) == [(gone, "imported")]
    assert query(index, "SELECT status FROM file_status WHERE file_path = ?", [back]) == [("imported",)]
    assert query(index, "SELECT count(*) FROM import_history WHERE file_path = ?", [back]) == [(1,)]


def test_undated_and_misdated_files_fall_back_and_say_so(sample_site):
    manifest, config, index = sample_site
    assert materialize_nas(config, "ct").success
    got = {p: (d, s) for p, d, s in query(index, "SELECT file_path, procedure_date, date_source FROM inventory")}
    assert got[manifest.special["missing_date"]][1] == "file_mtime"
    assert got[manifest.special["future_date"]][1] == "file_mtime"
    assert got[manifest.special["malformed_date"]][1] == "series_date"
    for path, day in manifest.procedure_date_of.items():
        assert got[path][0] == day, path


def test_one_partition_holds_only_its_procedure_date(sample_site):
    manifest, config, index = sample_site
    day = min(manifest.procedure_dates)
    assert materialize_nas(config, "ct", first=day.isoformat(), last=day.isoformat()).success
    dates = {r[0] for r in query(index, "SELECT DISTINCT partition_date FROM instances")}
    assert dates == {day}
    expected = {p for p, d in manifest.procedure_date_of.items() if d == day}
    assert {r[0] for r in query(index, "SELECT file_path FROM instances")} == expected


def test_pydicom_corpus_completes_with_one_status_per_file(tmp_path, orthanc_env):
    corpus = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    shutil.copytree(corpus, tmp_path / "nas", symlinks=True)
    files = {str(p.relative_to(tmp_path / "nas")) for p in (tmp_path / "nas").rglob("*") if p.is_file()}
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)

    assert materialize_nas(config, "ct").success

    rows = query(tmp_path / "index.duckdb", "SELECT file_path, status, reason FROM file_status")
    assert sorted(r[0] for r in rows) == sorted(files)
    counts = Counter(r[1] for r in rows)
    assert set(counts) <= {"imported", "duplicate", "uid_conflict", "failed", "skipped", "held"}
    # pydicom's files reuse a few PatientIDs (and the empty one) for different people: those are held, each
    # with the kind of collision as its reason, and no Orthanc patient ends up holding two people.
    assert counts["held"] > 0
    assert all(reason.split(":")[0] in KINDS for _, st, reason in rows if st == "held")
    assert people_mixed_in_orthanc(orthanc_env) == {}
    assert counts["imported"] > 50 and counts["skipped"] > 0 and counts["failed"] > 0
    assert all(reason for _, st, reason in rows if st in ("failed", "skipped"))
    truncated = "SELECT status FROM file_status WHERE file_path = 'MR_truncated.dcm'"
    assert query(tmp_path / "index.duckdb", truncated) == [("failed",)]


def test_orthanc_down_fails_the_import_in_one_sentence_and_writes_no_attempt(tmp_path, monkeypatch):
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    monkeypatch.setenv("ORTHANC_USERNAME", "pacs")
    monkeypatch.setenv("ORTHANC_PASSWORD", "irrelevant")
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=url)

    result = materialize_nas(config, "ct", raise_on_error=False)

    assert not result.success
    assert step_failure_message(result).strip() == f"Orthanc at {url} is unreachable (connection refused or no route)."
    assert query(tmp_path / "index.duckdb", "SELECT count(*) FROM import_history") == [(0,)]
    pending = query(tmp_path / "index.duckdb", "SELECT count(*) FROM file_status WHERE status = 'pending'")[0][0]
    assert pending > 0


def test_wrong_credentials_are_named(sample_site, monkeypatch):
    manifest, config, index = sample_site
    monkeypatch.setenv("ORTHANC_PASSWORD", "wrong")
    result = materialize_nas(config, "ct", raise_on_error=False)
    assert "refused the credentials (HTTP 401)" in step_failure_message(result)
    assert query(index, "SELECT count(*) FROM import_history") == [(0,)]


def test_missing_root_fails_in_one_sentence_and_writes_nothing(tmp_path, orthanc_env):
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    result = materialize_nas(config, "ct", raise_on_error=False)
    message = step_failure_message(result).strip()
    assert message == (f"NAS 'ct': root folder {tmp_path / 'nas'} does not exist or is not a folder "
                       "(is the NAS mounted?).")
    index = tmp_path / "index.duckdb"
    assert not index.exists() or query(index, "SELECT count(*) FROM inventory") == [(0,)]


def test_an_emptied_nas_is_an_outage_not_a_mass_deletion(sample_site):
    manifest, config, index = sample_site
    assert materialize_nas(config, "ct").success
    before = query(index, "SELECT file_path, status FROM file_status ORDER BY ALL")
    shutil.rmtree(manifest.root)
    manifest.root.mkdir()  # the mount point is there, the NAS behind it is not

    result = materialize_nas(config, "ct", raise_on_error=False)

    assert "treating it as an outage" in step_failure_message(result)
    assert query(index, "SELECT file_path, status FROM file_status ORDER BY ALL") == before
