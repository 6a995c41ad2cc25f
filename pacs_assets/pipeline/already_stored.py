"""Before any upload: which of the staged files Orthanc already holds, asked in bulk, recorded without sending.

After the index was lost or rebuilt, every file looks pending, and re-sending costs Orthanc a full write
and delete per file (measured on 1.10.1). Instead the staged files are looked up by SOP Instance UID, 100 per
``/tools/find``; a file whose deterministic Orthanc ID is there with the same stored size as the body we
would send is recorded from that answer, and only the rest is uploaded. The bytes are not compared on this
path (that would mean one request per file): a same-size file reusing the UIDs is recorded as in Orthanc.
A hit is ``duplicate`` when the ledger knows the upload that put the instance there (or another file of this
run has its ID), else ``imported`` (the index was rebuilt: the upload on record is gone, and it was ours).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from pacs_assets.index import ledger
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, NasSource, SendAs
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.client import orthanc_instance_id

FOUND = "already in Orthanc (found by its UIDs, same size): recorded without sending"
BATCH = 100  # UIDs per /tools/find: longer lists cost more per UID on 1.10.1 (docs/speed.md)
LOOKUPS_IN_FLIGHT = 3  # /tools/find requests at once (Orthanc answers each in its own HTTP thread)


LEDGER_BATCH = 5000  # hits per ledger write: each write opens the index (~10-25 ms), once per 100 cost 5 s per 10,000


def _hits(source: NasSource, client: OrthancApi, batch: list[FileRecord], skip: frozenset[str],
          send_as: Callable[[FileRecord], SendAs | None]) -> list[tuple[FileRecord, str]]:
    """The files of ``batch`` Orthanc holds (same Orthanc ID, same stored size): one ``/tools/find``. A file
    sent under another identity (``send_as``) is looked for under that one, with the size of what we send."""
    found = client.find_instances([r.sop_instance_uid for r in batch])
    if not found:
        return []
    hits = []
    for rec in batch:
        identity = send_as(rec)
        oid = orthanc_instance_id(identity.patient_id if identity else rec.patient_id, rec.study_instance_uid,
                                  rec.series_instance_uid, rec.sop_instance_uid)
        if oid not in found or oid in skip:  # skip: an interrupted upload of ours, index/journal.py decides
            continue
        try:
            size = source.upload_body(rec, identity).length
        except Exception:  # noqa: BLE001 - unreadable now: the upload will record why
            continue
        if size == found[oid]:
            hits.append((rec, oid))
    return hits


def _rows(hits: list[tuple[FileRecord, str]], kept: dict, seen: set[str], run_id: str | None,
          node: str) -> list[dict]:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = []
    for rec, oid in hits:
        # The ledger knows an upload that put it there (another file, or an earlier version of this one), or
        # another file of this run has that ID: Orthanc already had it, a duplicate. Nobody's upload on record
        # (the index was rebuilt): ours.
        by_other = oid in kept or oid in seen
        seen.add(oid)
        rows.append({
            "nas_id": rec.nas_id, "file_path": rec.file_path, "change_token": rec.change_token, "file_hash": None,
            "partition_date": rec.procedure_date, "orthanc_instance_id": oid, "patient_id": rec.patient_id,
            "study_instance_uid": rec.study_instance_uid, "series_instance_uid": rec.series_instance_uid,
            "sop_instance_uid": rec.sop_instance_uid, "status": "duplicate" if by_other else "imported",
            "error_message": FOUND, "retryable": False, "attempts": 0, "http_status": None,
            "started_at": now, "finished_at": now, "run_id": run_id, "orthanc_node": node})
    return rows


def record_already_stored(source: NasSource, client: OrthancApi, staging: Staging,
                          index_path: str | os.PathLike, *, run_id: str | None = None,
                          skip: frozenset[str] = frozenset(),
                          send_as: Callable[[FileRecord], SendAs | None] = lambda record: None) -> int:
    """Record the staged files Orthanc already holds and drop them from staging. Returns how many.

    Orthanc is asked 100 UIDs at a time, a few requests at once, their answers taken in order; the ledger is read
    (kept files) and written once per ``LEDGER_BATCH`` hits, not per request. A run killed in between loses
    only rows it can find again: nothing was sent."""
    staging.con.execute("CREATE TEMP TABLE IF NOT EXISTS already_stored (file_path VARCHAR)")
    recorded, hits, seen = 0, [], set()

    def write() -> None:
        nonlocal recorded
        rows = _rows(hits, ledger.kept_files(index_path, [oid for _, oid in hits]), seen, run_id, client.url)
        if rows:
            ledger.append_ledger(index_path, rows)
            import pandas as pd

            staging.con.register("_found", pd.DataFrame({"file_path": [r["file_path"] for r in rows]}))
            staging.con.execute("INSERT INTO already_stored SELECT file_path FROM _found")
            staging.con.unregister("_found")
            recorded += len(rows)
        hits.clear()

    def take(found: list[tuple[FileRecord, str]]) -> None:
        hits.extend(found)
        if len(hits) >= LEDGER_BATCH:
            write()

    # A few lookups in flight: each waits mostly on Orthanc's index, and the ledger writes stay in this thread.
    with ThreadPoolExecutor(LOOKUPS_IN_FLIGHT) as pool:
        pending: deque = deque()
        records = ledger.iter_staged(staging)
        for batch in iter(lambda: list(islice(records, BATCH)), []):  # BATCH records at a time
            pending.append(pool.submit(_hits, source, client, batch, skip, send_as))
            while len(pending) >= LOOKUPS_IN_FLIGHT or (pending and pending[0].done()):
                take(pending.popleft().result())
        while pending:
            take(pending.popleft().result())
    if hits:
        write()
    staging.con.execute("DELETE FROM inventory WHERE file_path IN (SELECT file_path FROM already_stored)")
    return recorded
