"""The one module that owns the DuckDB index's SQL.

DuckDB lets one process at a time open the file, and while it does no other process can open it, not
even to read. Runs, sensors and searches are separate processes, so nothing here keeps the index open
for long: a run streams its work into a private *staging* database, then merges it into the index in
one short transaction. ``connect`` waits (with backoff) while another process holds the lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import operator
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

import duckdb

from pacs_assets.index.queries import name_key_sql
from pacs_assets.sources.base import FileRecord, ScanCache

RECORD_COLUMNS = FileRecord.columns_()
_RECORD_FIELDS = operator.attrgetter(*RECORD_COLUMNS)
INVENTORY_COLUMNS = RECORD_COLUMNS + ["scanned_at"]
LOCK_WAIT_SECONDS = float(os.environ.get("PACS_INDEX_LOCK_WAIT", "120"))
# DuckDB would take up to 80 % of RAM for a big merge; capped, it spills to disk and a run's memory
# stays flat however large the NAS.
DUCKDB_SETTINGS = {"memory_limit": os.environ.get("PACS_DUCKDB_MEMORY_LIMIT", "256MB"),
                   "preserve_insertion_order": False}


def _tuned(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    # SET, not connect(config=...): a connect-time config must match every other open connection to the
    # same file in this process, and tests or a caller may well hold a plain one.
    for name, value in DUCKDB_SETTINGS.items():
        con.execute(f"SET {name} = '{value}'" if isinstance(value, str) else f"SET {name} = {value}")
    return con


class IndexBusy(RuntimeError):
    """Another process kept the index locked for longer than we were willing to wait."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


