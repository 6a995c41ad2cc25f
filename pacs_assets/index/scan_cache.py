"""The scan cache: what earlier walks read from each file, in its own DuckDB file beside the index.

A row is (path, size, mtime, change token -> the values a parse gave), a fact about one version of one file
that stays true whatever the index says. So the cache outlives the index: a rebuild after the index is lost
walks the NAS and takes every unchanged file's values from here, with no header read
(``<index stem>.scan-cache.duckdb``).

It is only a shortcut, never a source of truth: a walked file whose token it does not hold is read, a
damaged file (not DuckDB, unreadable, truncated), a file of another format or shape, or a NAS's rows whose
checksum or root does not match are logged in one line and thrown away, and those files are read again.
The file is only ever attached to an open index connection, so the index's lock guards it too.
DuckDB lets a transaction write to one file only: callers commit cache writes apart from index writes. The
cache is written first; whichever is killed in between, a file is at worst read once more, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

ALIAS = "sc"
# Bump when what a cached row means changes (the parser reads other fields, a token's form changes...).
CACHE_FORMAT = "pacs-scan-cache-1"


def cache_path(index_path: str | os.PathLike) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(index_path.stem + ".scan-cache.duckdb")


class Damaged(Exception):
    """The cache file cannot be trusted (one sentence: what is wrong)."""


def _columns(con, database: str, table: str) -> list[tuple[str, str]]:
    return con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND "
                       "schema_name = 'main' AND table_name = ? ORDER BY column_index",
                       [database, table]).fetchall()


def _index_db(con) -> str:
    return con.execute("SELECT current_database()").fetchall()[0][0]


def _check(con) -> None:
    try:
        fmt = con.execute(f"SELECT format FROM {ALIAS}.cache_format").fetchall()
    except duckdb.Error:
        raise Damaged("it has no format record") from None
    if fmt != [(CACHE_FORMAT,)]:
        raise Damaged(f"its format is {fmt[0][0] if fmt else 'missing'!r}, not {CACHE_FORMAT!r}")
    if _columns(con, ALIAS, "scan_cache") != _columns(con, _index_db(con), "inventory"):
        raise Damaged("its table does not have the index's columns")
    if _columns(con, ALIAS, "cache_nas") != [("nas_id", "VARCHAR"), ("root", "VARCHAR"), ("files", "BIGINT"),
                                             ("checksum", "UBIGINT")]:
        raise Damaged("its checksum table has another shape")


def _create(con, path: Path) -> None:
    path.with_name(path.name + ".wal").unlink(missing_ok=True)  # a lost file's log must not replay into the new one
    con.execute(f"ATTACH '{path}' AS {ALIAS}")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)  # patient data, like the index
    con.execute(f"CREATE TABLE {ALIAS}.cache_format AS SELECT ? AS format", [CACHE_FORMAT])
    con.execute(f"CREATE TABLE {ALIAS}.scan_cache AS SELECT * FROM inventory WHERE false")
    con.execute(f"CREATE INDEX scan_cache_folder ON {ALIAS}.scan_cache (folder)")
    con.execute(f"CREATE TABLE {ALIAS}.cache_nas (nas_id VARCHAR, root VARCHAR, files BIGINT, checksum UBIGINT)")
    # An index from before the cache had its own file kept it as a table: move it once (cache first, then drop).
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'scan_cache'",
                   [_index_db(con)]).fetchall()[0][0]:
        con.execute(f"INSERT INTO {ALIAS}.scan_cache BY NAME SELECT * FROM main.scan_cache")
        con.execute(f"INSERT INTO {ALIAS}.cache_nas SELECT nas_id, NULL, 0, 0 FROM "
                    f"(SELECT DISTINCT nas_id FROM {ALIAS}.scan_cache)")
        for (nas_id,) in con.execute(f"SELECT nas_id FROM {ALIAS}.cache_nas").fetchall():
            _set_totals(con, nas_id)
        con.execute("DROP TABLE main.scan_cache")


def discard(path: Path, reason: str) -> None:
    log.warning("Scan cache %s ignored and rebuilt: %s; its files are read again.", path.name, reason)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _is_lock_error(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


def attach(con: duckdb.DuckDBPyConnection, index_path: str | os.PathLike, nas_id: str, root: str | os.PathLike,
           *, verify: bool = False) -> None:
    """ATTACH the cache as ``sc`` to ``con`` (an index connection, outside a transaction), or a new empty one
    if it is missing or cannot be trusted. ``verify``: also check the NAS's rows against their checksum (a read
    of all of them: for whole walks, whose cost grows with the NAS anyway)."""
    path = cache_path(index_path)
    if path.exists():
        try:
            con.execute(f"ATTACH '{path}' AS {ALIAS}")
            _check(con)
            _check_nas(con, path, nas_id, str(root), verify)  # reads the NAS's rows when verifying
            return
        except (duckdb.Error, Damaged) as exc:
            if isinstance(exc, duckdb.Error) and _is_lock_error(exc):
                raise
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DETACH {ALIAS}")
            discard(path, str(exc).splitlines()[0])
    _create(con, path)
    _check_nas(con, path, nas_id, str(root), verify)


def damaged(exc: BaseException) -> bool:
    """Whether a DuckDB error says a file's blocks are missing or corrupt (DuckDB checksums every block)."""
    text = str(exc)
    return isinstance(exc, duckdb.Error) and ("Could not read enough bytes" in text or "orrupt" in text
                                              or "checksum" in text)


