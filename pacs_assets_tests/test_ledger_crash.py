"""The ledger stays exact when the upload is SIGKILLed: real Orthanc, real DuckDB, a real child process.

Every attempt Orthanc answered reaches import_history (through the run's journal, merged by the next
upload), a file whose POST was cut off stays pending, and when Orthanc then answers AlreadyStored for it,
it is recorded imported (Orthanc got it from us), never duplicate. See pacs_assets/index/journal.py.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pydicom
import pytest
import requests

from pacs_assets.config import DicomFolderNas
from pacs_assets.index.connection import session
from pacs_assets.index.journal import Journal, Reclaims, journal_dir, merge_journals
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.pipeline.hierarchy import build_hierarchy
from pacs_assets.pipeline.inventory import take_inventory
from pacs_assets.pipeline.upload import RECLAIMED, upload_window
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

NAS_ID = "crash"
START, END = dt.date(2000, 1, 1), dt.date.today() + dt.timedelta(days=1)
ROOT = Path(__file__).resolve().parents[1]
# The child: the orthanc_instances asset's work, nothing else. argv: NAS root, index, Orthanc URL.
WORKER = f"""
import datetime as dt, os, sys
from pathlib import Path
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.pipeline.upload import upload_window
client = OrthancClient(sys.argv[3], os.environ["ORTHANC_USERNAME"], os.environ["ORTHANC_PASSWORD"])
upload_window(DicomFolderSource({NAS_ID!r}, Path(sys.argv[1]), workers=1), client, sys.argv[2], {NAS_ID!r},
              dt.date.fromisoformat({START.isoformat()!r}), dt.date.fromisoformat({END.isoformat()!r}))
"""


def indexed_nas(workdir: Path, files: int, held: int = 0) -> tuple[Path, Path]:
    """A bulk NAS (small valid CT files, no copies, no junk) walked and indexed: (root, index). With ``held``,
    as many more files of different people under one PatientID, which the identity guard holds."""
    root, index = workdir / "nas", workdir / "var" / "index.duckdb"
    assert make_bulk_dicom_nas(root, files) == files
    template = next(root.rglob("*.dcm"))
    (root / "REUSED").mkdir()
    for n in range(held):
        ds = pydicom.dcmread(template)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = "REUSED-1", f"Person^Number{n}", f"19{50 + n}0101"
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        ds.save_as(root / "REUSED" / f"IM{n}.dcm")
    nas = DicomFolderNas(id=NAS_ID, kind="dicom_folder", root=root, partitions_start=START)
    take_inventory(DicomFolderSource(NAS_ID, root, workers=1), nas, index, START, END, today=dt.date.today())
    build_hierarchy(index, NAS_ID, START, END)
    return root, index


def orthanc_count(orthanc) -> int:
    return requests.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=10).json()["CountInstances"]


def upload(orthanc, root: Path, index: Path):
    return upload_window(DicomFolderSource(NAS_ID, root, workers=1),
                         OrthancClient(orthanc.url, orthanc.username, orthanc.password), index, NAS_ID, START, END)


def query(index: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(index), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def kill_when_orthanc_holds(orthanc, root: Path, index: Path, target: int) -> None:
    """Start the upload in a child and SIGKILL it once Orthanc holds ``target`` instances."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORTHANC_USERNAME": orthanc.username,
           "ORTHANC_PASSWORD": orthanc.password}
    child = subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(index), orthanc.url], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while orthanc_count(orthanc) < target:
            assert child.poll() is None, f"the upload ended before the kill: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the upload made no progress"
            time.sleep(0.005)
        assert child.poll() is None, "the upload ended before the kill"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()


@pytest.mark.parametrize("files", [500])
def test_killed_uploads_leave_an_exact_ledger(tmp_path, orthanc, files):
    root, index = indexed_nas(tmp_path, files, held=2)  # two held files: never sent, whatever is killed
    for share in (0.1, 0.5, 0.9):
        kill_when_orthanc_holds(orthanc, root, index, int(files * share))
        # The dead child's journal is all that is left (the child merged its predecessor's when it started).
        assert len(list(journal_dir(index).glob("*.jsonl"))) == 1
    done = upload(orthanc, root, index)

    # every file recorded, none called duplicate, none pending; the two held files still held
    assert {k: v for k, v in done.totals.items() if v} == {"imported": files, "held": 2}
    assert orthanc_count(orthanc) == files
    history = query(index, "SELECT status, count(*), count(DISTINCT file_path), count(DISTINCT orthanc_instance_id), "
                           "count(DISTINCT attempt_key) FROM import_history GROUP BY status")
    assert history == [("imported", files, files, files, files)]  # one imported row per instance, no other row
    held = set(requests.get(f"{orthanc.url}/instances", auth=orthanc.auth, timeout=30).json())
    assert {oid for (oid,) in query(index, "SELECT orthanc_instance_id FROM import_history")} == held
    # Each kill cut uploads off mid-POST; those files were sent again, their AlreadyStored counted imported.
    interrupted = query(index, "SELECT count(*) FROM interrupted_uploads")[0][0]
    assert interrupted >= 1
    # The last run sent only what was left: what Orthanc answered before the kill was in the journal, and
    # at most one upload per thread (4) was cut off mid-POST.
    assert done.summary.done == done.staged - 2 <= files - int(files * 0.9) + 4  # the held pair is not sent
    assert list(journal_dir(index).iterdir()) == []
    assert list((index.parent / "staging").iterdir()) == []


