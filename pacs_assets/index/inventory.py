"""The inventory: every file a walk met. Staged per run, then merged window by window in one transaction.

The scan cache (``scan_cache``) is what earlier walks read, whatever partition they ran for, so an
unchanged file is never parsed twice. A run that walks only some folders (``folders``: an incremental run)
reads and replaces only those folders' rows, through the ``folder`` column and its index, so its cost does
not grow with the NAS. The reconciliation's merge of a whole walk is in reconciliation.py.

The same concept on two layers: the work of ``file_inventory`` (pipeline/inventory.py) and its SQL
(index/inventory.py).
"""

from __future__ import annotations

import datetime as dt
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

from pacs_assets.index.staging import Staging
from pacs_assets.nas import names
from pacs_assets.nas.base import FileRecord, ScanCache
from pacs_assets.nas.dates import assign_procedure_date

RECORD_COLUMNS = FileRecord.columns_()
_RECORD_FIELDS = operator.attrgetter(*RECORD_COLUMNS)
INVENTORY_COLUMNS = RECORD_COLUMNS + ["scanned_at", "folder"]
# Folders per ``IN (...)`` list: constant lists use the folder index; one statement per chunk.
FOLDER_CHUNK = 500
# Cached rows whose procedure date is a fallback, re-dated in Python this many at a time.
REDATE_PAGE = 20_000


def folder_of(file_path: str) -> str:
    return file_path.rpartition("/")[0]


def folder_chunks(folders: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``("(?, ?, ...)", params)`` per chunk of folders (at least one, so an empty list matches nothing)."""
    folders = sorted(set(folders))
    if not folders:
        return [("(NULL)", [])]
    return [("(" + ", ".join("?" * len(part)) + ")", part)
            for part in (folders[i:i + FOLDER_CHUNK] for i in range(0, len(folders), FOLDER_CHUNK))]


def records_frame(records: Sequence[FileRecord], scanned_at: dt.datetime):
    import pandas as pd  # here, not at module level: `pacs search` must start fast

    # attrgetter, not dataclasses.astuple: astuple deep-copies every field (~14x slower on this hot path).
    frame = pd.DataFrame([_RECORD_FIELDS(r) for r in records], columns=RECORD_COLUMNS)
    frame["procedure_date"] = frame["procedure_date"].astype("string")
    frame["scanned_at"] = scanned_at
    frame["folder"] = [folder_of(p) for p in frame["file_path"]]
    return frame


def add_records(staging: Staging, records: Sequence[FileRecord], scanned_at: dt.datetime) -> None:
    frame = records_frame(records, scanned_at)
    con = staging.con
    con.register("_frame", frame)
    try:
        cols = ", ".join(f'"{c}"' for c in INVENTORY_COLUMNS)
        con.execute(f"INSERT INTO inventory ({cols}) SELECT {cols} FROM _frame")
    finally:
        con.unregister("_frame")


def load_cache(staging: Staging, nas_id: str, folders: Sequence[str] | None = None) -> int:
    """Copy the NAS's scan cache from the index (one short lock): all of it, or only the rows of ``folders``.
    Returns how many files it knew (there)."""
    with staging.attached_to_index() as con:
        if folders is None:
            con.execute("INSERT INTO staging.cache SELECT * FROM scan_cache WHERE nas_id = ?", [nas_id])
        else:
            for in_list, params in folder_chunks(folders):
                con.execute("INSERT INTO staging.cache SELECT * FROM scan_cache WHERE nas_id = ? AND folder IN "
                            f"{in_list}",
                            [nas_id, *params])
    return staging.count("cache")


def record_deleted(con, gone_sql: str, params: list) -> int:
    """Insert into ``deleted_files`` the inventory rows ``gone_sql`` selects (nas_id, file_path, change_token,
    procedure_date, status), each with its last status. Reads the ledger only when something is gone."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _gone AS {gone_sql}", params)
    if not con.execute("SELECT count(*) FROM _gone").fetchall()[0][0]:
        return 0
    return con.execute("""
        INSERT INTO deleted_files
        SELECT g.nas_id, g.file_path, g.change_token, g.procedure_date,
               CASE WHEN g.status <> 'ok' THEN g.status ELSE coalesce(h.last_status, 'pending') END, now()
        FROM _gone g LEFT JOIN (
            SELECT h.nas_id, h.file_path, h.change_token, arg_max(h.status, h.attempt_id) AS last_status
            FROM import_history h JOIN _gone USING (nas_id, file_path, change_token) GROUP BY ALL
        ) h USING (nas_id, file_path, change_token)""").fetchall()[0][0]


