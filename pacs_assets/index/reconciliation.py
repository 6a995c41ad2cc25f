"""The reconciliation's reads and merge: a whole walk against the index, touching only what differs.

``reconcile_inventory`` compares a complete walk (in staging) with the NAS's inventory, and in one
transaction replaces the inventory of exactly the procedure dates whose files were added, changed (token,
date, status) or deleted; on an unchanged NAS it writes nothing. ``dates_to_rebuild`` and
``dates_to_upload`` find the dates whose hierarchy lags the inventory, and whose instances still wait for
an upload: what the catch-up after a reconciliation materializes, and nothing else.

The same concept on three layers: the Dagster assets and job (defs/reconciliation.py), the work
(pipeline/reconciliation.py), the SQL (index/reconciliation.py).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict

from pacs_assets.index.connection import session
from pacs_assets.index.inventory import record_deleted
from pacs_assets.index.staging import Staging

# What makes a file's row differ between a walk and the index (the token covers the content).
_DIFFERS = ("o.change_token IS DISTINCT FROM n.change_token OR o.procedure_date IS DISTINCT FROM n.procedure_date "
            "OR o.date_source IS DISTINCT FROM n.date_source OR o.status IS DISTINCT FROM n.status "
            "OR o.reason IS DISTINCT FROM n.reason")

_DIFF = f"""
    SELECT coalesce(n.file_path, o.file_path) AS file_path, o.procedure_date AS old_date, n.procedure_date AS new_date,
           CASE WHEN o.file_path IS NULL THEN 'added' WHEN n.file_path IS NULL THEN 'deleted' ELSE 'changed' END AS kind
    FROM (SELECT * FROM {{table}} WHERE nas_id = ?) o FULL OUTER JOIN staging.inventory n ON o.file_path = n.file_path
    WHERE o.file_path IS NULL OR n.file_path IS NULL OR {_DIFFERS}"""


def date_ranges(dates) -> list[tuple[dt.date, dt.date]]:
    """Sorted dates as contiguous [start, end) ranges."""
    out: list[list[dt.date]] = []
    for day in sorted(set(dates)):
        if out and out[-1][1] == day:
            out[-1][1] = day + dt.timedelta(days=1)
        else:
            out.append([day, day + dt.timedelta(days=1)])
    return [(a, b) for a, b in out]


def reconcile_inventory(staging: Staging, nas_id: str) -> dict[dt.date, dict[str, int]]:
    """Merge a complete walk: {procedure date: {'added'|'changed'|'deleted': files}} for the dates that changed.

    A file that moved to another date counts as changed on both. Rows of unchanged dates are not rewritten.
    """
    with staging.attached_to_index(atomic=True) as con:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _diff AS {_DIFF.format(table='inventory')}", [nas_id])
        rows = con.execute("""
            SELECT d, kind, count(*) FROM (
                SELECT old_date AS d, kind FROM _diff WHERE old_date IS NOT NULL
                UNION ALL
                SELECT new_date, kind FROM _diff
                WHERE new_date IS NOT NULL AND (old_date IS NULL OR new_date <> old_date))
            GROUP BY ALL""").fetchall()
        changes: dict[dt.date, dict[str, int]] = defaultdict(dict)
        for day, kind, n in rows:
            changes[day][kind] = n
        if changes:
            con.execute("CREATE OR REPLACE TEMP TABLE _dates AS SELECT DISTINCT d FROM (SELECT old_date AS d "
                        "FROM _diff "
                        "UNION SELECT new_date FROM _diff) WHERE d IS NOT NULL")
            record_deleted(con, """
                SELECT o.nas_id, o.file_path, o.change_token, o.procedure_date, o.status
                FROM inventory o JOIN _diff d ON d.file_path = o.file_path AND d.kind = 'deleted'
                WHERE o.nas_id = ?""", [nas_id])
            # Files that came back: no longer deleted (their import history says the rest).
            con.execute("DELETE FROM deleted_files WHERE nas_id = ? AND file_path IN "
                        "(SELECT file_path FROM _diff WHERE kind = 'added')", [nas_id])
            con.execute("DELETE FROM inventory WHERE nas_id = ? AND procedure_date IN (SELECT d FROM _dates)", [nas_id])
            con.execute("INSERT INTO inventory SELECT * FROM staging.inventory WHERE procedure_date IN (SELECT "
                        "d FROM _dates)")
        # The scan cache becomes what the walk saw, rewriting only the rows that differ.
        con.execute("CREATE OR REPLACE TEMP TABLE _stale AS SELECT file_path FROM "
                    f"({_DIFF.format(table='scan_cache')})",
                    [nas_id])
        if con.execute("SELECT count(*) FROM _stale").fetchall()[0][0]:
            con.execute("DELETE FROM scan_cache WHERE nas_id = ? AND file_path IN (SELECT file_path FROM _stale)",
                        [nas_id])
            con.execute("INSERT INTO scan_cache SELECT * FROM staging.inventory "
                        "WHERE file_path IN (SELECT file_path FROM _stale)")
    return dict(changes)


def dates_to_rebuild(index_path: str | os.PathLike, nas_id: str) -> list[dt.date]:
    """Dates whose ``instances`` differ from the inventory's DICOM files (path, change token, date)."""
    with session(index_path) as con:
        return [r[0] for r in con.execute("""
            SELECT DISTINCT coalesce(i.partition_date, f.procedure_date) FROM
                (SELECT partition_date, file_path, change_token FROM instances WHERE nas_id = $nas) i
            FULL OUTER JOIN
                (SELECT procedure_date, file_path, change_token FROM inventory WHERE nas_id = $nas AND status = 'ok') f
            ON i.file_path = f.file_path AND i.change_token = f.change_token AND i.partition_date = f.procedure_date
            WHERE i.file_path IS NULL OR f.file_path IS NULL ORDER BY 1""", {"nas": nas_id}).fetchall()]


def dates_to_upload(index_path: str | os.PathLike, nas_id: str,
                    decided_since: dt.datetime | None = None) -> list[dt.date]:
    """Dates with indexed instances not yet in Orthanc (the same rule as ledger.stage_pending_uploads), leaving
    out files the identity guard holds unless a decision was made since they were held (``decided_since``:
    the latest decision's time): an undecided collision does not make its dates run again every night."""
    with session(index_path) as con:
        return [r[0] for r in con.execute("""
            SELECT DISTINCT i.partition_date FROM instances i
            WHERE i.nas_id = $nas AND NOT EXISTS (
                SELECT 1 FROM import_history h
                WHERE h.nas_id = i.nas_id AND h.file_path = i.file_path AND h.change_token = i.change_token
                  AND (h.status IN ('imported', 'duplicate') OR NOT h.retryable))
              AND NOT EXISTS (
                SELECT 1 FROM identity_holds d
                WHERE d.nas_id = i.nas_id AND d.file_path = i.file_path AND d.change_token = i.change_token
                  AND ($since IS NULL OR d.held_at >= $since))
            ORDER BY 1""", {"nas": nas_id, "since": decided_since}).fetchall()]