def test_a_cut_off_upload_that_reached_orthanc_is_imported_not_duplicate(tmp_path, orthanc):
    root, index = indexed_nas(tmp_path, 20)
    (landed, landed_token, landed_id), (lost, lost_token, lost_id) = query(
        index, "SELECT file_path, change_token, orthanc_instance_id FROM instances ORDER BY file_path LIMIT 2")
    # A killed run: both POSTs started, Orthanc stored the first, neither answer reached the journal.
    requests.post(f"{orthanc.url}/instances", data=(root / landed).read_bytes(), auth=orthanc.auth,
                  timeout=30).raise_for_status()
    journal = Journal(index)
    for path, token, oid in ((landed, landed_token, landed_id), (lost, lost_token, lost_id)):
        journal.started(journal.new_key(), NAS_ID, path, token, oid, dt.datetime(2024, 1, 1), "killed-run")
    journal.close()
    journal.path.rename(journal.path.with_name(f"{dead_pid()}-{journal.path.name.split('-', 1)[1]}"))

    done = upload(orthanc, root, index)

    assert done.staged == 20 and {k: v for k, v in done.totals.items() if v} == {"imported": 20}
    rows = dict(query(index, "SELECT file_path, error_message FROM import_history WHERE file_path IN (?, ?)",
                      [landed, lost]))
    assert rows == {landed: RECLAIMED, lost: None}
    assert query(index, "SELECT file_path, run_id FROM interrupted_uploads ORDER BY file_path") == sorted(
        [(landed, "killed-run"), (lost, "killed-run")])
    assert list(journal_dir(index).iterdir()) == []
    # A rerun has nothing to send and records nothing new.
    assert upload(orthanc, root, index).summary.done == 0


def _row(key: str, path: str) -> dict:
    return {"attempt_key": key, "nas_id": NAS_ID, "file_path": path, "change_token": "t", "status": "imported",
            "orthanc_instance_id": f"id-{path}", "partition_date": dt.date(2024, 3, 1), "retryable": False,
            "attempts": 1, "http_status": 200, "started_at": dt.datetime(2024, 3, 1, 12),
            "finished_at": dt.datetime(2024, 3, 1, 12, 0, 1)}


def test_merging_the_same_journal_twice_adds_nothing(tmp_path):
    index = tmp_path / "index.duckdb"
    journal = Journal(index)
    for path in ("a.dcm", "b.dcm"):
        key = journal.new_key()
        journal.started(key, NAS_ID, path, "t", f"id-{path}", dt.datetime(2024, 3, 1, 12), None)
        journal.answered(_row(key, path))
    journal.started(journal.new_key(), NAS_ID, "c.dcm", "t", "id-c.dcm", dt.datetime(2024, 3, 1, 12), None)
    journal.close()
    body = journal.path.read_bytes()
    # Someone else's journal whose process is alive (ours) is never merged from outside.
    (journal.path.parent / f"{os.getpid()}-live.jsonl").write_bytes(body)

    counts = "SELECT (SELECT count(*) FROM import_history), (SELECT count(*) FROM interrupted_uploads)"
    assert merge_journals(index, own=journal.path) == 1
    assert query(index, counts) == [(2, 1)]
    journal.path.write_bytes(body + b'{"k": "torn')  # merged again (and torn by a crash): nothing new
    assert merge_journals(index, own=journal.path) == 1
    assert query(index, counts) == [(2, 1)]
    assert [p.name for p in journal_dir(index).iterdir()] == [f"{os.getpid()}-live.jsonl"]
    with session(index) as con:
        assert con.execute("SELECT typeof(started_at), partition_date FROM import_history LIMIT 1").fetchall() == [
            ("TIMESTAMP", dt.date(2024, 3, 1))]


def test_the_first_answer_for_an_interrupted_instance_decides():
    reclaims = Reclaims({("a.dcm", "t"): "X"})
    # The interrupted file's AlreadyStored: Orthanc got it from us, once.
    assert reclaims.status("X", "a.dcm", "t", "duplicate", "X") == "imported"
    assert reclaims.status("X", "a.dcm", "t", "duplicate", "X") == "duplicate"
    assert reclaims.status("X", "copy.dcm", "t", "duplicate", "X") == "duplicate"
    # Another copy imported first: Orthanc did not have it, so the interrupted file is a duplicate.
    reclaims = Reclaims({("a.dcm", "t"): "X"})
    assert reclaims.status("X", "copy.dcm", "t", "imported", "X") == "imported"
    assert reclaims.status("X", "a.dcm", "t", "duplicate", "X") == "duplicate"
    # Other instances and changed files pass through.
    assert reclaims.status("Y", "b.dcm", "t", "duplicate", "Y") == "duplicate"
    assert Reclaims({("a.dcm", "t"): "X"}).status("X", "a.dcm", "t2", "duplicate", "X") == "duplicate"