def forget_returned(con, nas_id: str) -> None:
    """Files the walk found again (same path) are no longer deleted; their import history says the rest."""
    con.execute("DELETE FROM deleted_files WHERE nas_id = ? "
                "AND file_path IN (SELECT file_path FROM staging.inventory)", [nas_id])


def merge_inventory(staging: Staging, nas_id: str, start: dt.date, end: dt.date,
                    folders: Sequence[str] | None = None) -> dict[str, int]:
    """Replace the window [start, end) of the NAS's inventory, and refresh its scan cache, in one transaction.

    With ``folders`` (the walk saw only those, not their subfolders), only those folders' rows change: files
    gone from them are deleted, rows in folders not walked stay as they are.
    """
    if folders is not None:
        return _merge_folders(staging, nas_id, start, end, folders)
    with staging.attached_to_index(atomic=True) as con:
        # Files of the window that the complete walk no longer found anywhere: deleted on the NAS.
        record_deleted(con, """
            SELECT nas_id, file_path, change_token, procedure_date, status FROM inventory
            WHERE nas_id = ? AND procedure_date >= ? AND procedure_date < ?
              AND file_path NOT IN (SELECT file_path FROM staging.inventory)""", [nas_id, start, end])
        forget_returned(con, nas_id)
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


def _merge_folders(staging: Staging, nas_id: str, start: dt.date, end: dt.date,
                   folders: Sequence[str]) -> dict[str, int]:
    window = [start, end]
    with staging.attached_to_index(atomic=True) as con:
        for in_list, params in folder_chunks(folders):
            here = f"nas_id = ? AND folder IN {in_list}"
            record_deleted(con, f"""
                SELECT nas_id, file_path, change_token, procedure_date, status FROM inventory
                WHERE {here} AND procedure_date >= ? AND procedure_date < ?
                  AND file_path NOT IN (SELECT file_path FROM staging.inventory)""", [nas_id, *params, *window])
            con.execute(f"DELETE FROM inventory WHERE {here} AND procedure_date >= ? AND procedure_date < ?",
                        [nas_id, *params, *window])
            # A file of these folders that moved into the window from another date: one row per file.
            con.execute(f"""DELETE FROM inventory WHERE {here} AND file_path IN (
                SELECT file_path FROM staging.inventory WHERE procedure_date >= ? AND procedure_date < ?)""",
                        [nas_id, *params, *window])
            con.execute(f"DELETE FROM scan_cache WHERE {here}", [nas_id, *params])
        forget_returned(con, nas_id)
        con.execute("INSERT INTO inventory SELECT * FROM staging.inventory WHERE procedure_date >= ? AND "
                    "procedure_date < ?",
                    window)
        con.execute("INSERT INTO scan_cache SELECT * FROM staging.inventory")
        counts = dict(con.execute(
            "SELECT status, count(*) FROM staging.inventory WHERE procedure_date >= ? AND procedure_date < ? "
            "GROUP BY status", window).fetchall())
    return counts


def carry_over_links(staging: Staging, root: str | os.PathLike) -> int:
    """After a walk of named folders: rows the cache has there that the walk did not report and whose path is
    still a symbolic link keep their last word. Whether a link to a folder is followed or is a loop depends
    on the order of a whole walk, so only a whole walk (the reconciliation) decides those. Returns how many."""
    missing = [r[0] for r in staging.con.execute(
        "SELECT file_path FROM cache WHERE file_path NOT IN (SELECT file_path FROM inventory)").fetchall()]
    links = [p for p in missing if os.path.islink(names.join(root, p))]
    for i in range(0, len(links), FOLDER_CHUNK):
        part = links[i:i + FOLDER_CHUNK]
        staging.con.execute("INSERT INTO inventory SELECT * FROM cache WHERE file_path IN "
                            f"({', '.join('?' * len(part))})",
                            part)
    return len(links)


def carry_over_unread(staging: Staging, unread: Sequence[tuple[str, str]]) -> int:
    """Rows the cache has for what the walk could not read (``NasSource.unread``) stay as they were: a folder
    whose listing failed is not a folder without files. Only a folder that was read and lacks a file deletes
    it. Returns how many rows were kept."""
    if not unread:
        return 0
    import pandas as pd

    con = staging.con
    con.register("_unread", pd.DataFrame(list(unread), columns=["rel", "scope"]))
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _kept AS SELECT c.* FROM cache c WHERE EXISTS (SELECT 1 FROM "
                    "_unread u "
                    "WHERE (u.scope = 'folder' AND c.folder = u.rel) "
                    "OR (u.scope = 'tree' AND (u.rel = '' OR c.file_path = u.rel OR c.folder = u.rel "
                    "OR starts_with(c.folder, u.rel || '/'))))")
    finally:
        con.unregister("_unread")
    con.execute("DELETE FROM inventory WHERE file_path IN (SELECT file_path FROM _kept)")  # one row per file
    kept = con.execute("INSERT INTO inventory SELECT * FROM _kept").fetchall()[0][0]
    con.execute("DROP TABLE _kept")
    return kept


