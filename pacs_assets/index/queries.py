"""The read-only SQL behind ``pacs search``, ``pacs status`` and ``pacs history``.

Every function takes an open connection (``connection.session(path, read_only=True)``) and only reads; the
caller keeps the index open for as short a time as it can, since while it does no writer can get in.

Search runs in steps sized by what is found, not by the index:

1. ``find_patients``: one scan of ``patients`` (one row per NAS, partition day and patient: tens of
   thousands of rows for 10,000 patients) picks the first ``limit`` patient IDs, then one scan of
   ``studies`` (as small) fetches their studies. Names are compared after ``name_key_sql``: lower
   case, accents stripped, letters that do not decompose spelled out (ß, ł, ø, æ, œ, đ, ı). A query
   word matches when it is a substring of the key, so 'mull', 'MÜLLER', 'jurgen muller' (any order)
   and 'mueller' all find 'Müller^Jürgen'. DICOM's '^' and '=' (name components; ideographic and
   phonetic groups) need no rewriting: a query word never contains them, so it matches inside one
   name word. The key is stored (``patients.name_key``, written with the index).
2. Their studies come with how many of their files are in Orthanc (file_status imported or duplicate),
   from ``study_uploads.files_in_orthanc``, which each import keeps current: a search never scans the big
   ``instances`` and ``import_history`` tables. (One query fewer than a separate count: each statement costs
   a `pacs search` process ~8 ms of CPU on its first run.)
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # `pacs search` is a new process each time: it imports the engine only (connection.py)
    import duckdb

# Letters strip_accents() leaves alone (they do not decompose into a base letter and a mark).
_SPELLED_OUT = [("ß", "ss"), ("ł", "l"), ("ø", "o"), ("æ", "ae"), ("œ", "oe"), ("đ", "d"), ("ı", "i")]
# German spelling without umlauts (Mueller for Müller): a query word using it also tries the base letter.
_UMLAUT_SPELLINGS = [("ae", "a"), ("oe", "o"), ("ue", "u")]
_WORD_SPLIT = re.compile(r"[\s^=,;]+")


def name_key_sql(expr: str) -> str:
    """SQL turning a name into its search key: lower case, no accents, special letters spelled out.

    An ASCII name only needs lower(); the rest (several times dearer) runs for the others only.
    """
    full = f"strip_accents(lower({expr}))"
    for letter, spelled in _SPELLED_OUT:
        full = f"replace({full}, '{letter}', '{spelled}')"
    return f"CASE WHEN strlen({expr}) = length({expr}) THEN lower({expr}) ELSE {full} END"


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


# A NamedTuple, not a dataclass: `pacs search` then never imports dataclasses (and inspect), ~9 ms of its start.
class SearchQuery(NamedTuple):
    name: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    limit: int = 50

    def is_empty(self) -> bool:
        return not (query_words(self.name) or self.patient_id or self.modality or self.date_from or self.date_to)


_STUDY_COLUMNS = ["nas_id", "partition_date", "study_instance_uid", "patient_id", "study_date", "date_source",
                  "study_description", "accession_number", "modalities", "series_count", "instance_count", "folder",
                  "file_formats", "patient_name", "patient_birth_date", "patient_sex"]


def _of_ids(ids: list) -> tuple[str, dict]:
    """SQL matching the rows of these patient IDs (None: no patient ID), with its parameters. One parameter per
    ID, not one list: a list parameter makes the engine import decimal, uuid and platform (~8 ms of a new
    `pacs search` process), and a list of constants lets the scan filter on patient_id before it reads the rest."""
    given = [i for i in ids if i is not None]
    alternatives = [f"patient_id IN ({', '.join(f'$id{n}' for n in range(len(given)))})"] if given else []
    if None in ids:
        alternatives.append("patient_id IS NULL")
    return " OR ".join(alternatives), {f"id{n}": i for n, i in enumerate(given)}


def find_patients(con: duckdb.DuckDBPyConnection, q: SearchQuery) -> tuple[list[dict], int]:
    """The first ``q.limit`` matching patients with their studies, and how many patients matched.

    A patient is a patient ID (the hospital's key; the same ID on two NAS devices is one patient). It
    matches when one of its ``patients`` rows matches the name and the ID, and, given study filters,
    one of its studies passes them. Exact-ID matches come first, then by name and ID. Each patient is
    a dict with ``names`` (the spellings seen in the matching rows), ``birth_date``, ``sex`` and
    ``studies`` (one dict per NAS, partition day and study, filtered).
    """
    patient_where, study_where, params = [], [], {}
    for n, word in enumerate(query_words(q.name)):
        alternatives = []
        for v, variant in enumerate(_word_variants(word)):
            params[f"w{n}_{v}"] = variant
            alternatives.append(f"contains(k, {name_key_sql(f'$w{n}_{v}')})")
        if any(c.isdigit() for c in word):  # it looks like an ID: patient IDs match too (exact or beginning)
            params[f"w{n}_id"] = word.lower()
            alternatives.append(f"starts_with(lower(patient_id), $w{n}_id)")
        patient_where.append("(" + " OR ".join(alternatives) + ")")
    if q.patient_id:
        params["pid"] = q.patient_id.lower()
        patient_where.append("starts_with(lower(patient_id), $pid)")
    study_params = {}
    if q.modality:
        study_params["modality"] = q.modality.strip().upper()
        study_where.append("list_contains(string_split(upper(modalities), ','), $modality)")
    if q.date_from:
        study_params["date_from"] = q.date_from
        study_where.append("partition_date >= $date_from")
    if q.date_to:
        study_params["date_to"] = q.date_to
        study_where.append("partition_date <= $date_to")
    studies_filter = " AND ".join(study_where) or "true"
    if study_where:
        patient_where.append(f"patient_id IN (SELECT patient_id FROM studies WHERE {studies_filter})")
    # Step 1: the patients (one scan of the small patients table, only the columns it needs).
    found = con.execute(f"""
        SELECT patient_id, count(*) OVER () AS total, min(patient_name), max(patient_name),
               any_value(patient_birth_date), any_value(patient_sex)
        FROM (SELECT patient_id, patient_name, patient_birth_date, patient_sex, name_key AS k FROM patients)
        WHERE {" AND ".join(patient_where) or "true"}
        GROUP BY patient_id
        ORDER BY bool_or(lower(patient_id) = $exact) DESC, min(lower(patient_name)), patient_id
        LIMIT $limit""", {**params, **study_params, "exact": (q.patient_id or "").lower(),
                          "limit": q.limit}).fetchall()
    if not found:
        return [], 0
    # Step 2: every person record of those IDs, and which of them the name/ID words matched: one ID may
    # name several people (identity/), and a search shows each with only their own studies.
    ids = [row[0] for row in found]
    of_ids, id_params = _of_ids(ids)
    matched = " AND ".join(w for w in patient_where if not w.startswith("patient_id IN (SELECT")) or "true"
    records = con.execute(f"""
        SELECT nas_id, patient_id, patient_name, patient_birth_date, patient_sex, bool_or({matched})
        FROM (SELECT *, name_key AS k FROM patients)
        WHERE {of_ids}
        GROUP BY ALL ORDER BY ALL""", {**params, **id_params}).fetchall()
    # Step 3: their studies, each with how many of its files are in Orthanc (file_status imported or duplicate):
    # every import keeps ``study_uploads`` current for its window (ledger.refresh_orthanc_counts), so a search reads
    # two small tables, never the big ``instances`` and ``import_history``.
    rows = con.execute(f"""
        SELECT {", ".join(_STUDY_COLUMNS)}, coalesce(u.files_in_orthanc, 0)
        FROM studies LEFT JOIN study_uploads u USING (nas_id, partition_date, study_instance_uid)
        WHERE ({of_ids}) AND {studies_filter}
        ORDER BY partition_date DESC, study_instance_uid, nas_id""", {**study_params, **id_params}).fetchall()
    studies: dict = {pid: [] for pid in ids}
    for row in rows:
        study = dict(zip([*_STUDY_COLUMNS, "files_in_orthanc"], row, strict=True))
        studies[study["patient_id"]].append(study)
    by_id: dict = {pid: [] for pid in ids}
    for nas_id, pid, name, birth, sex, hit in records:
        by_id[pid].append({"nas_id": nas_id, "name": name, "birth_date": birth, "sex": sex, "matched": hit})
    patients = [{"patient_id": pid, "names": sorted({low, high} - {None}), "birth_date": birth, "sex": sex,
                 "studies": studies[pid], "records": by_id[pid]} for pid, _, low, high, birth, sex in found]
    return patients, found[0][1]


# -- status ---------------------------------------------------------------------------------------------

def nas_status(con: duckdb.DuckDBPyConnection, nas_id: str | None, since: dt.datetime) -> dict[str, dict]:
    """Per NAS: files found, indexed, one count per file_status, and attempts finished since ``since``.

    ``since`` is naive UTC, like the ledger's timestamps. Returns {nas_id: {...}} for every NAS the
    index knows (files found, instances or attempts), optionally just ``nas_id``.
    """
    from pacs_assets.index.ledger import FILE_STATUSES  # imported, duplicate, uid_conflict, failed, held, ...

    params = {"nas": nas_id}
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
    for nas, n, first in con.execute("""
            SELECT nas_id, count(*), min(finished_at) FROM import_history
            WHERE finished_at >= $since AND ($nas IS NULL OR nas_id = $nas) GROUP BY ALL""",
            {**params, "since": since}).fetchall():
        row(nas).update(recent_attempts=n, recent_first=first)
    for nas, last in con.execute(
            f"SELECT nas_id, max(finished_at) FROM import_history {where} GROUP BY ALL", params).fetchall():
        row(nas)["last_attempt"] = last
    return out


# -- history ---------------------------------------------------------------------------------------------

HISTORY_COLUMNS = ["attempt_id", "finished_at", "started_at", "nas_id", "status", "http_status", "attempts",
                   "retryable", "error_message", "file_path", "partition_date", "patient_id",
                   "study_instance_uid", "series_instance_uid", "sop_instance_uid", "orthanc_instance_id",
                   "change_token", "file_hash", "run_id", "stage"]
# Files the walk itself found failed (truncated, corrupt, unreadable) or skipped (not DICOM) never reach
# the ledger. Asked for by status, they are listed too: stage 'walk', no attempt, the time of the last walk
# that saw them, and the walk's reason as the message.
WALK_STATUSES = ("failed", "skipped")
_LEDGER_ROWS = f"SELECT {', '.join(HISTORY_COLUMNS[:-1])}, 'upload' AS stage FROM import_history"
_WALK_ROWS = """
    SELECT NULL::BIGINT, scanned_at, NULL::TIMESTAMP, nas_id, status, NULL::INTEGER, 0, false, reason,
           file_path, procedure_date, patient_id, study_instance_uid, series_instance_uid, sop_instance_uid,
           NULL, change_token, NULL, NULL, 'walk'
    FROM inventory WHERE status IN ('failed', 'skipped')"""


class HistoryQuery(NamedTuple):
    nas_id: str | None = None
    status: str | None = None
    finished_from: dt.datetime | None = None  # naive UTC, inclusive
    finished_before: dt.datetime | None = None  # naive UTC, exclusive
    patient_id: str | None = None
    study_uid: str | None = None
    page: int = 1
    page_size: int = 50


def history_page(con: duckdb.DuckDBPyConnection, q: HistoryQuery) -> tuple[list[dict], int]:
    """One page of the import ledger, newest first, and how many rows match in all. Asked for a status of
    ``WALK_STATUSES``, the walk's failed or skipped files are rows too (``stage`` 'walk')."""
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
    with_walk = q.status in WALK_STATUSES
    source = f"({_LEDGER_ROWS} UNION ALL {_WALK_ROWS}) AS h" if with_walk else f"({_LEDGER_ROWS}) AS h"
    # Newest first: by time where walk rows join in, else by attempt (the ledger's own order).
    order = "finished_at DESC, attempt_id DESC NULLS LAST, file_path" if with_walk else "attempt_id DESC"
    total = con.execute(f"SELECT count(*) FROM {source} {clause}", params).fetchall()[0][0]
    rows = con.execute(f"SELECT {', '.join(HISTORY_COLUMNS)} FROM {source} {clause} "
                       f"ORDER BY {order} LIMIT $size OFFSET $offset",
                       {**params, "size": q.page_size, "offset": (q.page - 1) * q.page_size}).fetchall()
    return [dict(zip(HISTORY_COLUMNS, r, strict=False)) for r in rows], total
