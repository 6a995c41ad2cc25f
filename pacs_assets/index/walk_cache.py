"""A walk against the scan cache (index/scan_cache.py), without copying the cache: only what identifies a
walked file (path, size, mtime, change token) is staged, and matched against the cache file in SQL.

A bulk source offers every walked file (table ``walked``); ``unmatched`` then hands back, page by page, the
files whose token the cache does not hold, the only ones parsed. The unchanged files' rows stay where they
are: the merge (index/inventory.py ``new_rows_sql``) reads them from the cache, and writes to the index
only the rows that differ from its own. A source that asks by path (``lookup``: the catalog kind) gets the
rows of the NAS (or of the walked folders) copied into staging once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from pacs_assets.index import scan_cache
from pacs_assets.index.connection import STREAMING_MEMORY_LIMIT
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, ScanCache
from pacs_assets.nas.dates import assign_procedure_date

RECORD_COLUMNS = FileRecord.columns_()
_RECORD_FIELDS = operator.attrgetter(*RECORD_COLUMNS)
# Folders per ``IN (...)`` list: constant lists use the folder index; one statement per chunk.
FOLDER_CHUNK = 500
# Cached rows whose procedure date is a fallback, re-dated in Python this many at a time.
REDATE_PAGE = 20_000


def sql_text(value: str) -> str:
    """A string as an SQL literal (for conditions reused inside several statements)."""
    return "'" + value.replace("'", "''") + "'"


def scopes(folders: Sequence[str] | None) -> list[str]:
    """SQL conditions covering what a walk saw: everything, or the rows of ``folders``, as constant lists of
    at most FOLDER_CHUNK folders (constant lists use the folder index; one statement per chunk)."""
    if folders is None:
        return ["true"]
    folders = sorted(set(folders))
    if not folders:
        return ["false"]
    return ["folder IN (" + ", ".join(sql_text(f) for f in folders[i:i + FOLDER_CHUNK]) + ")"
            for i in range(0, len(folders), FOLDER_CHUNK)]


# Files per part of a whole walk's SQL: a join's hash table holds one part at a time, so the memory of matching
# and merging a walk does not grow with the NAS; each part reads the tables again (a few ms per 100,000 rows).
PART_ROWS = 50_000


def parts(staging: Staging) -> list[str]:
    """Conditions on ``file_path`` that split what a walk staged into parts of ~PART_ROWS files (one: "true").
    A row it parsed (all columns, in the diff and the merge) weighs as three walked ones (path and token)."""
    k = -(-(staging.count("walked") + 3 * staging.count("inventory")) // PART_ROWS)
    return [f"hash(file_path) % {k} = {i}" for i in range(k)] if k > 1 else ["true"]


def slices(staging: Staging, folders: Sequence[str] | None) -> list[str]:
    """Conditions on ``file_path`` and ``folder`` (of ``walked``, ``inventory`` or the cache) that cover what a
    walk saw, slice by slice: its scope (everything, or chunks of folders) split into parts."""
    return [f"({scope}) AND ({part})" for scope in scopes(folders) for part in parts(staging)]


# What identifies a walk's files as one sum: their count and the XOR of their (path, token) hashes. Paths are
# unique on either side, so two sides with the same sum hold the same files with the same tokens (the cache's
# own checksum is of the same kind).
PAIR = "count(*), coalesce(bit_xor(hash(file_path, change_token)), 0)"
# The path and change token of an offered file as the walk's records spell them: folder/name, f"{size}-{mtime_ns}".
_PATH = "CASE WHEN folder = '' THEN name ELSE folder || '/' || name END"
_TOKEN = "size || '-' || mtime_ns"
# A cached row whose procedure date is not a valid StudyDate in range: its date may depend on "today".
FALLBACK = "NOT (c.date_source = 'study_date' AND c.procedure_date >= $start AND c.procedure_date <= $today)"


@dataclasses.dataclass
class LookAhead:
    """What a walk reads of the scan cache while it lists the NAS (``StagingCache``)."""

    known: int  # files the cache knew (in the walked folders)
    # A whole walk's, in the same session: the NAS's rows as one PAIR, the cache's record, and (path, procedure
    # date, date source) of each fallback-dated row whose date moved since it was cached.
    cached: tuple[int, int] | None = None
    record: tuple[int, int] | None = None
    moved: list[tuple[str, dt.date, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Steady:
    """What the merge of a walk that was exactly the cache needs of the staging file, left in Python when the
    file is released (``Staging.released_with``): the rows staged so far, and the fallback dates that moved."""

    staged: int
    moved: list[tuple[str, dt.date, str]]


def look_ahead(staging: Staging, folders: Sequence[str] | None, start: dt.date, today: dt.date) -> LookAhead:
    """How many files the scan cache knows for the staging's NAS (in ``folders``), and for a whole walk what
    ``unmatched`` needs when the walk turns out to be exactly the cache, so that this usual night opens no
    further session before the merge. A whole walk also checks the NAS's rows against their checksum here,
    before any of them is trusted. The staging file is not attached: this runs while the walk stages files."""
    nas_id = staging.nas[0]
    with staging.attached_to_index(cache=True, verify=folders is None, staging=False,
                                   memory_limit=STREAMING_MEMORY_LIMIT) as con:
        if folders is not None:
            return LookAhead(sum(con.execute(f"SELECT count(*) FROM sc.scan_cache WHERE nas_id = ? AND {scope}",
                                             [nas_id]).fetchall()[0][0] for scope in scopes(folders)))
        cached = tuple(con.execute(f"SELECT {PAIR} FROM sc.scan_cache WHERE nas_id = ?", [nas_id]).fetchall()[0])
        cursor = con.execute(f"SELECT file_path, study_date, series_date, mtime_ns, procedure_date, date_source "
                             f"FROM sc.scan_cache c WHERE c.nas_id = $nas AND {FALLBACK}",
                             {"nas": nas_id, "start": start, "today": today})
        moved = []
        while rows := cursor.fetchmany(REDATE_PAGE):
            moved.extend(_moved(rows, start, today))
        return LookAhead(cached[0], cached, scan_cache.record(con, nas_id), moved)


def _moved(rows, start: dt.date, today: dt.date) -> list[tuple[str, dt.date, str]]:
    """(path, procedure date, date source) of the cached rows (path, study date, series date, mtime, procedure
    date, date source) whose date nas/dates.py's rule now gives otherwise: the dates a parse would give."""
    return [(path, *new) for path, study, series, mtime, *old in rows
            if (new := assign_procedure_date(study, series, mtime, start, today)) != tuple(old)]


