"""A run's private scratch database, beside the index, never locked by anyone else.

Staging holds patient data (the rows a walk read), so it lives in a 0700 folder under the
index's own folder, as a 0600 file, and is removed when the run ends. A run killed with SIGKILL cannot
clean up: the next ``Staging`` of any run removes the folders whose owning process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb

from pacs_assets.index import scan_cache
from pacs_assets.index.connection import in_transaction, schema_sql, session, tuned

STAGING_DIR = "staging"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def left_by_dead_processes(base: Path, pattern: str = "*") -> list[Path]:
    """The entries of ``base`` named ``<pid>-<random>...`` whose process is gone (never this process's own)."""
    if not base.is_dir():
        return []
    found = []
    for entry in base.glob(pattern):
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            found.append(entry)
    return found


def remove_stale_staging(index_path: str | os.PathLike) -> int:
    """Remove staging folders left by processes that died (``<pid>-<random>``). Returns how many."""
    stale = left_by_dead_processes(Path(index_path).parent / STAGING_DIR)
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    return len(stale)


class Staging:
    """A private DuckDB file for one run: the run's scratch space."""

    def __init__(self, index_path: str | os.PathLike, *, memory_limit: str | None = None):
        """``memory_limit``: DuckDB's cap for this staging file and the index sessions it opens (default: the
        index's own, connection.py)."""
        self.index_path = Path(index_path)
        self.memory_limit = memory_limit
        base = self.index_path.parent / STAGING_DIR
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(base, 0o700)
        remove_stale_staging(self.index_path)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))  # mkdtemp: mode 0700
        self.path = self.dir / "staging.duckdb"
        self._con: duckdb.DuckDBPyConnection | None = None
        self._worker: ThreadPoolExecutor | None = None  # runs the work handed to ``soon``, one item at a time
        self._pending: Future | None = None
        con = self.con  # creates the file
        os.chmod(self.path, 0o600)
        con.execute(schema_sql().split("CREATE SEQUENCE")[0])  # the table shapes, without the ledger/view
        # The NAS this run walks (nas_id, root): whose scan cache rows ``attached_to_index(cache=True)`` checks.
        self.nas: tuple[str, str] | None = None
        # Set by a whole walk that found every walked file in the scan cache with its token, and no other cached
        # row: the cache's (files, checksum) record then (index/reconciliation.py ``unchanged``).
        self.walked_is_cache: tuple[int, int] | None = None
        # What a walk left behind when it released this file (``release``), while nothing has opened it since: then
        # the usual night's proof needs nothing from the file itself (index/reconciliation.py).
        self.released_with: object | None = None
        # Rows of the scan cache a non-bulk source asks for by path (index/walk_cache.py), and what a walk met.
        self.con.execute("CREATE TABLE cache AS SELECT * FROM inventory WHERE false")
        self.con.execute("CREATE TABLE walked (file_path VARCHAR, size BIGINT, mtime_ns BIGINT, change_token VARCHAR, "
                         "folder VARCHAR)")
        self.con.execute("CREATE TABLE redated (file_path VARCHAR, procedure_date DATE, date_source VARCHAR)")

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This file's own connection, opened again on first use after an index session (which needs it closed)."""
        if self._con is None:
            self.released_with = None
            self._con = self._tuned(duckdb.connect(str(self.path)))
        return self._con

    def soon(self, work: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Run ``work(cursor)`` on this file in a background thread, after the work handed over before it.

        A walk's inserts run while it lists the next folders: DuckDB lets go of the GIL while it writes, and the
        walk mostly waits on system calls, so on two cores the inserts cost the walk almost nothing. ``wait``
        (called before this file steps aside or closes) returns when it is done and raises what it raised."""
        self.wait()
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="staging")
        cursor = self.con.cursor()  # a connection of its own to this file: one per thread

        def run() -> None:
            try:
                work(cursor)
            finally:
                cursor.close()

        self._pending = self._worker.submit(run)

    def wait(self) -> None:
        """Until the work handed to ``soon`` is done; raises what it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def release(self, left: object = None) -> None:
        """Close this file's connection without writing its rows out first: they stay in its log, read back if
        the file is opened again. Frees the memory a whole walk's uncheckpointed rows hold (~200 MB for
        2,000,000 files) when they will most likely not be read again, for ~5 ms instead of ~50 ms a checkpoint.
        ``left``: what the caller wants known while the file stays closed (``released_with``)."""
        self.wait()
        if self._con is not None:
            self._con.execute("PRAGMA disable_checkpoint_on_shutdown")
            self._con.close()
            self._con = None
        self.released_with = left

    def _step_aside(self) -> None:
        self.wait()
        if self._con is not None:
            self._con.execute("CHECKPOINT")
            self._con.close()
            self._con = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.wait()
        if self._worker is not None:
            self._worker.shutdown()
        with contextlib.suppress(Exception):
            self.release()  # scratch, removed next: not written out on the way
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def drop_files(self, file_paths: list[str]) -> None:
        """Take these files out of the staged ``inventory`` (the upload leaves held files behind)."""
        import pandas as pd

        self.con.register("_drop", pd.DataFrame({"file_path": file_paths}))
        try:
            self.con.execute("DELETE FROM inventory WHERE file_path IN (SELECT file_path FROM _drop)")
        finally:
            self.con.unregister("_drop")

    def count(self, table: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]

    @contextlib.contextmanager
    def attached_to_index(self, *, atomic: bool = False, cache: bool = False, verify: bool = False,
                          staging: bool = True, memory_limit: str | None = None
                          ) -> Iterator[duckdb.DuckDBPyConnection]:
        """An index connection (one short lock) with this staging file attached as ``staging``, and with
        ``cache`` the scan cache of ``self.nas`` as ``sc`` (index/scan_cache.py; ``verify``: its checksum too).

        DuckDB allows one writer per file even within a process, so our own connection steps aside.
        ``atomic``: everything done on the connection lands in one transaction, or nothing does (the scan
        cache is another file: DuckDB writes one file per transaction, so such a transaction only reads it).
        ``staging=False``: without this file (nothing steps aside: work on it may go on in another thread).
        ``memory_limit``: this session's own cap (one that runs beside this file's adds to its memory).
        """
        if staging:
            self._step_aside()
            self.released_with = None  # the session may write to it
        try:
            with session(self.index_path) as con:
                self._tuned(con)
                if memory_limit:
                    con.execute(f"SET memory_limit = '{memory_limit}'")
                if staging:
                    con.execute(f"ATTACH '{self.path}' AS staging")
                if cache:
                    if self.nas is None:
                        raise RuntimeError("Staging.nas must be set before the scan cache is attached")
                    scan_cache.attach(con, self.index_path, *self.nas, verify=verify)
                with in_transaction(con) if atomic else contextlib.nullcontext(con):
                    yield con
        except Exception as exc:
            # A cache block found missing or corrupt only now (a folder run reads part of it): the run fails
            # once, and the next one starts from an empty cache instead of failing again.
            if cache and scan_cache.damaged(exc):
                scan_cache.discard(scan_cache.cache_path(self.index_path), str(exc).splitlines()[0])
            raise

    def _tuned(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        tuned(con)
        if self.memory_limit:
            # A walk's sessions: capped, and one thread (each part's joins are small; a second thread's hash
            # tables and buffers cost memory, and the walk's machine is usually busy with the parsers).
            con.execute(f"SET memory_limit = '{self.memory_limit}'")
            con.execute("SET threads = 1")
        return con
