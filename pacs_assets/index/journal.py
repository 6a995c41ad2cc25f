"""The upload journal: one append-only file per upload run, which keeps the ledger exact across a SIGKILL.

The upload keeps its ledger rows in memory and writes them into ``import_history`` in batches (DuckDB wants
batches); a process killed between two batches would lose attempts Orthanc already answered. So each
attempt is also written here, as it happens, one JSON line at a time::

    {"k": key, "s": {nas_id, file_path, change_token, orthanc_instance_id (expected), started_at, run_id}}
    {"k": key, "a": {... the full ledger row, attempt_key = key ...}}

the first before the POST, the second once Orthanc answered (or the attempt failed). Each line is one
``os.write`` on an ``O_APPEND`` descriptor: once it returns, the line is the kernel's and survives the death
of the process; ``fsync`` runs every ``FSYNC_EVERY`` lines and at the end (a crash of the machine itself may
lose the last few lines, never corrupt the earlier ones; a torn last line is ignored). The journals hold
patient IDs and paths: they live in ``<index dir>/journal/`` (0700), as 0600 files ``<pid>-<random>.jsonl``.

``merge_journals`` (run by ``upload_window`` when it starts and when it ends) moves the run's own journal and
every journal whose process is gone into the index in one transaction, then removes them. It is idempotent:
a row's ``attempt_key`` is its journal key, and keys the index already holds are skipped, so a journal
merged twice, or whose rows the batches already wrote, adds nothing.

The interrupted-upload rule. A start with no answer is a POST whose process died before Orthanc's answer
was journaled: Orthanc may hold the file or not. It is not an attempt Orthanc answered, so it is recorded
in ``interrupted_uploads``, not in ``import_history``, and the file stays pending (the next upload sends it).
When that next POST of the same file (same NAS, path and change token) answers ``AlreadyStored`` and no
``imported`` row of any NAS holds that Orthanc instance yet, Orthanc got it from us: the attempt is
recorded ``imported``, not ``duplicate``, once per instance (``Reclaims``; the other files of that instance,
e.g. a second copy on the NAS, stay ``duplicate``, and their uploads are serialised so that the first
answer decides). A file rewritten on the NAS between the kill and the rerun has a new change token: it is
an ordinary re-upload (``duplicate`` if the content is the same).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from pacs_assets.index.connection import Index, opened, transaction
from pacs_assets.index.ledger import LEDGER_COLUMNS, insert_rows
from pacs_assets.index.staging import left_by_dead_processes

JOURNAL_DIR = "journal"
FSYNC_EVERY = 256  # lines
MERGE_CHUNK = 20_000  # answered rows per insert while merging: memory stays flat however long the run was
INTERRUPTED_COLUMNS = ["attempt_key", "nas_id", "file_path", "change_token", "orthanc_instance_id", "started_at",
                       "run_id"]


def journal_dir(index_path: str | os.PathLike) -> Path:
    return Path(index_path).parent / JOURNAL_DIR


def _json_default(value):
    return value.isoformat()  # dates and datetimes; anything else is a bug worth a TypeError


# Built once: json.dumps with options builds an encoder per call, a cost paid twice per upload.
_ENCODE = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":")).encode


class Journal:
    """The journal of one upload run; ``started`` and ``answered`` may be called from any thread."""

    def __init__(self, index_path: str | os.PathLike, *, fsync_every: int = FSYNC_EVERY):
        base = journal_dir(index_path)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(base, 0o700)
        self._token = secrets.token_hex(8)  # keys are <token>.<n>: unique across runs and machines
        self.path = base / f"{os.getpid()}-{self._token}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._fsync_every = fsync_every
        self._unsynced = 0

    def new_key(self) -> str:
        with self._lock:
            return f"{self._token}.{next(self._numbers)}"

    def started(self, key: str, nas_id: str, file_path: str, change_token: str | None, orthanc_instance_id: str,
                started_at, run_id: str | None) -> None:
        self._write({"k": key, "s": {"nas_id": nas_id, "file_path": file_path, "change_token": change_token,
                                     "orthanc_instance_id": orthanc_instance_id, "started_at": started_at,
                                     "run_id": run_id}})

    def answered(self, row: Mapping) -> None:
        self._write({"k": row["attempt_key"], "a": row})

    def _write(self, entry: dict) -> None:
        line = (_ENCODE(entry) + "\n").encode()
        if os.write(self._fd, line) != len(line):  # one write per line: appends from threads never interleave
            raise OSError(f"short write to the upload journal {self.path}")
        if self._fsync_every:
            with self._lock:
                self._unsynced += 1
                due = self._unsynced >= self._fsync_every
                if due:
                    self._unsynced = 0
            if due:
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def read_journal(path: Path, chunk: int = MERGE_CHUNK) -> Iterator[tuple[list[dict], list[dict]]]:
    """(answered rows, interrupted starts) in chunks; the interrupted ones come with the last chunk.

    Starts wait for their answer in a dict, which holds only the attempts in flight at any one time.
    """
    open_starts: dict[str, dict] = {}
    answered: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash of the machine: only ever the last one
            if "s" in entry:
                open_starts[entry["k"]] = {**entry["s"], "attempt_key": entry["k"]}
            elif "a" in entry:
                open_starts.pop(entry["k"], None)
                answered.append(entry["a"])
                if len(answered) >= chunk:
                    yield answered, []
                    answered = []
    yield answered, list(open_starts.values())


def pending_journals(index_path: str | os.PathLike, own: Path | None = None) -> list[Path]:
    """The journals to merge now: those of processes that are gone, and ``own`` (this run's, once closed)."""
    found = left_by_dead_processes(journal_dir(index_path), "*.jsonl")
    if own is not None and own.exists():
        found.append(own)
    return found


def merge_journals(index_path: str | os.PathLike, own: Path | None = None) -> int:
    """Move the pending journals into the index (one transaction), then remove them. Returns how many."""
    with merging_journals(index_path, own) as merge:
        if merge.needed:
            with transaction(index_path) as con:
                merge(con)
    return len(merge.paths)


class _Merge:
    def __init__(self, paths: list[Path]):
        self.paths = paths

    @property
    def needed(self) -> bool:
        """Some journal has lines (an upload run that sent nothing leaves an empty one: no index session)."""
        return any(_size(path) for path in self.paths)

    def __call__(self, con) -> None:
        """Insert the journals' rows on ``con`` (in the caller's transaction)."""
        for path in self.paths:
            if not _size(path):
                continue
            for answered, interrupted in read_journal(path):
                if answered:
                    insert_rows(con, "import_history", LEDGER_COLUMNS, answered, new_keys_only=True)
                if interrupted:
                    insert_rows(con, "interrupted_uploads", INTERRUPTED_COLUMNS, interrupted, new_keys_only=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1  # gone or unreadable: reading it says why, as before


@contextlib.contextmanager
def merging_journals(index_path: str | os.PathLike, own: Path | None = None) -> Iterator[_Merge]:
    """The pending journals, to be merged (``merge(con)``) in a transaction the caller commits inside this
    block; they are removed only when the block ends without an error, so a rolled-back merge leaves them for
    the next run (merging twice adds nothing)."""
    merge = _Merge(pending_journals(index_path, own))
    yield merge
    for path in merge.paths:
        path.unlink(missing_ok=True)


class Reclaims:
    """The interrupted-upload rule (module docstring) for one upload run: which ``AlreadyStored`` answers
    are our own interrupted uploads, to be recorded ``imported``."""

    def __init__(self, interrupted: Mapping[tuple[str, str | None], str]):
        self._files = dict(interrupted)  # (file_path, change_token) -> the Orthanc ID the upload expected
        self._ids = set(self._files.values())
        self._claimed: set[str] = set()  # instances this run recorded imported
        self._lock = threading.Lock()

    @classmethod
    def load(cls, index: Index, nas_id: str) -> Reclaims:
        """The NAS's interrupted uploads not answered since, whose instance no one recorded imported."""
        with opened(index) as con:
            if not con.execute("SELECT 1 FROM interrupted_uploads WHERE nas_id = ? LIMIT 1", [nas_id]).fetchall():
                return cls({})  # the usual case: no upload of this NAS was ever cut off
            rows = con.execute("""
                WITH u AS (SELECT DISTINCT file_path, change_token, orthanc_instance_id FROM interrupted_uploads
                           WHERE nas_id = $nas),
                -- the answers that matter, found in one pass over import_history (it may be big)
                answered AS (SELECT nas_id, file_path, change_token, orthanc_instance_id, status FROM import_history
                             WHERE status IN ('imported', 'duplicate')
                               AND (orthanc_instance_id IN (SELECT orthanc_instance_id FROM u)
                                    OR file_path IN (SELECT file_path FROM u)))
                SELECT u.* FROM u
                WHERE NOT EXISTS (SELECT 1 FROM answered a
                                  WHERE a.status = 'imported' AND a.orthanc_instance_id = u.orthanc_instance_id)
                  AND NOT EXISTS (SELECT 1 FROM answered a
                                  WHERE a.nas_id = $nas AND a.file_path = u.file_path
                                    AND a.change_token IS NOT DISTINCT FROM u.change_token)""",
                               {"nas": nas_id}).fetchall()
        return cls({(path, token): oid for path, token, oid in rows})

    @property
    def instance_ids(self) -> frozenset[str]:
        """The Orthanc IDs of the interrupted uploads this rule covers."""
        return frozenset(self._ids)

    def guard(self, expected_id: str):
        """Hold around the upload of a file whose instance has an interrupted upload (a handful at most):
        uploads of the same instance then answer one after the other."""
        return self._lock if expected_id in self._ids else contextlib.nullcontext()

    def status(self, expected_id: str, file_path: str, change_token: str | None, status: str,
               orthanc_id: str | None) -> str:
        """The status to record for an answer (call it inside ``guard``)."""
        if expected_id not in self._ids or orthanc_id is None:
            return status
        ours = status == "duplicate" and (file_path, change_token) in self._files and orthanc_id not in self._claimed
        if status == "imported" or ours:
            self._claimed.add(orthanc_id)
            return "imported"
        return status