class StagingCache(ScanCache):
    """The scan cache as copied into a run's staging file. A bulk cache: a walk's files are offered in bulk
    (table ``walked``) and matched in SQL; ``stage_unchanged`` then copies the matched rows into the inventory."""

    bulk = True

    def __init__(self, staging: Staging, on_offer: Callable[[int], None] | None = None):
        self.staging = staging
        self.offered = self.unmatched_total = 0
        self.on_offer = on_offer
        staging.con.execute("CREATE OR REPLACE TABLE walked "
                            "(file_path VARCHAR, size BIGINT, mtime_ns BIGINT, change_token VARCHAR)")

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

    @property
    def seen(self) -> int:
        """Offered files that need no parse (all offered ones until ``unmatched`` has been asked)."""
        return self.offered - self.unmatched_total

    def offer(self, files: Sequence[tuple[str, int, int, str]]) -> None:
        import pandas as pd

        con = self.staging.con
        con.register("_offer", pd.DataFrame(files, columns=["file_path", "size", "mtime_ns", "change_token"]))
        try:
            con.execute("INSERT INTO walked SELECT * FROM _offer")
        finally:
            con.unregister("_offer")
        self.offered += len(files)
        if self.on_offer:
            self.on_offer(self.offered)

    def unmatched(self, batch_size: int) -> Iterator[list[tuple[str, int, int]]]:
        con = self.staging.con
        # A numbered table, read page by page: the caller writes to staging between pages.
        con.execute("""CREATE OR REPLACE TABLE unmatched AS
            SELECT row_number() OVER (ORDER BY w.file_path) AS k, w.file_path, w.size, w.mtime_ns FROM walked w
            WHERE NOT EXISTS (SELECT 1 FROM cache c WHERE c.file_path = w.file_path AND c.change_token = w.change_token)
            ORDER BY k""")
        total = self.unmatched_total = self.staging.count("unmatched")
        for lo in range(0, total, batch_size):
            yield [tuple(r) for r in con.execute("SELECT file_path, size, mtime_ns FROM unmatched WHERE k > ? "
                                                 "AND k <= ?",
                                                  [lo, lo + batch_size]).fetchall()]


def stage_unchanged(staging: Staging, scanned_at: dt.datetime, start: dt.date, today: dt.date) -> int:
    """After a bulk walk: copy into the inventory, in SQL, the cache rows of the walked files whose token
    matched (their content is unchanged), stamped ``scanned_at``. Returns how many.

    A cached procedure date taken from a valid StudyDate stays right (``partitions_start`` <= it <= today
    still holds when the cached row's date source is ``study_date`` and the date is in the walk's range,
    which the SQL checks). Every other row of the inventory (the fallbacks, which may depend on "today") gets
    nas/dates.py's rule again in Python, so the dates are exactly those a parse would give.
    """
    con = staging.con
    adopted = con.execute("""
        INSERT INTO inventory SELECT c.* REPLACE (CAST(? AS TIMESTAMP) AS scanned_at) FROM cache c
        WHERE EXISTS (SELECT 1 FROM walked w WHERE w.file_path = c.file_path AND w.change_token = c.change_token)""",
                          [scanned_at]).fetchall()[0][0]
    con.execute("""CREATE OR REPLACE TEMP TABLE _redate AS
        SELECT row_number() OVER () AS k, file_path, study_date, series_date, mtime_ns, procedure_date, date_source
        FROM inventory WHERE NOT (date_source = 'study_date' AND procedure_date >= ? AND procedure_date <= ?)""",
                [start, today])
    total = staging.count("_redate")
    import pandas as pd

    for lo in range(0, total, REDATE_PAGE):
        rows = con.execute("SELECT file_path, study_date, series_date, mtime_ns, procedure_date, date_source "
                           "FROM _redate WHERE k > ? AND k <= ?", [lo, lo + REDATE_PAGE]).fetchall()
        fixed = [(path, *new) for path, study, series, mtime, *old in rows
                 if (new := assign_procedure_date(study, series, mtime, start, today)) != tuple(old)]
        if fixed:
            con.register("_fixed", pd.DataFrame(fixed, columns=["file_path", "procedure_date", "date_source"]))
            try:
                con.execute("UPDATE inventory SET procedure_date = f.procedure_date, date_source = f.date_source "
                            "FROM _fixed f WHERE inventory.file_path = f.file_path")
            finally:
                con.unregister("_fixed")
    con.execute("DROP TABLE _redate")
    return adopted
