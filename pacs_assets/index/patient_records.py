"""The index's side of patient identity: the person records behind patient IDs, the studies that carry more
than one person, and the files the upload holds back (``identity_holds``, written only by the upload).

Everything here is sized by what is asked for (the patient IDs and study UIDs of a run's staged files), or by
the small ``patients`` and ``studies`` tables, never by the inventory.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence

import duckdb

from pacs_assets.index.connection import transaction
from pacs_assets.index.staging import Staging

# One person record: (nas_id, patient_id, name, birth date, sex, studies, files, first date, last date).
RECORD_SQL = """
    SELECT nas_id, patient_id, patient_name, patient_birth_date, patient_sex, sum(study_count)::BIGINT,
           sum(instance_count)::BIGINT, min(partition_date), max(partition_date)
    FROM patients WHERE {where}
    GROUP BY nas_id, patient_id, patient_name, patient_birth_date, patient_sex
    ORDER BY nas_id, patient_id, patient_name, patient_birth_date, patient_sex"""


def staged_people(staging: Staging) -> tuple[list[tuple], dict[str, list[str]]]:
    """The distinct (patient_id, name, birth date, sex) of the staged files, and their study and series UIDs
    ({'study': [...], 'series': [...]})."""
    people = staging.con.execute("""
        SELECT DISTINCT patient_id, patient_name, patient_birth_date, patient_sex FROM inventory""").fetchall()
    uids = {level: [r[0] for r in staging.con.execute(
        f"SELECT DISTINCT {column} FROM inventory WHERE {column} IS NOT NULL").fetchall()]
        for level, (_, column) in UID_LEVELS.items()}
    return people, uids


def records_for_ids(con: duckdb.DuckDBPyConnection, patient_ids: Iterable[str]) -> list[tuple]:
    """Every person record, on any NAS, of these patient IDs (see ``RECORD_SQL``). '' or None asks for the
    files without a PatientID too (Orthanc files them all under one empty ID)."""
    wanted = set(patient_ids)
    ids = sorted(i for i in wanted if i)
    empty = bool(wanted & {"", None})
    if not ids and not empty:
        return []
    where = "patient_id IN (SELECT unnest($ids::VARCHAR[]))" + (" OR coalesce(patient_id, '') = ''" if empty else "")
    return con.execute(RECORD_SQL.format(where=where), {"ids": ids}).fetchall()


def shared_ids(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every person record of the patient IDs that more than one record shares (the candidates for a
    collision or a variant), over the whole index: one pass over the small ``patients`` table."""
    return con.execute(RECORD_SQL.format(where="""patient_id IN (
        SELECT patient_id FROM patients GROUP BY patient_id
        HAVING count(DISTINCT (nas_id, patient_name, patient_birth_date, patient_sex)) > 1)""")).fetchall()


UID_LEVELS = {"study": ("studies", "study_instance_uid"), "series": ("series", "series_instance_uid")}


def uids_with_several_people(con: duckdb.DuckDBPyConnection, level: str,
                             uids: Sequence[str] | None = None) -> list[tuple]:
    """(UID, nas_id, patient_id, name, birth date, sex) of the studies (``level`` 'study') or series ('series')
    whose UID carries more than one person record; only of ``uids`` when given. Both tables hold one row per
    UID and person, so this reads them, not the inventory."""
    table, column = UID_LEVELS[level]
    only = f"AND {column} IN (SELECT unnest($uids::VARCHAR[]))" if uids is not None else ""
    return con.execute(f"""
        WITH several AS (
            SELECT {column} FROM {table} WHERE true {only} GROUP BY {column}
            HAVING count(DISTINCT (patient_id, patient_name, patient_birth_date, patient_sex)) > 1)
        SELECT DISTINCT {column}, nas_id, patient_id, patient_name, patient_birth_date, patient_sex
        FROM {table} WHERE {column} IN (SELECT {column} FROM several)
        ORDER BY ALL""", {"uids": list(uids)} if uids is not None else {}).fetchall()


def replace_holds(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date,
                  rows: Sequence[dict]) -> None:
    """The window's held files are exactly ``rows`` (nas_id, file_path, change_token, partition_date,
    collision_id, kind, reason, person_key): one transaction. Files no longer held lose their row."""
    import pandas as pd

    with transaction(index_path) as con:
        con.execute("DELETE FROM identity_holds WHERE nas_id = ? AND partition_date >= ? AND partition_date < ?",
                    [nas_id, start, end])
        if rows:
            frame = pd.DataFrame(rows, columns=["nas_id", "file_path", "change_token", "partition_date",
                                                "collision_id", "kind", "reason", "person_key"])
            frame["partition_date"] = frame["partition_date"].astype("string")
            con.register("_holds", frame)
            try:
                # held_at in naive UTC, like the decisions' made_at it is compared with (index/reconciliation.py)
                now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                con.execute("INSERT INTO identity_holds SELECT nas_id, file_path, change_token, "
                            "partition_date::DATE, collision_id, kind, reason, ?, person_key FROM _holds", [now])
            finally:
                con.unregister("_holds")


def holds_in_window(con: duckdb.DuckDBPyConnection, nas_id: str, start: dt.date, end: dt.date) -> bool:
    """Whether the window has holds to replace (most uploads have none: then nothing is written)."""
    return bool(con.execute("SELECT 1 FROM identity_holds WHERE nas_id = ? AND partition_date >= ? "
                            "AND partition_date < ? LIMIT 1", [nas_id, start, end]).fetchall())


# The holds in force: the file_status view's rule for 'held' (the hold's file version is the inventory's and its
# last attempt, if any, failed), read from the holds outward so that only the held files' attempts are read,
# not the whole ledger the view ranks.
CURRENT_HOLDS = """
    WITH held AS (
        SELECT h.* FROM identity_holds h
        JOIN inventory f ON f.nas_id = h.nas_id AND f.file_path = h.file_path AND f.change_token = h.change_token
        WHERE f.status = 'ok' AND ($nas IS NULL OR h.nas_id = $nas)),
    last AS (
        SELECT a.nas_id, a.file_path, a.change_token, arg_max(a.status, a.attempt_id) AS status
        FROM import_history a SEMI JOIN held USING (nas_id, file_path, change_token)
        GROUP BY ALL)
    SELECT held.* FROM held LEFT JOIN last USING (nas_id, file_path, change_token)
    WHERE coalesce(last.status, 'failed') = 'failed'"""


def held_counts(con: duckdb.DuckDBPyConnection, nas_id: str | None = None) -> dict[str, int]:
    """{kind: files} of the files held now (a hold whose file was since sent or changed does not count)."""
    return dict(con.execute(f"SELECT kind, count(*) FROM ({CURRENT_HOLDS}) GROUP BY kind ORDER BY kind",
                            {"nas": nas_id}).fetchall())


def held_by_person(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """{person record key: files held now}."""
    return dict(con.execute(f"SELECT person_key, count(*) FROM ({CURRENT_HOLDS}) GROUP BY person_key",
                            {"nas": None}).fetchall())