def moved_rows(con, moved: list[tuple[str, dt.date, str]]) -> str:
    """Register ``moved`` (as ``_moved``) on ``con`` as columns, and return the SELECT that reads them as
    ``redated`` rows (typed even when there are none)."""
    import numpy as np  # not pandas: the walk's process never imports it (~35 MB)

    con.register("_moved", {name: np.array([str(row[k]) for row in moved], dtype=object)
                            for k, name in enumerate(("file_path", "procedure_date", "date_source"))})
    return ("SELECT file_path::VARCHAR AS file_path, CAST(procedure_date AS DATE) AS procedure_date, "
            "date_source::VARCHAR AS date_source FROM _moved")


class StagingCache(ScanCache):
    """The scan cache as a walk sees it. A bulk cache: a walk's files are offered in bulk and matched in SQL.

    A context manager: from its start, ``look_ahead`` runs in a thread of its own while the walk goes on
    (``known``); everything that opens the index waits for it first."""

    bulk = True

    def __init__(self, staging: Staging, start: dt.date, today: dt.date, folders: Sequence[str] | None = None,
                 on_offer: Callable[[int], None] | None = None):
        self.staging, self.start, self.today, self.folders = staging, start, today, folders
        self.offered = self.unmatched_total = 0
        self.on_offer = on_offer
        self._copied = False
        self._walked = (0, 0)  # the offered files as one PAIR, summed by the inserts
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="look-ahead")
        self._ahead = self._pool.submit(look_ahead, staging, folders, start, today)

    def __enter__(self) -> StagingCache:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()  # waits for the look-ahead: no index session outlives the walk

    @property
    def known(self) -> int | None:
        """Files the cache knew before the walk, once counted (None until then)."""
        return self._ahead.result().known if self._ahead.done() else None

    def look_ahead(self) -> LookAhead:
        """What the cache held before the walk (waits for the look-ahead; raises what it raised)."""
        return self._ahead.result()

    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        if not keys:
            return {}
        self.look_ahead()  # its index session first
        if not self._copied:  # the catalog kind's NAS: small, and its records pass through Python anyway
            with self.staging.attached_to_index(cache=True) as con:
                for scope in scopes(self.folders):
                    con.execute(f"INSERT INTO staging.cache SELECT * FROM sc.scan_cache WHERE nas_id = ? AND {scope}",
                                [self.staging.nas[0]])
            self._copied = True
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

    def offer(self, folders: Sequence[str], names: Sequence[str], sizes: Sequence[int],
              mtimes: Sequence[int]) -> None:
        import numpy as np  # columns straight to DuckDB: no DataFrame, no object per file

        columns = {"folder": np.array(folders, dtype=object), "name": np.array(names, dtype=object),
                   "size": np.array(sizes, dtype=np.int64), "mtime_ns": np.array(mtimes, dtype=np.int64)}

        def insert(con) -> None:
            con.register("_offer", columns)
            con.execute(f"INSERT INTO walked SELECT {_PATH}, size, mtime_ns, {_TOKEN}, folder FROM _offer")
            n, x = con.execute(f"SELECT count(*), coalesce(bit_xor(hash({_PATH}, {_TOKEN})), 0) FROM _offer"
                               ).fetchall()[0]
            self._walked = (self._walked[0] + n, self._walked[1] ^ x)  # one insert at a time (Staging.soon)
            con.unregister("_offer")

        self.staging.soon(insert)  # while the walk goes on (``unmatched`` waits for it)
        self.offered += len(names)
        if self.on_offer:
            self.on_offer(self.offered)

    def unmatched(self, batch_size: int) -> Iterator[list[tuple[str, int, int]]]:
        # The usual night: a whole walk that found exactly the files the cache held with their tokens (one PAIR
        # on each side) needs no parse and no look at the index here; only the fallback dates that moved are
        # staged. Else one short look at the cache: which walked files it lacks, and which of those it holds
        # have a fallback procedure date (re-dated below, as a parse would date them): one join a part, whose
        # result is only what is not plainly unchanged.
        ahead = self.look_ahead()  # its index session first
        self.staging.wait()
        if self.folders is None and ahead.cached == self._walked:
            # The merge proves the cache is still as it was then (index/reconciliation.py ``unchanged``).
            self.staging.walked_is_cache = ahead.record
            self._stage_moved(ahead.moved)
            # The merge most likely proves the NAS unchanged without reading the walk again: what it needs of it.
            self.staging.release(Steady(self.staging.count("inventory"), ahead.moved))
            return
        self.staging.walked_is_cache = None
        con = self.staging.con
        split = slices(self.staging, self.folders)
        con.execute("CREATE OR REPLACE TABLE _looked (file_path VARCHAR, size BIGINT, mtime_ns BIGINT, hit BOOLEAN, "
                    "study_date VARCHAR, series_date VARCHAR, cached_mtime BIGINT, procedure_date DATE, "
                    "date_source VARCHAR)")
        params = {"nas": self.staging.nas[0], "start": self.start, "today": self.today}
        with self.staging.attached_to_index(cache=True) as con:
            for part in split:
                con.execute(f"""INSERT INTO staging._looked
                    SELECT w.file_path, w.size, w.mtime_ns, c.file_path IS NOT NULL, c.study_date, c.series_date,
                           c.mtime_ns, c.procedure_date, c.date_source
                    FROM (SELECT file_path, size, mtime_ns, change_token FROM staging.walked WHERE {part}) w
                    LEFT JOIN (SELECT file_path, change_token, study_date, series_date, mtime_ns, procedure_date,
                                      date_source FROM sc.scan_cache WHERE nas_id = $nas AND {part}) c
                      ON c.file_path = w.file_path AND c.change_token = w.change_token
                    WHERE c.file_path IS NULL OR {FALLBACK}""", params)
        con = self.staging.con
        # Numbered, read page by page (the caller writes to staging between pages), in path order.
        con.execute("CREATE OR REPLACE TABLE unmatched AS SELECT row_number() OVER (ORDER BY file_path) AS k, "
                    "file_path, size, mtime_ns FROM _looked WHERE NOT hit ORDER BY k")
        con.execute("CREATE OR REPLACE TABLE _redate AS SELECT row_number() OVER () AS k, file_path, study_date, "
                    "series_date, cached_mtime AS mtime_ns, procedure_date, date_source FROM _looked WHERE hit")
        con.execute("DROP TABLE _looked")
        self._redate()
        con = self.staging.con
        total = self.unmatched_total = self.staging.count("unmatched")
        for lo in range(0, total, batch_size):
            yield [tuple(r) for r in con.execute("SELECT file_path, size, mtime_ns FROM unmatched WHERE k > ? "
                                                 "AND k <= ?",
                                                 [lo, lo + batch_size]).fetchall()]

    def _redate(self) -> None:
        """Stage (``redated``) the new procedure date of every cached fallback-dated row whose date moved.

        A cached date taken from a valid StudyDate stays right (SQL checked it is still in range); every
        other one gets nas/dates.py's rule again, so the dates are exactly those a parse would give."""
        con = self.staging.con
        total = self.staging.count("_redate")
        for lo in range(0, total, REDATE_PAGE):
            rows = con.execute("SELECT file_path, study_date, series_date, mtime_ns, procedure_date, date_source "
                               "FROM _redate WHERE k > ? AND k <= ?", [lo, lo + REDATE_PAGE]).fetchall()
            self._stage_moved(_moved(rows, self.start, self.today))
        con.execute("DROP TABLE _redate")

    def _stage_moved(self, moved: list[tuple[str, dt.date, str]]) -> None:
        if moved:
            self.staging.con.execute(f"INSERT INTO redated {moved_rows(self.staging.con, moved)}")
