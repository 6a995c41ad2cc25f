"""The read-only SQL behind ``pacs search``, ``pacs status`` and ``pacs history``.

Every function takes an open connection (``store.session(path, read_only=True)``) and only reads; the
caller keeps the index open for as short a time as it can, since while it does no writer can get in.

Search runs in two steps, both sized by what is found rather than by the index:

1. ``find_patients``: the matching rows of ``patients`` (one row per NAS, partition day and patient;
   tens of thousands of rows for 10,000 patients), joined to their ``studies`` rows (same size), cut
   to ``limit`` patients. Names are compared after ``name_key``: lower case, accents stripped, a few
   letters without decomposition spelled out (ß, ł, ø, æ, œ, đ, ı). A query word matches when it is a
   substring of the key, so 'mull', 'MÜLLER', 'jurgen muller' all find 'Müller^Jürgen', in any order.
   DICOM's '^' and '=' (component and ideographic/phonetic groups) need no rewriting: a query word
   never contains them, so it can only match inside one name word.
2. ``file_counts``: for the studies found, how many of their files are in Orthanc (file_status
   imported/duplicate), exactly as the ``file_status`` view defines it. That needs the per-file rows of
   ``instances`` and ``import_history``, the two big tables: the query first collects the row ids of
   the studies' rows (reading only the study UID column), then fetches the few rows it needs by row id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence

import duckdb

# Letters strip_accents() leaves alone (they do not decompose into a base letter and a mark).
_SPELLED_OUT = [("ß", "ss"), ("ł", "l"), ("ø", "o"), ("æ", "ae"), ("œ", "oe"), ("đ", "d"), ("ı", "i")]
# German spelling without umlauts (Mueller for Müller): a query word using it also tries the base letter.
_UMLAUT_SPELLINGS = [("ae", "a"), ("oe", "o"), ("ue", "u")]
_WORD_SPLIT = re.compile(r"[\s^=,;]+")


def name_key_sql(expr: str) -> str:
    """SQL turning a name into its search key: lower case, no accents, special letters spelled out."""
    sql = f"strip_accents(lower({expr}))"
    for letter, spelled in _SPELLED_OUT:
        sql = f"replace({sql}, '{letter}', '{spelled}')"
    return sql


def query_words(text: str | None) -> list[str]:
    """The words of a name query; DICOM separators ('^', '=') count as spaces."""
    return [w for w in _WORD_SPLIT.split(text or "") if w]


def _word_variants(word: str) -> list[str]:
    """A word and its umlaut-free reading: 'mueller' also tries 'muller' (which the key of Müller holds)."""
    variants = [word]
    folded = word.lower()
    for spelled, base in _UMLAUT_SPELLINGS:
        folded = folded.replace(spelled, base)
    if folded != word.lower():
        variants.append(folded)
    return variants


@dataclasses.dataclass(frozen=True)
class SearchQuery:
    name: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    limit: int = 50

    def is_empty(self) -> bool:
        return not (query_words(self.name) or self.patient_id or self.modality or self.date_from or self.date_to)


# One row per study location (NAS, partition day, study) of the patients found.
_STUDY_COLUMNS = ["patient_id", "patient_name", "patient_birth_date", "patient_sex", "nas_id", "partition_date",
                  "study_instance_uid", "study_date", "date_source", "study_description", "accession_number",
                  "modalities", "series_count", "instance_count", "folder", "file_formats"]


def find_patients(con: duckdb.DuckDBPyConnection, q: SearchQuery) -> tuple[list[dict], int]:
    """The study locations of the first ``q.limit`` matching patients, and how many patients matched.

    Patients are ordered exact-ID match first, then by name and ID; a patient (one patient ID) matches
    when a patients row of theirs matches the name/ID and one of that row's studies passes the filters.
    """
    patient_where, study_where, params = [], [], {}
    for n, word in enumerate(query_words(q.name)):
        alternatives = []
        for v, variant in enumerate(_word_variants(word)):
            params[f"w{n}_{v}"] = variant
            alternatives.append(f"contains(k, {name_key_sql(f'$w{n}_{v}')})")
        patient_where.append("(" + " OR ".join(alternatives) + ")")
    if q.patient_id:
        params["pid"] = q.patient_id
        patient_where.append("starts_with(lower(patient_id), lower($pid))")
    if q.modality:
        params["modality"] = q.modality
        study_where.append("list_contains(string_split(upper(s.modalities), ','), upper(trim($modality)))")
    if q.date_from:
        params["date_from"] = q.date_from
        study_where.append("s.partition_date >= $date_from")
    if q.date_to:
        params["date_to"] = q.date_to
        study_where.append("s.partition_date <= $date_to")
    params["limit"] = q.limit
    params["exact_pid"] = (q.patient_id or "").lower()
    key = name_key_sql("patient_name") if "w0_0" in params else "NULL"
    sql = f"""
        WITH matched AS (
            SELECT nas_id, partition_date, patient_id, patient_name, patient_birth_date, patient_sex
            FROM (SELECT *, {key} AS k FROM patients)
            WHERE {" AND ".join(patient_where) or "true"}
        ), hits AS (
            SELECT m.patient_id, m.patient_name, m.patient_birth_date, m.patient_sex, s.nas_id, s.partition_date,
                   s.study_instance_uid, s.study_date, s.date_source, s.study_description, s.accession_number,
                   s.modalities, s.series_count, s.instance_count, s.folder, s.file_formats
            FROM matched m
            JOIN studies s ON s.nas_id = m.nas_id AND s.partition_date = m.partition_date
                          AND s.patient_id IS NOT DISTINCT FROM m.patient_id
            WHERE {" AND ".join(study_where) or "true"}
        ), chosen AS (
            SELECT patient_id, count(*) OVER () AS total
            FROM hits GROUP BY patient_id
            ORDER BY bool_or(lower(patient_id) = $exact_pid) DESC, min(lower(patient_name)), patient_id
            LIMIT $limit
        )
        SELECT {", ".join(f"h.{c}" for c in _STUDY_COLUMNS)}, c.total
        FROM hits h JOIN chosen c ON c.patient_id IS NOT DISTINCT FROM h.patient_id
        ORDER BY h.patient_id, h.partition_date DESC, h.study_instance_uid, h.nas_id"""
    rows = con.execute(sql, params).fetchall()
    total = rows[0][-1] if rows else 0
    return [dict(zip(_STUDY_COLUMNS, row[:-1])) for row in rows], total


def file_counts(con: duckdb.DuckDBPyConnection, study_uids: Sequence[str]) -> dict[tuple, tuple[int, int]]:
    """{(nas_id, partition_date, study UID): (files indexed, files in Orthanc)} for these studies.

    'In Orthanc' is file_status imported or duplicate: the file's current change token has an attempt
    that ended so (after one, the importer never tries that file again, so it is also the last attempt).
    """
    if not study_uids:
        return {}
    uids = sorted(set(study_uids))
    # Step 1: which rows (reading the study UID column only; an IN filter does not stop DuckDB from
    # decoding every other projected column of every row, so the wide columns wait for step 2).
    rows = con.execute("""
        SELECT 'i', rowid FROM instances WHERE study_instance_uid IN (SELECT unnest($uids::VARCHAR[]))
        UNION ALL
        SELECT 'h', rowid FROM import_history WHERE study_instance_uid IN (SELECT unnest($uids::VARCHAR[]))""",
                       {"uids": uids}).fetchall()
    instance_rows = [r for t, r in rows if t == "i"]
    attempt_rows = [r for t, r in rows if t == "h"]
    if not instance_rows:
        return {}
    # Step 2: those rows only.
    counted = con.execute("""
        WITH i AS (
            SELECT nas_id, partition_date, study_instance_uid, file_path, change_token
            FROM instances WHERE rowid IN (SELECT unnest($irows::BIGINT[]))
        ), h AS (
            SELECT DISTINCT nas_id, file_path, change_token
            FROM (SELECT nas_id, file_path, change_token, status FROM import_history
                  WHERE rowid IN (SELECT unnest($hrows::BIGINT[])))
            WHERE status IN ('imported', 'duplicate')
        )
        SELECT i.nas_id, i.partition_date, i.study_instance_uid, count(*), count(h.file_path)
        FROM i LEFT JOIN h ON h.nas_id = i.nas_id AND h.file_path = i.file_path AND h.change_token = i.change_token
        GROUP BY ALL""", {"irows": instance_rows, "hrows": attempt_rows or [-1]}).fetchall()
    return {(nas, day, uid): (files, in_orthanc) for nas, day, uid, files, in_orthanc in counted}


# -- status ---------------------------------------------------------------------------------------------

FILE_STATUSES = ("imported", "duplicate", "failed", "skipped", "pending")


def nas_status(con: duckdb.DuckDBPyConnection, nas_id: str | None, since: dt.datetime) -> dict[str, dict]:
    """Per NAS: files found, indexed, one count per file_status, and attempts finished since ``since``.

    ``since`` is naive UTC, like the ledger's timestamps. Returns {nas_id: {...}} for every NAS the
    index knows (files found, instances or attempts), optionally just ``nas_id``.
    """
    params = {"nas": nas_id, "since": since}
    where = "WHERE $nas IS NULL OR nas_id = $nas"
    out: dict[str, dict] = {}

    def row(nas: str) -> dict:
        return out.setdefault(nas, {"found": 0, "indexed": 0, **{s: 0 for s in FILE_STATUSES},
                                    "recent_attempts": 0, "recent_first": None, "last_attempt": None})

    for nas, n in con.execute(f"SELECT nas_id, count(*) FROM inventory {where} GROUP BY ALL", params).fetchall():
        row(nas)["found"] = n
    for nas, n in con.execute(f"SELECT nas_id, count(*) FROM instances {where} GROUP BY ALL", params).fetchall():
        row(nas)["indexed"] = n
    for nas, status, n in con.execute(
            f"SELECT nas_id, status, count(*) FROM file_status {where} GROUP BY ALL", params).fetchall():
        row(nas)[status] = row(nas).get(status, 0) + n
    for nas, n, first in con.execute(f"""
            SELECT nas_id, count(*), min(finished_at) FROM import_history
            WHERE finished_at >= $since AND ($nas IS NULL OR nas_id = $nas) GROUP BY ALL""", params).fetchall():
        row(nas).update(recent_attempts=n, recent_first=first)
    for nas, last in con.execute(
            f"SELECT nas_id, max(finished_at) FROM import_history {where} GROUP BY ALL", params).fetchall():
        row(nas)["last_attempt"] = last
    return out


# -- history --------------------------------------------------------------------------------------------

HISTORY_COLUMNS = ["attempt_id", "finished_at", "started_at", "nas_id", "status", "http_status", "attempts",
                   "retryable", "error_message", "file_path", "partition_date", "patient_id",
                   "study_instance_uid", "series_instance_uid", "sop_instance_uid", "orthanc_instance_id",
                   "change_token", "file_hash", "run_id"]


@dataclasses.dataclass(frozen=True)
class HistoryQuery:
    nas_id: str | None = None
    status: str | None = None
    finished_from: dt.datetime | None = None  # naive UTC, inclusive
    finished_before: dt.datetime | None = None  # naive UTC, exclusive
    patient_id: str | None = None
    study_uid: str | None = None
    page: int = 1
    page_size: int = 50


def history_page(con: duckdb.DuckDBPyConnection, q: HistoryQuery) -> tuple[list[dict], int]:
    """One page of the import ledger, newest attempt first, and how many attempts match in all."""
    where, params = [], {}
    if q.nas_id:
        where.append("nas_id = $nas")
        params["nas"] = q.nas_id
    if q.status:
        where.append("status = $status")
        params["status"] = q.status
    if q.finished_from:
        where.append("finished_at >= $from")
        params["from"] = q.finished_from
    if q.finished_before:
        where.append("finished_at < $before")
        params["before"] = q.finished_before
    if q.patient_id:
        where.append("starts_with(lower(patient_id), lower($pid))")
        params["pid"] = q.patient_id
    if q.study_uid:
        where.append("study_instance_uid = $study")
        params["study"] = q.study_uid
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = con.execute(f"SELECT count(*) FROM import_history {clause}", params).fetchall()[0][0]
    rows = con.execute(
        f"SELECT {', '.join(HISTORY_COLUMNS)} FROM import_history {clause} "
        "ORDER BY attempt_id DESC LIMIT $size OFFSET $offset",
        {**params, "size": q.page_size, "offset": (q.page - 1) * q.page_size}).fetchall()
    return [dict(zip(HISTORY_COLUMNS, r)) for r in rows], total
