"""The inventory: every file a walk met. Staged per run, then merged window by window in one transaction.

A walk stages what it read (``inventory``: the files it parsed, what is not a regular file, rows kept for
what it could not read) and what identifies every file it met (``walked``: path, size, mtime, token). The
unchanged files' rows are never copied: the merge reads them from the scan cache (index/scan_cache.py, its
own file) and writes to the index only the rows that differ from the index's own (``stage_diff``), so an
unchanged NAS costs reads, not writes. A run that walks only some folders (``folders``: an incremental run)
reads and replaces only those folders' rows, through the ``folder`` column and its index, so its cost does
not grow with the NAS. The reconciliation's merge of a whole walk is in reconciliation.py.

The same concept on two layers: the work of ``file_inventory`` (pipeline/inventory.py) and its SQL
(index/inventory.py).
"""

from __future__ import annotations

import datetime as dt
import operator
import os
from collections.abc import Sequence

from pacs_assets.index import scan_cache
from pacs_assets.index.connection import in_transaction
from pacs_assets.index.staging import Staging
from pacs_assets.index.walk_cache import FOLDER_CHUNK, scopes, slices, sql_text
from pacs_assets.nas import names
from pacs_assets.nas.base import FileRecord

RECORD_COLUMNS = FileRecord.columns_()
_RECORD_FIELDS = operator.attrgetter(*RECORD_COLUMNS)
INVENTORY_COLUMNS = RECORD_COLUMNS + ["scanned_at", "folder"]
# What makes a file's row differ between a walk and the index (the token covers the content).
DIFF_COLUMNS = ["file_path", "change_token", "procedure_date", "date_source", "status", "reason"]
DIFFERS = ("o.change_token IS DISTINCT FROM n.change_token OR o.procedure_date IS DISTINCT FROM n.procedure_date "
            "OR o.date_source IS DISTINCT FROM n.date_source OR o.status IS DISTINCT FROM n.status "
            "OR o.reason IS DISTINCT FROM n.reason")


def folder_of(file_path: str) -> str:
    return file_path.rpartition("/")[0]


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


def new_rows_sql(nas_id: str, where: str = "true", columns: Sequence[str] = INVENTORY_COLUMNS) -> str:
    """Every file the walk found (in the slice ``where``) as its new inventory row: what it staged, and the
    cached row of each unchanged file, re-dated where ``redated`` says. A walked file whose cached row is gone by
    now (another run replaced it) has none: the merge leaves its index row as it is (it is read next time)."""
    staged = ", ".join(f'"{c}"' for c in columns)
    moved = {"procedure_date": "coalesce(r.procedure_date, c.procedure_date)",
             "date_source": "coalesce(r.date_source, c.date_source)"}
    cached = ", ".join(f'{moved[c]} AS "{c}"' if c in moved else f'c."{c}"' for c in columns)
    return f"""(SELECT {staged} FROM staging.inventory WHERE {where}
        UNION ALL
        SELECT {cached} FROM (SELECT * FROM sc.scan_cache WHERE nas_id = {sql_text(nas_id)} AND {where}) c
        JOIN (SELECT file_path, change_token FROM staging.walked WHERE {where}) w
          ON c.file_path = w.file_path AND c.change_token = w.change_token
        LEFT JOIN staging.redated r ON r.file_path = c.file_path
        WHERE c.file_path NOT IN (SELECT file_path FROM staging.inventory WHERE {where}))"""


def _in_window(column: str, window: tuple[dt.date, dt.date] | None) -> str:
    return "true" if window is None else f"{column} >= DATE '{window[0]}' AND {column} < DATE '{window[1]}'"


def stage_diff(con, nas_id: str, where: str = "true", window: tuple[dt.date, dt.date] | None = None) -> None:
    """Add to the temp table ``_diff`` (file_path, old_date, new_date, kind) the files of the slice ``where``
    whose index row in the window must change: 'added' (a new row in the window), 'deleted' (not walked any
    more) or 'changed' (token, date, status or reason differ; a row that leaves the window has its new date)."""
    con.execute("CREATE TEMP TABLE IF NOT EXISTS _diff "
                "(file_path VARCHAR, old_date DATE, new_date DATE, kind VARCHAR)")
    con.execute(f"""INSERT INTO _diff
        SELECT coalesce(n.file_path, o.file_path), o.procedure_date, n.procedure_date,
               CASE WHEN o.file_path IS NULL THEN 'added' WHEN n.file_path IS NULL THEN 'deleted' ELSE 'changed' END
        FROM (SELECT {", ".join(DIFF_COLUMNS)} FROM inventory
              WHERE nas_id = ? AND {where} AND {_in_window("procedure_date", window)}) o
        FULL OUTER JOIN {new_rows_sql(nas_id, where, DIFF_COLUMNS)} n ON o.file_path = n.file_path
        WHERE CASE WHEN o.file_path IS NULL THEN {_in_window("n.procedure_date", window)}
                   WHEN n.file_path IS NULL THEN o.file_path NOT IN (SELECT file_path FROM staging.walked
                                                                     WHERE {where})
                   ELSE {DIFFERS} END""", [nas_id])


