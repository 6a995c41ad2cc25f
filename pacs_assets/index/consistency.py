"""The SQL behind the asset checks: consistency of inventory, index, ledger and NAS devices."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator

from pacs_assets.index.connection import session


def unaccounted_files(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    """In the window [start, end): inventoried DICOM files missing from the index, and skipped/failed
    files without a reason. Only the run's own window: another run may be between its walk and its index."""
    window = "nas_id = $nas AND procedure_date >= $start AND procedure_date < $end"
    params = {"nas": nas_id, "start": start, "end": end}
    with session(index_path, read_only=True) as con:
        not_indexed = con.execute(f"""
            SELECT count(*) FROM inventory f WHERE {window} AND f.status = 'ok'
              AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.nas_id = f.nas_id AND i.file_path = f.file_path)""",
                                  params).fetchall()[0][0]
        no_reason = con.execute(f"SELECT count(*) FROM inventory WHERE {window} AND status <> 'ok' AND reason IS NULL",
                                params).fetchall()[0][0]
        files = con.execute(f"SELECT count(*) FROM inventory WHERE {window}", params).fetchall()[0][0]
    return {"files": files, "dicom_not_indexed": not_indexed, "without_reason": no_reason}


# The ledger's files of a NAS in Orthanc (imported or duplicate) that are the NAS's current files.
STORED = """FROM instances i
    JOIN import_history h ON h.nas_id = i.nas_id AND h.file_path = i.file_path AND h.change_token = i.change_token
                         AND h.status IN ('imported', 'duplicate')
    WHERE i.nas_id = $nas AND h.orthanc_instance_id IS NOT NULL"""


def _stored(index_path: str | os.PathLike, nas_id: str, start: dt.date | None, end: dt.date | None,
            select: str, order: str = "") -> list[tuple]:
    window = "AND i.partition_date >= $start AND i.partition_date < $end" if start is not None else ""
    with session(index_path, read_only=True) as con:
        return con.execute(f"SELECT {select} {STORED} {window} {order}",
                           {"nas": nas_id, **({"start": start, "end": end} if start is not None else {})}).fetchall()


def stored_instances(index_path: str | os.PathLike, nas_id: str, start: dt.date | None = None,
                     end: dt.date | None = None, batch: int = 100) -> Iterator[list[tuple[str, str]]]:
    """(SOP Instance UID, Orthanc ID) of every file the ledger says is in Orthanc (imported or duplicate), in
    the procedure dates [start, end) or all of them, in batches (one ``/tools/find`` each: its cost in
    Orthanc 1.10.1 grows faster than the list, so batches stay ~100)."""
    rows = _stored(index_path, nas_id, start, end, "DISTINCT i.sop_instance_uid, h.orthanc_instance_id", "ORDER BY 1")
    for i in range(0, len(rows), batch):
        yield rows[i:i + batch]


def stored_ids(index_path: str | os.PathLike, nas_id: str, start: dt.date | None = None,
               end: dt.date | None = None) -> list[str]:
    """The Orthanc IDs of ``stored_instances`` alone, in no order: all an exact list of Orthanc's needs (an ID
    names one SOP Instance UID, so there are as many)."""
    return [r[0] for r in _stored(index_path, nas_id, start, end, "DISTINCT h.orthanc_instance_id")]


def stored_count(index_path: str | os.PathLike, nas_id: str, start: dt.date | None = None,
                 end: dt.date | None = None) -> int:
    """How many ``stored_instances``, read in DuckDB alone."""
    return _stored(index_path, nas_id, start, end, "count(DISTINCT h.orthanc_instance_id)")[0][0]


