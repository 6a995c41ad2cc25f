"""The import ledger (``import_history``, one row per upload attempt, never rewritten), what is left to
upload, and the per-study counts of files in Orthanc. Written only by the ``orthanc_instances`` asset.

The upload reads its work from ``instances`` (what ``dicom_index`` produced), not from the inventory.

An attempt ends ``imported``, ``duplicate`` (Orthanc already held these bytes), ``uid_conflict`` (Orthanc
already held a *different* file with the same UIDs and kept it; ``error_message`` names which) or
``failed``. Only a retryable failure is tried again by a later run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence

import duckdb

from pacs_assets.index.connection import Index, opened, session, transaction
from pacs_assets.index.inventory import RECORD_COLUMNS
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord

LEDGER_COLUMNS = ["nas_id", "file_path", "change_token", "file_hash", "partition_date", "orthanc_instance_id",
                  "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "status",
                  "error_message", "retryable", "attempts", "http_status", "started_at", "finished_at", "run_id",
                  "attempt_key", "orthanc_node"]
LEDGER_STATUSES = ("imported", "duplicate", "uid_conflict", "failed")
FILE_STATUSES = LEDGER_STATUSES + ("held", "skipped", "pending")  # the file_status view's vocabulary
FOUND_COLUMNS = ["nas_id", "file_path", "change_token", "partition_date", "orthanc_instance_id", "patient_id",
                 "study_instance_uid", "series_instance_uid", "sop_instance_uid", "error_message", "by_run"]
SETTLED = "('imported', 'duplicate', 'uid_conflict')"  # SQL: a file version that no run uploads again


def stage_pending_uploads(staging: Staging, nas_id: str, start: dt.date, end: dt.date, *,
                          con: duckdb.DuckDBPyConnection | None = None) -> int:
    """Copy into staging the window's indexed instances that still need an upload. Returns how many. ``con``:
    an index connection the caller holds with this staging attached (``Staging.attached_to_index``).

    The instance row says what to send; the inventory row (same file, same change token) carries what the
    NAS kind needs to read it (format, transfer syntax, catalog facts).
    """
    with contextlib.nullcontext(con) if con is not None else staging.attached_to_index() as con:
        con.execute(f"""
            INSERT INTO staging.inventory
            SELECT f.* FROM instances i
            JOIN inventory f ON f.nas_id = i.nas_id AND f.file_path = i.file_path
                            AND f.change_token = i.change_token
            WHERE i.nas_id = ? AND i.partition_date >= ? AND i.partition_date < ?
              AND NOT EXISTS (
                SELECT 1 FROM import_history h
                WHERE h.nas_id = i.nas_id AND h.file_path = i.file_path AND h.change_token = i.change_token
                  AND (h.status IN {SETTLED} OR NOT h.retryable))""", [nas_id, start, end])
        return con.execute("SELECT count(*) FROM staging.inventory").fetchall()[0][0]


def iter_staged(staging: Staging, batch: int = 500, *,
                order: str = "procedure_date DESC, file_path") -> Iterator[FileRecord]:
    """The staged records in ``order`` (an ORDER BY of inventory's columns), read ``batch`` rows at a time."""
    cursor = staging.con.cursor()
    cols = ", ".join(f'"{c}"' for c in RECORD_COLUMNS)
    cursor.execute(f"SELECT {cols} FROM inventory ORDER BY {order}")
    while rows := cursor.fetchmany(batch):
        for row in rows:
            yield FileRecord(*row)
    cursor.close()


def append_ledger(index_path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """Append import attempts to ``import_history`` (one short transaction)."""
    if rows:
        with transaction(index_path) as con:
            insert_rows(con, "import_history", LEDGER_COLUMNS, rows)


def append_found(index_path: str | os.PathLike, found: Mapping[str, Sequence], *, run_id: str | None,
                 node: str) -> None:
    """Append the attempts of staged files found already in Orthanc (pipeline/already_stored.py), given as
    columns: ``FOUND_COLUMNS`` (``error_message``: how it was found; ``by_run``: another file of this run has
    its Orthanc ID). One transaction, the rows handed to DuckDB as a frame of columns (built row by row they
    cost ~40 us each). A row is ``duplicate`` when an upload on record put its instance there (an ``imported``
    row of any NAS) or ``by_run``, else ``imported`` (the index was rebuilt: the upload on record is gone)."""
    import pandas as pd

    frame = pd.DataFrame(dict(found))
    frame["partition_date"] = frame["partition_date"].astype("string")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with transaction(index_path) as con:
        con.register("_found", frame)
        try:
            con.execute(f"""
                INSERT INTO import_history ({", ".join(LEDGER_COLUMNS)})
                SELECT nas_id, file_path, change_token, NULL, partition_date, orthanc_instance_id, patient_id,
                       study_instance_uid, series_instance_uid, sop_instance_uid,
                       CASE WHEN by_run OR EXISTS (SELECT 1 FROM import_history h WHERE h.status = 'imported'
                                                   AND h.orthanc_instance_id = f.orthanc_instance_id)
                            THEN 'duplicate' ELSE 'imported' END,
                       error_message, false, 0, NULL, $now, $now, $run, NULL, $node
                FROM _found f""", {"now": now, "run": run_id, "node": node})
        finally:
            con.unregister("_found")


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Sequence[Mapping], *,
                new_keys_only: bool = False) -> None:
    """Insert dicts as rows (one DataFrame, not row by row). ``new_keys_only``: skip rows whose
    ``attempt_key`` the table already holds, so that writing the same attempts twice adds nothing."""
    import pandas as pd

    frame = pd.DataFrame([[row.get(c) for c in columns] for row in rows], columns=list(columns))
    if "partition_date" in frame:
        frame["partition_date"] = frame["partition_date"].astype("string")
    cols = ", ".join(columns)
    new = f"WHERE attempt_key NOT IN (SELECT attempt_key FROM {table} WHERE attempt_key IS NOT NULL)"
    con.register("_rows", frame)
    try:
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows {new if new_keys_only else ''}")
    finally:
        con.unregister("_rows")


def kept_files(index_path: str | os.PathLike, orthanc_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{Orthanc instance ID: (nas_id, file_path)} of the file, on any NAS, whose upload last created that
    instance in Orthanc (the ledger's latest ``imported`` attempt for the ID). IDs no NAS imported are absent."""
    if not orthanc_ids:
        return {}
    with session(index_path, read_only=True) as con:
        rows = con.execute("""
            SELECT orthanc_instance_id, arg_max(nas_id, attempt_id), arg_max(file_path, attempt_id)
            FROM import_history
            WHERE status = 'imported' AND orthanc_instance_id IN (SELECT unnest($ids::VARCHAR[]))
            GROUP BY 1""", {"ids": sorted(set(orthanc_ids))}).fetchall()
    return {oid: (nas, path) for oid, nas, path in rows}


def refresh_orthanc_counts(index: Index, nas_id: str, start: dt.date, end: dt.date) -> None:
    """``study_uploads.files_in_orthanc`` for a window: files whose current change token was imported or
    duplicate (the same definition as the file_status view), kept per study so a search never scans the
    big instances and import_history tables."""
    with opened(index, atomic=True) as con:
        window = {"nas": nas_id, "start": start, "end": end}
        con.execute("DELETE FROM study_uploads WHERE nas_id = $nas AND partition_date >= $start "
                    "AND partition_date < $end", window)
        con.execute("""
            INSERT INTO study_uploads
            SELECT i.nas_id, i.partition_date, i.study_instance_uid,
                   count(*) FILTER (WHERE EXISTS (
                       SELECT 1 FROM import_history h
                       WHERE h.nas_id = i.nas_id AND h.file_path = i.file_path
                         AND h.change_token = i.change_token AND h.status IN ('imported', 'duplicate'))), now()
            FROM instances i
            WHERE i.nas_id = $nas AND i.partition_date >= $start AND i.partition_date < $end
            GROUP BY ALL""", window)


def status_counts(index: Index, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    """{file_status: files} in the window, every status of the vocabulary present (0 if none)."""
    with opened(index) as con:
        return dict.fromkeys(FILE_STATUSES, 0) | dict(con.execute(
            "SELECT status, count(*) FROM file_status WHERE nas_id = ? AND partition_date >= ? AND partition_date < ? "
            "GROUP BY status", [nas_id, start, end]).fetchall())


def failed_files(index: Index, nas_id: str, start: dt.date, end: dt.date,
                 limit: int = 20) -> list[tuple[str, str]]:
    """(file_path, reason) of failed files in the window. Paths may name patients: callers must ask."""
    with opened(index, read_only=True) as con:
        return con.execute(
            "SELECT file_path, reason FROM file_status WHERE nas_id = ? AND status = 'failed' "
            "AND partition_date >= ? AND partition_date < ? ORDER BY file_path LIMIT ?",
            [nas_id, start, end, limit]).fetchall()