def connect(path: str | os.PathLike, *, read_only: bool = False, wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the index, waiting while another process holds its lock."""
    wait = LOCK_WAIT_SECONDS if wait is None else wait
    deadline = time.monotonic() + wait
    delay = 0.02
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            if read_only and not Path(path).exists():
                raise FileNotFoundError(f"The index {path} does not exist yet: materialize a NAS's assets first.")
            con = _tuned(duckdb.connect(str(path), read_only=read_only))
            if not read_only:
                con.execute(resources.files("pacs_assets.index").joinpath("schema.sql").read_text())
            return con
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                if _is_lock_error(exc):
                    raise IndexBusy(f"The index {path} stayed locked by another process for {wait:.0f} s.") from None
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def session(path: str | os.PathLike, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def transaction(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write transaction: all of it lands, or none of it."""
    with session(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def records_frame(records: Sequence[FileRecord], scanned_at: dt.datetime):
    import pandas as pd  # here, not at module level: `pacs search` must start fast

    # attrgetter, not dataclasses.astuple: astuple deep-copies every field (~14x slower on this hot path).
    frame = pd.DataFrame([_RECORD_FIELDS(r) for r in records], columns=RECORD_COLUMNS)
    frame["procedure_date"] = frame["procedure_date"].astype("string")
    frame["scanned_at"] = scanned_at
    return frame


def _insert_frame(con, table: str, frame) -> None:
    con.register("_frame", frame)
    try:
        cols = ", ".join(f'"{c}"' for c in INVENTORY_COLUMNS)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _frame")
    finally:
        con.unregister("_frame")


class Staging:
    """A private DuckDB file for one run: the run's scratch space, never locked by anyone else."""

    def __init__(self, index_path: str | os.PathLike):
        self.index_path = Path(index_path)
        self._dir = tempfile.TemporaryDirectory(prefix="pacs-staging-")
        self.path = Path(self._dir.name) / "staging.duckdb"
        self.con = _tuned(duckdb.connect(str(self.path)))
        schema = resources.files("pacs_assets.index").joinpath("schema.sql").read_text()
        self.con.execute(schema.split("CREATE SEQUENCE")[0])  # the table shapes, without the ledger/view
        self.con.execute("CREATE TABLE cache AS SELECT * FROM scan_cache")

    def close(self) -> None:
        self.con.close()
        self._dir.cleanup()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def attached_to_index(self, *, atomic: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """An index connection (one short lock) with this staging file attached as ``staging``.

        DuckDB allows one writer per file even within a process, so our own connection steps aside.
        ``atomic``: everything done on the connection lands in one transaction, or nothing does.
        """
        self.con.execute("CHECKPOINT")
        self.con.close()
        try:
            with (transaction if atomic else session)(self.index_path) as con:
                con.execute(f"ATTACH '{self.path}' AS staging")
                yield con
        finally:
            self.con = _tuned(duckdb.connect(str(self.path)))

    # -- scan cache ---------------------------------------------------------------------------------
    def load_cache(self, nas_id: str) -> int:
        """Copy the NAS's scan cache from the index (one short lock). Returns how many files it knew."""
        with self.attached_to_index() as con:
            con.execute("INSERT INTO staging.cache SELECT * FROM scan_cache WHERE nas_id = ?", [nas_id])
        return self.con.execute("SELECT count(*) FROM cache").fetchall()[0][0]

    def cache(self) -> ScanCache:
        return _StagingCache(self)

    def add_records(self, records: Sequence[FileRecord], scanned_at: dt.datetime) -> None:
        _insert_frame(self.con, "inventory", records_frame(records, scanned_at))

    # -- merge --------------------------------------------------------------------------------------
    def merge_inventory(self, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
        """Replace the window [start, end) of the NAS's inventory, and refresh its scan cache, in one transaction."""
        with self.attached_to_index(atomic=True) as con:
            # Files of the window that the complete walk no longer found anywhere: deleted on the NAS.
            con.execute("""
                INSERT INTO deleted_files
                SELECT o.nas_id, o.file_path, o.change_token, o.procedure_date, s.status, now()
                FROM inventory o LEFT JOIN file_status s USING (nas_id, file_path)
                WHERE o.nas_id = ? AND o.procedure_date >= ? AND o.procedure_date < ?
                  AND o.file_path NOT IN (SELECT file_path FROM staging.inventory)""", [nas_id, start, end])
            con.execute("DELETE FROM inventory WHERE nas_id = ? AND procedure_date >= ? AND procedure_date < ?",
                        [nas_id, start, end])
            con.execute("INSERT INTO inventory SELECT * FROM staging.inventory "
                        "WHERE procedure_date >= ? AND procedure_date < ?", [start, end])
            # The walk was complete: the cache becomes exactly what it saw.
            con.execute("DELETE FROM scan_cache WHERE nas_id = ?", [nas_id])
            con.execute("INSERT INTO scan_cache SELECT * FROM staging.inventory")
            counts = dict(con.execute(
                "SELECT status, count(*) FROM staging.inventory WHERE procedure_date >= ? AND procedure_date < ? "
                "GROUP BY status", [start, end]).fetchall())
        return counts


class _StagingCache(ScanCache):
    def __init__(self, staging: Staging):
        self.staging = staging

    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        if not keys:
            return {}
        con = self.staging.con
        import pandas as pd

        probe = pd.DataFrame({"file_path": list(keys), "change_token": list(keys.values())})
        con.register("_probe", probe)
        try:
            cols = ", ".join(f'c."{c}"' for c in RECORD_COLUMNS)
            rows = con.execute(f"SELECT {cols} FROM cache c JOIN _probe p USING (file_path, change_token)").fetchall()
        finally:
            con.unregister("_probe")
        return {row[1]: FileRecord(*row) for row in rows}


# -- the hierarchy: patients / studies / series / instances ---------------------------------------------

ORTHANC_ID_SQL = """
    regexp_replace(sha1(coalesce(patient_id, '') || '|' || study_instance_uid || '|' ||
                        series_instance_uid || '|' || sop_instance_uid),
                   '^(.{8})(.{8})(.{8})(.{8})(.{8})$', '\\1-\\2-\\3-\\4-\\5')
"""


def rebuild_hierarchy(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    """Rewrite patients/studies/series/instances of one NAS's window from its inventory, in one transaction."""
    window = [nas_id, start, end]
    where = "nas_id = ? AND partition_date >= ? AND partition_date < ?"
    src = ("FROM inventory WHERE nas_id = ? AND procedure_date >= ? AND procedure_date < ? AND status = 'ok'")
    with transaction(index_path) as con:
        for table in ("instances", "series", "studies", "patients"):
            con.execute(f"DELETE FROM {table} WHERE {where}", window)
        con.execute(f"""
            INSERT INTO instances
            SELECT nas_id, procedure_date, date_source, file_path, sop_instance_uid, sop_class_uid,
                   series_instance_uid, study_instance_uid, patient_id, instance_number, number_of_frames,
                   "rows", "columns", file_format, transfer_syntax_uid, compression_type, size, change_token,
                   {ORTHANC_ID_SQL}, now()
            {src}""", window)
        con.execute(f"""
            INSERT INTO series
            SELECT nas_id, procedure_date, series_instance_uid, any_value(study_instance_uid), mode(modality),
                   min(series_number), any_value(series_description), count(*),
                   sum(coalesce(number_of_frames, 1)), min(regexp_replace(file_path, '/[^/]*$', '')), now()
            {src} GROUP BY nas_id, procedure_date, series_instance_uid""", window)
        con.execute(f"""
            INSERT INTO studies
            SELECT nas_id, procedure_date, study_instance_uid, any_value(patient_id), min(study_date),
                   min(date_source), any_value(study_description), any_value(accession_number),
                   string_agg(DISTINCT modality, ',' ORDER BY modality), count(DISTINCT series_instance_uid),
                   count(*), min(regexp_replace(file_path, '/[^/]*/[^/]*$', '')),
                   string_agg(DISTINCT file_format, ',' ORDER BY file_format), now(), 0
            {src} GROUP BY nas_id, procedure_date, study_instance_uid""", window)
        con.execute(f"""
            INSERT INTO patients
            SELECT nas_id, procedure_date, patient_id, any_value(patient_name), any_value(patient_birth_date),
                   any_value(patient_sex), count(DISTINCT study_instance_uid), count(*), now(),
                   {name_key_sql("any_value(patient_name)")}
            {src} GROUP BY nas_id, procedure_date, patient_id""", window)
        _refresh_orthanc_counts(con, nas_id, start, end)
        counts = {table: con.execute(f"SELECT count(*) FROM {table} WHERE {where}", window).fetchall()[0][0]
                  for table in ("patients", "studies", "series", "instances")}
    return counts


def _refresh_orthanc_counts(con, nas_id: str, start: dt.date, end: dt.date) -> None:
    """studies.files_in_orthanc for a window: files whose current change token was imported or duplicate.

    The same definition as the file_status view (after such an attempt the importer never retries that
    token, so it is also the last attempt), kept in the small studies table so a search never scans
    the big instances and import_history tables.
    """
    con.execute("""
        UPDATE studies s SET files_in_orthanc = c.n FROM (
            SELECT i.nas_id, i.partition_date, i.study_instance_uid, count(*) AS n
            FROM instances i
            WHERE i.nas_id = $nas AND i.partition_date >= $start AND i.partition_date < $end
              AND EXISTS (SELECT 1 FROM import_history h
                          WHERE h.nas_id = i.nas_id AND h.file_path = i.file_path
                            AND h.change_token = i.change_token AND h.status IN ('imported', 'duplicate'))
            GROUP BY ALL) c
        WHERE s.nas_id = c.nas_id AND s.partition_date = c.partition_date
          AND s.study_instance_uid = c.study_instance_uid""", {"nas": nas_id, "start": start, "end": end})


def refresh_orthanc_counts(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date) -> None:
    with transaction(index_path) as con:
        _refresh_orthanc_counts(con, nas_id, start, end)


# -- import ---------------------------------------------------------------------------------------------

def stage_pending_imports(staging: Staging, nas_id: str, start: dt.date, end: dt.date) -> int:
    """Copy into staging the window's indexed files that still need an upload. Returns how many."""
    with staging.attached_to_index() as con:
        con.execute("""
            INSERT INTO staging.inventory
            SELECT f.* FROM inventory f
            WHERE f.nas_id = ? AND f.procedure_date >= ? AND f.procedure_date < ? AND f.status = 'ok'
              AND NOT EXISTS (
                SELECT 1 FROM import_history h
                WHERE h.nas_id = f.nas_id AND h.file_path = f.file_path AND h.change_token = f.change_token
                  AND (h.status IN ('imported', 'duplicate') OR NOT h.retryable))""", [nas_id, start, end])
    return staging.con.execute("SELECT count(*) FROM inventory").fetchall()[0][0]


def iter_staged(staging: Staging, batch: int = 500) -> Iterator[FileRecord]:
    cursor = staging.con.cursor()
    cols = ", ".join(f'"{c}"' for c in RECORD_COLUMNS)
    cursor.execute(f"SELECT {cols} FROM inventory ORDER BY procedure_date DESC, file_path")
    while rows := cursor.fetchmany(batch):
        for row in rows:
            yield FileRecord(*row)
    cursor.close()


LEDGER_COLUMNS = ["nas_id", "file_path", "change_token", "file_hash", "partition_date", "orthanc_instance_id",
                  "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "status",
                  "error_message", "retryable", "attempts", "http_status", "started_at", "finished_at", "run_id"]


def append_ledger(index_path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """Append import attempts to ``import_history`` (one short transaction)."""
    if not rows:
        return
    import pandas as pd

    frame = pd.DataFrame([[row.get(c) for c in LEDGER_COLUMNS] for row in rows], columns=LEDGER_COLUMNS)
    frame["partition_date"] = frame["partition_date"].astype("string")
    with transaction(index_path) as con:
        con.register("_ledger", frame)
        cols = ", ".join(LEDGER_COLUMNS)
        con.execute(f"INSERT INTO import_history ({cols}) SELECT {cols} FROM _ledger")
        con.unregister("_ledger")


def status_counts(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    with session(index_path) as con:
        return dict(con.execute(
            "SELECT status, count(*) FROM file_status WHERE nas_id = ? AND partition_date >= ? AND partition_date < ? "
            "GROUP BY status", [nas_id, start, end]).fetchall())


def known_file_count(index_path: str | os.PathLike, nas_id: str) -> int:
    if not Path(index_path).exists():
        return 0
    with session(index_path) as con:
        return con.execute("SELECT count(*) FROM scan_cache WHERE nas_id = ?", [nas_id]).fetchall()[0][0]


def failed_files(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date,
                 limit: int = 20) -> list[tuple[str, str]]:
    """(file_path, reason) of failed files in the window. Paths may name patients: callers must ask."""
    with session(index_path, read_only=True) as con:
        return con.execute(
            "SELECT file_path, reason FROM file_status WHERE nas_id = ? AND status = 'failed' "
            "AND partition_date >= ? AND partition_date < ? ORDER BY file_path LIMIT ?",
            [nas_id, start, end, limit]).fetchall()
