"""Opening the DuckDB index: the lock policy, the settings, and the schema (applied once per process).

DuckDB lets one process at a time open the file, and while it does no other process can open it, not
even to read. Runs, sensors and searches are separate processes, so nothing keeps the index open for
long: a run streams its work into a private *staging* database (staging.py), then merges it into the
index in one short transaction. ``connect`` waits (with backoff) while another process holds the lock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    # The engine's own module, which the ``duckdb`` package wraps and re-exports (same classes, same exceptions):
    # the wrapper's relation API costs ~100 ms of a new process's start, and a `pacs search` never uses it.
    import _duckdb as duckdb
except ImportError:  # a DuckDB release whose engine module has another name
    import duckdb

LOCK_WAIT_SECONDS = float(os.environ.get("PACS_INDEX_LOCK_WAIT", "120"))
# DuckDB would take up to 80 % of RAM for a big merge; capped, it spills to disk and a run's memory
# stays flat however large the NAS.
DUCKDB_SETTINGS = {"memory_limit": os.environ.get("PACS_DUCKDB_MEMORY_LIMIT", "256MB"),
                   "preserve_insertion_order": False}
# A walk's matching and merge run slice by slice (index/walk_cache.py PART_ROWS), so they need little; a lower
# cap keeps DuckDB's buffers (read blocks of the cache and the index, staged rows) from growing with the NAS.
# Measured on the steady whole walk, 200,000 -> 2,000,000 files: 128 MB 165 -> 249 MB peak RSS, 96 MB 166 -> 235.
WALK_MEMORY_LIMIT = os.environ.get("PACS_WALK_MEMORY_LIMIT", "96MB")
# A walk's sessions that only stream rows through aggregates (the look-ahead beside the walk's inserts, whose
# buffers would add to theirs; the usual night's proof): a small cap of their own. Measured on the steady whole walk
# of 2,000,000 files: peak RSS 222-231 MB at the walk's cap, 202 MB at this; 200,000 files: 153-156 MB either way.
STREAMING_MEMORY_LIMIT = "24MB"


# importlib.resources, hashlib and random load where they are used: a read-only open (`pacs search`, a new
# process each time) needs none of them, and together they cost it ~15 ms of imports.
@functools.cache
def schema_sql() -> str:
    from importlib import resources

    return resources.files("pacs_assets.index").joinpath("schema.sql").read_text()


@functools.cache
def schema_version() -> str:
    import hashlib

    return hashlib.sha1(schema_sql().encode()).hexdigest()[:16]


def tuned(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    # SET, not connect(config=...): a connect-time config must match every other open connection to the
    # same file in this process, and tests or a caller may well hold a plain one.
    for name, value in DUCKDB_SETTINGS.items():
        con.execute(f"SET {name} = '{value}'" if isinstance(value, str) else f"SET {name} = {value}")
    return con


class IndexBusy(RuntimeError):
    """Another process kept the index locked for longer than we were willing to wait."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


def _private(path: Path) -> None:
    # The index holds names, IDs and birth dates: owner only, whatever the umask.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


def _apply_schema_once(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Run schema.sql unless this file already has this very schema: a step opens the index several times,
    and re-running the DDL each time cost more than the short merges themselves. The probe is one tiny
    query, so a file deleted and created again (same path, maybe the same inode) still gets its schema."""
    version = schema_version()
    try:
        if con.execute("SELECT version FROM pacs_schema").fetchall() == [(version,)]:
            return
    except duckdb.CatalogException:
        pass
    con.execute(schema_sql())
    con.execute("CREATE OR REPLACE TABLE pacs_schema AS SELECT ? AS version", [version])
    _private(path)


def connect(path: str | os.PathLike, *, read_only: bool = False,
            wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the index, waiting while another process holds its lock."""
    wait = LOCK_WAIT_SECONDS if wait is None else wait
    deadline = time.monotonic() + wait
    delay = 0.02
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            if read_only and not path.exists():
                raise FileNotFoundError(f"The index {path} does not exist yet: materialize a NAS's assets first.")
            con = tuned(duckdb.connect(str(path), read_only=read_only))
            if not read_only:
                _apply_schema_once(con, path)
            return con
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                if _is_lock_error(exc):
                    raise IndexBusy(f"The index {path} stayed locked by another process for {wait:.0f} s.") from None
                raise
            import random

            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def session(path: str | os.PathLike, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


Index = str | os.PathLike | duckdb.DuckDBPyConnection  # a path, or a connection a caller already holds


@contextlib.contextmanager
def opened(index: Index, *, read_only: bool = False, atomic: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``index``: a connection as it is (its holder chose its transaction: a step's few
    bookkeeping queries share one short lock, each open costing ~20-40 ms), else a session of that path (with
    ``atomic``, one transaction)."""
    if isinstance(index, duckdb.DuckDBPyConnection):
        yield index
    elif atomic:
        with transaction(index) as con:
            yield con
    else:
        with session(index, read_only=read_only) as con:
            yield con


@contextlib.contextmanager
def transaction(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write transaction: all of it lands, or none of it."""
    with session(path) as con, in_transaction(con):
        yield con


@contextlib.contextmanager
def in_transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction on an open connection: all of it lands, or none of it."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
