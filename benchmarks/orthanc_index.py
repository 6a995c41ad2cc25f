"""A throwaway Orthanc that already holds a NAS's instances, written into its own SQLite index.

The nightly reconciliation's Orthanc check reads Orthanc's index only (its instance list, the instance count,
the last change, ``/tools/find`` by SOP Instance UID), never a stored file. Uploading the benchmark's 200,000
files would take ~8 minutes on 2 cores and measure Orthanc's ingest. Instead Orthanc 1.10.1 creates its index,
is stopped, and the rows its REST upload would have written are inserted with its own schema: one resource per
patient, study, series and instance (public IDs: Orthanc's SHA-1 of the identifiers), the identifier tags
``/tools/find`` matches on, a DICOM attachment and a ``NewInstance`` change per instance. ``faithful`` then asks
the running Orthanc what the sweep relies on (the count, the list, a lookup, and a re-upload of a real file
answering ``AlreadyStored`` with our ID) and names any difference.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

PATIENT, STUDY, SERIES, INSTANCE = 1, 2, 3, 4  # Orthanc's ResourceType
NEW_INSTANCE, NEW_PATIENT, NEW_SERIES, NEW_STUDY = 2, 3, 4, 5  # Orthanc's ChangeType
SOP_UID, SERIES_UID, STUDY_UID, PATIENT_ID = (0x0008, 0x0018), (0x0020, 0x000E), (0x0020, 0x000D), (0x0010, 0x0020)


def _orthanc_id(*parts: str) -> str:
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def write_index(db: Path, rows: list[tuple[str, str, str, str]], file_size: int = 9_000) -> None:
    """Insert (PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) rows into a stopped Orthanc's
    SQLite index, as its upload would (parents once each, in upload order)."""
    con = sqlite3.connect(db)
    internal: dict[str, int] = {}
    resources, identifiers, files, changes = [], [], [], []
    date = "20260101T000000"

    def resource(level: int, public: str, parent: str | None, tag: tuple[int, int], value: str, change: int) -> bool:
        if public in internal:
            return False
        internal[public] = len(internal) + 1
        resources.append((internal[public], level, public, internal.get(parent) if parent else None))
        identifiers.append((internal[public], *tag, value))
        changes.append((change, internal[public], level, date))
        return True

    for patient, study, series, sop in rows:
        patient_id, study_id = _orthanc_id(patient), _orthanc_id(patient, study)
        series_id, instance_id = _orthanc_id(patient, study, series), _orthanc_id(patient, study, series, sop)
        resource(PATIENT, patient_id, None, PATIENT_ID, patient, NEW_PATIENT)
        resource(STUDY, study_id, patient_id, STUDY_UID, study, NEW_STUDY)
        resource(SERIES, series_id, study_id, SERIES_UID, series, NEW_SERIES)
        if not resource(INSTANCE, instance_id, series_id, SOP_UID, sop, NEW_INSTANCE):
            continue
        md5 = hashlib.md5(instance_id.encode()).hexdigest()
        files.append((internal[instance_id], 1, str(uuid.uuid4()), file_size, file_size, 1, md5, md5))
    with con:
        con.executemany("INSERT INTO Resources VALUES (?, ?, ?, ?)", resources)
        con.executemany("INSERT INTO DicomIdentifiers VALUES (?, ?, ?, ?)", identifiers)
        con.executemany("INSERT INTO MainDicomTags VALUES (?, ?, ?, ?)", identifiers)
        con.executemany("INSERT INTO AttachedFiles VALUES (?, ?, ?, ?, ?, ?, ?, ?)", files)
        con.executemany("INSERT INTO Changes (changeType, internalId, resourceType, date) VALUES (?, ?, ?, ?)",
                        changes)
    con.close()


@contextlib.contextmanager
def orthanc_holding(work: Path, rows: list[tuple[str, str, str, str]]) -> Iterator:
    """A fresh private Orthanc whose index holds these instances; killed at the end, its folder deleted."""
    from pacs_assets_tests.services.orthanc import OrthancServer

    with tempfile.TemporaryDirectory(dir=work, prefix="orthanc-full-") as wd:
        server = OrthancServer(Path(wd))
        server.stop_signal = signal.SIGKILL  # nothing of it is kept; SQLite's journal keeps the index whole
        server.start()
        server.stop()
        write_index(next((Path(wd) / "index").rglob("index")), rows)
        with server:
            yield server


def faithful(server, rows: list[tuple[str, str, str, str]], sample_file: bytes, sample_id: str) -> str | None:
    """None when the seeded Orthanc answers like one that received these instances; else what differs."""
    import requests

    session = requests.Session()
    session.auth = server.auth
    count = session.get(f"{server.url}/statistics", timeout=60).json()["CountInstances"]
    if count != len(rows):
        return f"Orthanc counts {count} instances, not {len(rows)}"
    listed = session.get(f"{server.url}/instances", params={"since": 0, "limit": 5}, timeout=60).json()
    if listed != [_orthanc_id(*row) for row in rows[:5]]:
        return "Orthanc lists other instance IDs than the seeded ones"
    found = session.post(f"{server.url}/tools/find", timeout=60, json={
        "Level": "Instance", "Expand": True, "Query": {"SOPInstanceUID": "\\".join(r[3] for r in rows[:100])}}).json()
    if len(found) != min(100, len(rows)) or not all(int(f.get("FileSize") or 0) > 0 for f in found):
        return f"/tools/find found {len(found)} of {min(100, len(rows))} seeded instances (or no file size)"
    answer = session.post(f"{server.url}/instances", data=sample_file, timeout=60,
                          headers={"Content-Type": "application/dicom"}).json()
    if answer.get("Status") != "AlreadyStored" or answer.get("ID") != sample_id:
        return f"a seeded file re-sent answered {answer.get('Status')}, not AlreadyStored"
    return None
