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
from collections import defaultdict

from pacs_assets.index import scan_cache
from pacs_assets.index.connection import STREAMING_MEMORY_LIMIT, Index, in_transaction, opened
from pacs_assets.index.inventory import DIFF_COLUMNS, DIFFERS, apply_diff, record_deleted, stage_diff
from pacs_assets.index.staging import Staging
from pacs_assets.index.walk_cache import Steady, moved_rows, slices


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
    scan cache is refreshed first (its own transaction: index/scan_cache.py). A part of the walk in which
    nothing differs is only read, so an unchanged NAS writes nothing, to the cache or to the index.
    """
    steady = staging.released_with if staging.walked_is_cache is not None else None
    if isinstance(steady, Steady) and not steady.staged:
        # The usual night: proved unchanged without opening the staging file again (released by the walk: its
        # rows are not read back); the few re-dated rows go along as a registered table.
        with staging.attached_to_index(cache=True, staging=False, memory_limit=STREAMING_MEMORY_LIMIT) as con:
            con.execute(f"CREATE TEMP TABLE _redated AS {moved_rows(con, steady.moved)}")
            if unchanged(con, staging, nas_id, redated="_redated", staged=0):
                return {}
    split = slices(staging, None)
    with staging.attached_to_index(cache=True) as con:
        if unchanged(con, staging, nas_id):
            return {}
        stale, dirty = differing_parts(con, nas_id, split)
        if stale:
            scan_cache.replace_rows(con, nas_id, stale)
        if not dirty:
            return {}
        with in_transaction(con):
            for where in dirty:
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
                for where in dirty:
                    apply_diff(con, nas_id, where)
    return dict(changes)


def unchanged(con, staging: Staging, nas_id: str, redated: str = "staging.redated", staged: int | None = None) -> bool:
    """The steady state, proved without a join: the walk staged nothing, found exactly the cache's files with
    their tokens (``Staging.walked_is_cache``), the cache is as it was then (its record), and the index holds
    the cache's rows, re-dated (``redated``: that table): the same count and the same XOR of row hashes over
    DIFF_COLUMNS (the checksum the cache itself is kept by). Anything else takes the way of ``differing_parts``.
    ``staged``: the rows the walk staged, if the caller counted them (else read from the attached staging)."""
    if staging.walked_is_cache is None or staging.walked_is_cache != scan_cache.record(con, nas_id):
        return False
    if staged is None:
        staged = con.execute("SELECT count(*) FROM staging.inventory").fetchall()[0][0]
    if staged:
        return False
    row = ", ".join(DIFF_COLUMNS)
    index = con.execute(f"SELECT count(*), coalesce(bit_xor(hash({row})), 0) FROM inventory WHERE nas_id = ?",
                        [nas_id]).fetchall()[0]
    cached = con.execute(f"""
        SELECT count(*), coalesce(bit_xor(hash({row})), 0) FROM (
            SELECT c.file_path, c.change_token, coalesce(r.procedure_date, c.procedure_date) AS procedure_date,
                   coalesce(r.date_source, c.date_source) AS date_source, c.status, c.reason
            FROM sc.scan_cache c LEFT JOIN {redated} r USING (file_path) WHERE c.nas_id = ?)""",
                         [nas_id]).fetchall()[0]
    return index == cached


def differing_parts(con, nas_id: str, split: list[str]) -> tuple[list[str], list[str]]:
    """The parts of a whole walk (conditions of ``split``) whose scan cache rows must be replaced (a row not
    walked any more, or a file the walk staged), and those whose index rows may differ from the walk's
    (``stage_diff`` may find something there): one read of the walk, the cache and the index a part.

    A walked file's new row is its cached row with its token (re-dated where ``redated`` says). A part differs
    where such a row has no index row or another one (DIFF_COLUMNS), where an index row has no such row, or
    where the walk staged rows (files it parsed, rows kept). Read in the session that merges, so it sees the
    cache and the index the merge sees."""
    staged = con.execute("SELECT count(*) FROM staging.inventory").fetchall()[0][0]
    stale, dirty = [], []
    for where in split:
        cached, differs = con.execute(f"""
            WITH n AS (
                SELECT coalesce(w.file_path, c.file_path) AS file_path, w.file_path IS NULL AS unwalked,
                       c.file_path IS NOT NULL AS cached, coalesce(w.change_token = c.change_token, false) AS hit,
                       c.change_token, coalesce(r.procedure_date, c.procedure_date) AS procedure_date,
                       coalesce(r.date_source, c.date_source) AS date_source, c.status, c.reason
                FROM (SELECT file_path, change_token FROM staging.walked WHERE {where}) w
                FULL JOIN (SELECT {", ".join(DIFF_COLUMNS)} FROM sc.scan_cache WHERE nas_id = $nas AND {where}) c
                  ON c.file_path = w.file_path
                LEFT JOIN staging.redated r ON r.file_path = c.file_path)
            SELECT count(*) FILTER (WHERE n.unwalked AND n.cached),
                   count(*) FILTER (WHERE CASE WHEN n.hit THEN o.file_path IS NULL OR {DIFFERS}
                                               ELSE o.file_path IS NOT NULL END)
            FROM n FULL JOIN (SELECT {", ".join(DIFF_COLUMNS)} FROM inventory WHERE nas_id = $nas AND {where}) o
              ON o.file_path = n.file_path""", {"nas": nas_id}).fetchall()[0]
        mine = staged and con.execute(f"SELECT EXISTS (SELECT 1 FROM staging.inventory WHERE {where})"
                                      ).fetchall()[0][0]
        if cached or mine:
            stale.append(where)
        if differs or mine:
            dirty.append(where)
    return stale, dirty


def dates_to_rebuild(index: Index, nas_id: str) -> list[dt.date]:
    """Dates whose ``instances`` differ from the inventory's DICOM files (path, change token, date). The same rows
    on both sides (count and XOR of row hashes, two reads: the usual night) need no join."""
    with opened(index) as con:
        sides = [con.execute(f"SELECT count(*), coalesce(bit_xor(hash(file_path, change_token, {day})), 0) "
                             f"FROM {table} WHERE nas_id = ? {extra}", [nas_id]).fetchall()[0]
                 for table, day, extra in (("instances", "partition_date", ""),
                                           ("inventory", "procedure_date", "AND status = 'ok'"))]
        if sides[0] == sides[1]:
            return []
        return [r[0] for r in con.execute("""
            SELECT DISTINCT coalesce(i.partition_date, f.procedure_date) FROM
                (SELECT partition_date, file_path, change_token FROM instances WHERE nas_id = $nas) i
            FULL OUTER JOIN
                (SELECT procedure_date, file_path, change_token FROM inventory WHERE nas_id = $nas AND status = 'ok') f
            ON i.file_path = f.file_path AND i.change_token = f.change_token AND i.partition_date = f.procedure_date
            WHERE i.file_path IS NULL OR f.file_path IS NULL ORDER BY 1""", {"nas": nas_id}).fetchall()]


def dates_to_upload(index: Index, nas_id: str, decided_since: dt.datetime | None = None) -> list[dt.date]:
    """Dates with indexed instances not yet in Orthanc (the same rule as ledger.stage_pending_uploads), leaving
    out files the identity guard holds unless a decision was made since they were held (``decided_since``:
    the latest decision's time): an undecided collision does not make its dates run again every night."""
    with opened(index) as con:
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