def _check_nas(con, path: Path, nas_id: str, root: str, verify: bool) -> None:
    known = con.execute(f"SELECT root, files, checksum FROM {ALIAS}.cache_nas WHERE nas_id = ?", [nas_id]).fetchall()
    reason = None
    if not known:
        reason = "no record of this NAS" if _totals(con, nas_id)[0] else None
    elif known[0][0] is not None and known[0][0] != root:
        reason = f"NAS '{nas_id}' was cached for another root"
    elif verify and _totals(con, nas_id) != (known[0][1], known[0][2]):
        reason = f"the rows of NAS '{nas_id}' do not match their checksum"
    if reason:
        log.warning("Scan cache %s: %s; its rows are ignored and the files read again.", path.name, reason)
        con.execute(f"DELETE FROM {ALIAS}.scan_cache WHERE nas_id = ?", [nas_id])
    if reason or not known or known[0][0] is None:
        con.execute(f"DELETE FROM {ALIAS}.cache_nas WHERE nas_id = ?", [nas_id])
        con.execute(f"INSERT INTO {ALIAS}.cache_nas VALUES (?, ?, 0, 0)", [nas_id, root])
        _set_totals(con, nas_id)


def _totals(con, nas_id: str, where: str = "", params: Sequence = ()) -> tuple[int, int]:
    """(rows, XOR of their hashes) of the NAS's cached rows (matching ``where``)."""
    n, x = con.execute(f"SELECT count(*), coalesce(bit_xor(hash(c)), 0) FROM {ALIAS}.scan_cache c "
                       f"WHERE nas_id = ? {where}", [nas_id, *params]).fetchall()[0]
    return n, x


def _set_totals(con, nas_id: str) -> None:
    n, x = _totals(con, nas_id)
    con.execute(f"UPDATE {ALIAS}.cache_nas SET files = ?, checksum = ? WHERE nas_id = ?", [n, x, nas_id])


def replace_rows(con: duckdb.DuckDBPyConnection, nas_id: str, split: Sequence[str]) -> None:
    """In one cache transaction: within each slice (an SQL condition on ``file_path`` and ``folder``: what the
    walk covered, part by part), delete the NAS's rows whose path the walk did not find or staged again, insert
    the staged rows (``staging.inventory``), and keep the NAS's row count and checksum in step from the rows
    touched only."""
    con.execute("BEGIN TRANSACTION")
    try:
        n_old = x_old = 0
        for where in split:
            stale = (f"AND ({where}) AND (file_path NOT IN (SELECT file_path FROM staging.walked WHERE {where}) "
                     f"OR file_path IN (SELECT file_path FROM staging.inventory WHERE {where}))")
            n, x = _totals(con, nas_id, stale)
            con.execute(f"DELETE FROM {ALIAS}.scan_cache WHERE nas_id = ? {stale}", [nas_id])
            n_old, x_old = n_old + n, x_old ^ x
        con.execute(f"INSERT INTO {ALIAS}.scan_cache SELECT * FROM staging.inventory")
        # A row hashes alike in either table (same columns): the inserted rows' checksum, read from staging.
        n_new, x_new = con.execute("SELECT count(*), coalesce(bit_xor(hash(s)), 0) FROM staging.inventory s"
                                   ).fetchall()[0]
        con.execute(f"UPDATE {ALIAS}.cache_nas SET files = files - ? + ?, checksum = xor(xor(checksum, ?), ?) "
                    "WHERE nas_id = ?", [n_old, n_new, x_old, x_new, nas_id])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def record(con: duckdb.DuckDBPyConnection, nas_id: str) -> tuple[int, int] | None:
    """The NAS's (files, checksum) record, kept in step by every write of its rows."""
    rows = con.execute(f"SELECT files, checksum FROM {ALIAS}.cache_nas WHERE nas_id = ?", [nas_id]).fetchall()
    return tuple(rows[0]) if rows else None


def reseal(con: duckdb.DuckDBPyConnection, nas_id: str) -> None:
    """Count the NAS's rows and checksum again, after rows were written in bulk without ``replace_rows`` (a
    benchmark seeding a big cache from a few parsed files)."""
    _set_totals(con, nas_id)