def sop_conflicts(index_path: str | os.PathLike) -> list[tuple[str, str, int]]:
    """SOP Instance UIDs held by more than one NAS with different content (bytes, patient or study).

    Returns (nas_ids, what differs, count) groups — never the UIDs or patient data themselves.
    """
    with session(index_path, read_only=True) as con:
        # One NAS alone cannot conflict with another: skip the whole-table work (its cost grew with the NAS).
        if not con.execute("SELECT 1 FROM instances WHERE nas_id <> (SELECT nas_id FROM instances LIMIT 1) "
                           "LIMIT 1").fetchall():
            return []
        return con.execute("""
            WITH shared AS (  -- UIDs on more than one NAS: the only candidates, found before any ledger join
                SELECT sop_instance_uid FROM instances GROUP BY sop_instance_uid HAVING count(DISTINCT nas_id) > 1),
            per_nas AS (
                SELECT i.sop_instance_uid, i.nas_id, any_value(i.patient_id) AS patient_id,
                       any_value(i.study_instance_uid) AS study, any_value(h.file_hash) AS file_hash
                FROM instances i
                LEFT JOIN import_history h ON h.nas_id = i.nas_id AND h.file_path = i.file_path
                     AND h.change_token = i.change_token AND h.file_hash IS NOT NULL
                WHERE i.sop_instance_uid IN (SELECT sop_instance_uid FROM shared)
                GROUP BY i.sop_instance_uid, i.nas_id),
            conflicts AS (
                SELECT sop_instance_uid, string_agg(DISTINCT nas_id, ',' ORDER BY nas_id) AS nas_ids,
                       CASE WHEN count(DISTINCT coalesce(patient_id, '')) > 1 THEN 'patient'
                            WHEN count(DISTINCT study) > 1 THEN 'study'
                            ELSE 'file content' END AS differs
                FROM per_nas GROUP BY sop_instance_uid
                HAVING count(DISTINCT nas_id) > 1
                   AND (count(DISTINCT coalesce(patient_id, '')) > 1 OR count(DISTINCT study) > 1
                        OR count(DISTINCT file_hash) > 1))
            SELECT nas_ids, differs, count(*) FROM conflicts GROUP BY ALL ORDER BY ALL""").fetchall()


def uid_conflicts(index_path: str | os.PathLike, nas_id: str) -> dict:
    """Files of a NAS sharing a SOP Instance UID with different content: within the NAS, and with each other
    NAS; and how many of its files ended ``uid_conflict`` (Orthanc kept another file in their place).

    Content is the hash of the bytes last sent for a file's current version (the ledger's ``file_hash``), so
    only files that reached the upload count. Returns counts only, never UIDs or paths:
    ``{"uid_conflict_files", "groups_within_nas", "files_in_groups_within_nas", "across": {other_nas: groups}}``.
    """
    sent = """
        WITH sent AS (  -- per file of any NAS sharing a UID with this NAS: the hash of the bytes last sent
            SELECT i.nas_id, i.sop_instance_uid, h.file_hash
            FROM instances i
            JOIN import_history h ON h.nas_id = i.nas_id AND h.file_path = i.file_path
                 AND h.change_token = i.change_token AND h.file_hash IS NOT NULL
            WHERE i.sop_instance_uid IN (SELECT sop_instance_uid FROM instances WHERE nas_id = $nas)
            QUALIFY row_number() OVER (PARTITION BY i.nas_id, i.file_path ORDER BY h.attempt_id DESC) = 1)"""
    params = {"nas": nas_id}
    with session(index_path, read_only=True) as con:
        groups, files = con.execute(f"""{sent}
            SELECT count(*), coalesce(sum(n), 0) FROM (
                SELECT count(*) AS n FROM sent WHERE nas_id = $nas
                GROUP BY sop_instance_uid HAVING count(DISTINCT file_hash) > 1)""", params).fetchall()[0]
        across = con.execute(f"""{sent}
            SELECT other, count(*) FROM (
                SELECT o.nas_id AS other, o.sop_instance_uid FROM sent m
                JOIN sent o ON o.sop_instance_uid = m.sop_instance_uid AND o.nas_id <> m.nas_id
                WHERE m.nas_id = $nas GROUP BY ALL HAVING bool_or(o.file_hash <> m.file_hash))
            GROUP BY other ORDER BY other""", params).fetchall()
        conflicted = con.execute("SELECT count(*) FROM file_status WHERE nas_id = $nas AND status = 'uid_conflict'",
                                 params).fetchall()[0][0]
    return {"uid_conflict_files": conflicted, "groups_within_nas": groups, "files_in_groups_within_nas": int(files),
            "across": dict(across)}


def stored_files_of_format(index_path: str | os.PathLike, nas_id: str, file_format: str, transfer_syntax_uid: str,
                           limit: int) -> list[tuple[str, str]]:
    """(file_path, orthanc_instance_id) of the NAS's files in Orthanc (imported or duplicate) of one file format
    and transfer syntax, as the inventory recorded them; a spread sample of ``limit`` files unless limit=0.
    The format is the caller's (a kind's check names its own), never this module's."""
    with session(index_path, read_only=True) as con:
        return con.execute(f"""
            SELECT s.file_path, s.orthanc_instance_id FROM file_status s
            JOIN inventory f USING (nas_id, file_path)
            WHERE s.nas_id = ? AND s.status IN ('imported', 'duplicate') AND f.file_format = ?
              AND f.transfer_syntax_uid = ?
            ORDER BY hash(s.file_path) {'LIMIT ' + str(int(limit)) if limit else ''}""",
                           [nas_id, file_format, transfer_syntax_uid]).fetchall()
