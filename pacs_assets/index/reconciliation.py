"""The reconciliation's reads and merge: a whole walk against the index, touching only what differs.

``reconcile_inventory`` compares a complete walk (in staging, and the scan cache for the unchanged files) with
the NAS's inventory, and in one transaction rewrites exactly the rows of the files that were added, changed
(token, date, status) or deleted; on an unchanged NAS it writes nothing. ``dates_to_rebuild`` and
``dates_to_upload`` find the dates whose hierarchy lags the inventory, and whose instances still wait for
an upload: what the catch-up after a reconciliation materializes, and nothing else.

The same concept on three layers: the Dagster assets and job (defs/reconciliation.py), the work
(pipeline/reconciliation.py), the SQL (index/reconciliation.py).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict

from pacs_assets.index import scan_cache
from pacs_assets.index.connection import in_transaction, session
from pacs_assets.index.inventory import apply_diff, record_deleted, stage_diff
from pacs_assets.index.staging import Staging
from pacs_assets.index.walk_cache import slices


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

    A file that moved to another date counts as changed on both. Only the rows that differ are rewritten; the
    scan cache is refreshed first (its own transaction: index/scan_cache.py).
    """
    split = slices(staging, None)
    with staging.attached_to_index(cache=True) as con:
        scan_cache.replace_rows(con, nas_id, split)
        with in_transaction(con):
            for where in split:
                stage_diff(con, nas_id, where)
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
                record_deleted(con, """
                    SELECT o.nas_id, o.file_path, o.change_token, o.procedure_date, o.status
                    FROM inventory o JOIN _diff d ON d.file_path = o.file_path AND d.kind = 'deleted'
                    WHERE o.nas_id = ?""", [nas_id])
                # Files that came back: no longer deleted (their import history says the rest).
                con.execute("DELETE FROM deleted_files WHERE nas_id = ? AND file_path IN "
                            "(SELECT file_path FROM _diff WHERE kind = 'added')", [nas_id])
                for where in split:
                    apply_diff(con, nas_id, where)
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