def apply_diff(con, nas_id: str, where: str = "true", window: tuple[dt.date, dt.date] | None = None) -> None:
    """Rewrite the index rows ``_diff`` names (in the slice ``where``): the old row goes wherever its date, the
    new one comes in if its date is in the window."""
    con.execute(f"DELETE FROM inventory WHERE nas_id = ? AND {where} AND file_path IN (SELECT file_path FROM _diff)",
                [nas_id])
    cols = ", ".join(f'"{c}"' for c in INVENTORY_COLUMNS)
    con.execute(f"INSERT INTO inventory ({cols}) SELECT {cols} FROM {new_rows_sql(nas_id, where)} "
                f"WHERE file_path IN (SELECT file_path FROM _diff WHERE {_in_window('new_date', window)})")


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


def forget_returned(con, nas_id: str, split: Sequence[str]) -> None:
    """Files the walk found again (same path) are no longer deleted; their import history says the rest."""
    for where in split:
        con.execute("DELETE FROM deleted_files WHERE nas_id = ? AND (file_path IN (SELECT file_path FROM "
                    f"staging.walked WHERE {where}) OR file_path IN (SELECT file_path FROM staging.inventory "
                    f"WHERE {where}))", [nas_id])


def merge_inventory(staging: Staging, nas_id: str, start: dt.date, end: dt.date,
                    folders: Sequence[str] | None = None) -> dict[str, int]:
    """Replace the window [start, end) of the NAS's inventory (writing only the rows that differ), after
    refreshing its scan cache. Returns {status: files} of the walk's rows in the window.

    With ``folders`` (the walk saw only those, not their subfolders), only those folders' rows change: files
    gone from them are deleted, rows in folders not walked stay as they are.
    """
    window, split = (start, end), slices(staging, folders)
    with staging.attached_to_index(cache=True) as con:
        scan_cache.replace_rows(con, nas_id, split)  # first: a cache row is a fact about a file, true either way
        with in_transaction(con):
            for where in split:
                stage_diff(con, nas_id, where, window)
            # Files of the window that the walk no longer found anywhere: deleted on the NAS.
            record_deleted(con, """
                SELECT o.nas_id, o.file_path, o.change_token, o.procedure_date, o.status
                FROM inventory o JOIN _diff d ON d.file_path = o.file_path AND d.kind = 'deleted'
                WHERE o.nas_id = ?""", [nas_id])
            forget_returned(con, nas_id, split)
            if con.execute("SELECT count(*) FROM _diff").fetchall()[0][0]:
                for where in split:
                    apply_diff(con, nas_id, where, window)
            counts: dict[str, int] = {}
            for where in split:
                rows = new_rows_sql(nas_id, where, ["status", "procedure_date"])
                in_window = _in_window("procedure_date", window)
                for status, n in con.execute(f"SELECT status, count(*) FROM {rows} WHERE {in_window} "
                                             "GROUP BY status").fetchall():
                    counts[status] = counts.get(status, 0) + n
    return counts


def carry_over_links(staging: Staging, root: str | os.PathLike, folders: Sequence[str]) -> int:
    """After a walk of named folders: rows the cache has there that the walk did not report and whose path is
    still a symbolic link keep their last word. Whether a link to a folder is followed or is a loop depends
    on the order of a whole walk, so only a whole walk (the reconciliation) decides those. Returns how many."""
    with staging.attached_to_index(cache=True) as con:
        missing = [r[0] for scope in scopes(folders) for r in con.execute(
            f"SELECT file_path FROM sc.scan_cache WHERE nas_id = ? AND {scope} "
            "AND file_path NOT IN (SELECT file_path FROM staging.walked) "
            "AND file_path NOT IN (SELECT file_path FROM staging.inventory)", [staging.nas[0]]).fetchall()]
        links = [p for p in missing if os.path.islink(names.join(root, p))]
        for i in range(0, len(links), FOLDER_CHUNK):
            part = links[i:i + FOLDER_CHUNK]
            con.execute("INSERT INTO staging.inventory SELECT * FROM sc.scan_cache WHERE nas_id = ? AND file_path IN "
                        f"({', '.join('?' * len(part))})", [staging.nas[0], *part])
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
        con.execute("CREATE OR REPLACE TABLE unread AS SELECT * FROM _unread")
    finally:
        con.unregister("_unread")
    with staging.attached_to_index(cache=True) as con:
        con.execute("CREATE OR REPLACE TEMP TABLE _kept AS SELECT c.* FROM sc.scan_cache c "
                    "WHERE c.nas_id = ? AND EXISTS (SELECT 1 FROM staging.unread u "
                    "WHERE (u.scope = 'folder' AND c.folder = u.rel) "
                    "OR (u.scope = 'tree' AND (u.rel = '' OR c.file_path = u.rel OR c.folder = u.rel "
                    "OR starts_with(c.folder, u.rel || '/'))))", [staging.nas[0]])
        # One row per file: what the walk staged there gives way to the kept row.
        con.execute("DELETE FROM staging.inventory WHERE file_path IN (SELECT file_path FROM _kept)")
        return con.execute("INSERT INTO staging.inventory SELECT * FROM _kept").fetchall()[0][0]
