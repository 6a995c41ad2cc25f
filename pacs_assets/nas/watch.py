"""Finding what changed on a NAS cheaply, for the new-files sensor.

A folder's modification time changes when an entry is added, removed or renamed in it, so on an
unchanged NAS a tick only stats the folders it knows (no listing, no file stat). Files seen for the
first time, or changed, wait until their size and mtime hold still across two looks (a file still being
copied looks truncated): nas/settle.py. The state lives in a small SQLite file per NAS beside the index — not in the
sensor cursor, which stays small, and not in DuckDB, whose lock the runs need.

A tick has a time budget: the first look at a big NAS spans several ticks, resuming from a queue of
folders still to list, so no file is missed or reported twice. A file rewritten in place (same folder,
no rename) does not change its folder's mtime: the nightly reconciliation run catches those.

On a huge, slow share (300,000 folders at ~1 ms a stat over SMB is 5 minutes) a tick cannot stat every
folder. Each tick stats the *recent* folders (modified in the last RECENT_SECONDS: where new studies land)
and a slice of the others, least recently checked first (``sweep_slice``), both within half the tick's
budget; a sweep round ends when every folder has been checked since it began. So a change in a recent folder
is seen at the next tick (while the recent folders fit the budget), a change anywhere else within one sweep
(folders / sweep_slice ticks), and the nightly reconciliation sees all. The stats themselves are by name in
each folder's open parent, several at once (nas/folder_stats.py): on a share every stat is a round trip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pacs_assets.errors import ConfigError
from pacs_assets.nas import names, settle
from pacs_assets.nas.folder_stats import Outcome, stat_folders
from pacs_assets.nas.walk import check_root, retrying

SCHEMA = """
-- checked: the tick that last statted the folder (the sweep takes the least recently checked first).
CREATE TABLE IF NOT EXISTS dirs (path TEXT PRIMARY KEY, mtime_ns INTEGER, checked INTEGER DEFAULT 0);
-- stable: 0 until size and mtime held still across two looks, the first on tick seen_tick; then 1, or 2 while a
-- file reported within its first tick waits for its confirmation look on the next (nas/settle.py).
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, dir TEXT, size INTEGER, mtime_ns INTEGER,
                                  stable INTEGER, partition TEXT, seen_tick INTEGER);
CREATE INDEX IF NOT EXISTS files_dir ON files(dir);
CREATE INDEX IF NOT EXISTS files_unstable ON files(stable) WHERE stable = 0;
CREATE TABLE IF NOT EXISTS queue (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
INSERT OR IGNORE INTO meta VALUES ('tick', 0);
INSERT OR IGNORE INTO meta VALUES ('sweep_start', 0);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS dirs_mtime ON dirs(mtime_ns);
CREATE INDEX IF NOT EXISTS dirs_checked ON dirs(checked);
CREATE INDEX IF NOT EXISTS files_unconfirmed ON files(stable) WHERE stable = 2;
"""
RECENT_SECONDS = 2 * 86400  # folders modified this recently are statted every tick
SWEEP_SLICE = 5000  # other folders statted per tick (~5 s at 1 ms a stat; the tick budget caps it too)


class NasUnavailable(RuntimeError):
    """The NAS root is missing or suddenly empty: an outage, never a mass deletion."""


@dataclasses.dataclass
class TickResult:
    # partition date -> sorted (path, token) of the files that became stable, changed or vanished in it
    changes: dict[dt.date, list[tuple[str, str]]]
    folders_statted: int
    folders_listed: int
    queued: int  # folders still to list on a later tick (first look at a big NAS)
    pending: int  # files seen but not yet stable
    not_read: int = 0  # folders whose stat or listing kept failing this tick: what they held stays as it was
    sweep_checked: int = 0  # folders checked in the current sweep round (of sweep_total)
    sweep_total: int = 0
    # True until the watch has once seen the whole NAS settle: its changes are then "everything", which one
    # whole walk (the reconciliation) handles better than runs of named folders.
    first_look: bool = False

    @property
    def complete(self) -> bool:
        return self.queued == 0 and self.pending == 0

    def folders(self, day: dt.date) -> list[str]:
        """The folders (relative, '' = root) holding the files that changed in ``day``: what a run walks."""
        return sorted({path.rpartition("/")[0] for path, _ in self.changes.get(day, [])})


def _below(rel: str) -> tuple[str, str]:
    """[low, high): the range of stored paths strictly below folder ``rel`` ('' is the root). Byte order: every
    path starting with 'a/' sorts from 'a/' up to, not including, 'a0' ('0' follows '/')."""
    return (f"{rel}/", f"{rel}0") if rel else ("", "\U0010ffff")


class NasWatch:
    """The watch of one NAS: the folders it knows with their mtimes, and the files waiting to settle.

    ``read_dates`` is the NAS kind's way to date a new file (NasKind.read_dates); None dates it by mtime.
    ``look_again_seconds``: the second look at a new file within the tick that saw it, this long after; 0: on the
    next tick (nas/settle.py).
    """

    def __init__(self, state_path: Path, root: Path, *, partitions_start: dt.date, settle_seconds: float = 0.0,
                 read_dates: Callable[[str, str, int, int], tuple[str | None, str | None]] | None = None,
                 sweep_slice: int = SWEEP_SLICE, recent_seconds: float = RECENT_SECONDS,
                 look_again_seconds: float = 0.0):
        self.sweep_slice, self.recent_ns = sweep_slice, int(recent_seconds * 1e9)
        self.look_again_seconds = look_again_seconds
        self.last_sighting, self.grown = 0.0, set()  # this tick's last new file, folders with new entries
        self.root = Path(root)
        self.read_dates = read_dates
        self.start = partitions_start
        self.settle_ns = int(settle_seconds * 1e9)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(state_path, timeout=30)
        self.db.executescript(SCHEMA)
        if "checked" not in {r[1] for r in self.db.execute("PRAGMA table_info(dirs)")}:  # state from before
            self.db.execute("ALTER TABLE dirs ADD COLUMN checked INTEGER DEFAULT 0")
        self.db.executescript(INDEXES)

    def close(self) -> None:
        self.db.close()

    def _join(self, rel: str) -> str:
        return names.join(self.root, rel)  # paths are kept in the index's stored form (nas/names.py)

    def tick(self, budget_seconds: float, today: dt.date) -> TickResult:
        deadline = time.monotonic() + budget_seconds
        changes: dict[dt.date, set[tuple[str, str]]] = defaultdict(set)
        known_files = self.db.execute("SELECT count(*) FROM files").fetchone()[0]
        try:
            check_root("", self.root)
        except ConfigError:
            if not known_files:  # nothing there yet, nothing known: an empty NAS has been seen whole
                with self.db:
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('settled_once', 1)")
            raise NasUnavailable(f"NAS root {self.root} is missing, unreadable or empty while {known_files} files "
                                 "were known: treated as an outage, nothing reported.") from None
        statted = self.not_read = 0
        self.last_sighting, self.grown = 0.0, set()
        first_look = not self.db.execute("SELECT 1 FROM meta WHERE key = 'settled_once'").fetchone()
        with self.db:
            self.db.execute("UPDATE meta SET value = value + 1 WHERE key = 'tick'")
            self.tick_no = self.db.execute("SELECT value FROM meta WHERE key = 'tick'").fetchone()[0]
            if not self.db.execute("SELECT 1 FROM queue LIMIT 1").fetchone():
                statted = self._queue_changed_dirs(deadline - budget_seconds / 2)
            listed = self.list_queue(changes, deadline)
            settle.confirm(self, deadline)
            settle.settle(self, changes, today, deadline)
            # Not during the first look: everything is new then, and one whole walk takes it anyway.
            if self.look_again_seconds and not first_look:
                settle.settle_within_tick(self, changes, today, deadline)
        queued = self.db.execute("SELECT count(*) FROM queue").fetchone()[0]
        pending = self.db.execute("SELECT count(*) FROM files WHERE stable = 0").fetchone()[0]
        if first_look and queued == 0 and pending == 0:
            with self.db:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('settled_once', 1)")
        checked, total = self._sweep_progress()
        return TickResult({d: sorted(v) for d, v in changes.items()}, statted, listed, queued, pending,
                          self.not_read, checked, total, first_look)

    def list_queue(self, changes, deadline: float) -> int:
        """List the queued folders until the deadline (at least one); returns how many were listed."""
        listed = 0
        while listed == 0 or time.monotonic() < deadline:
            row = self.db.execute("SELECT path FROM queue ORDER BY path LIMIT 1").fetchone()
            if row is None:
                break
            self._list_dir(row[0], changes)
            self.db.execute("DELETE FROM queue WHERE path = ?", row)
            listed += 1
        return listed

    def saw_new_file(self, rel: str) -> None:
        """A new or changed file in folder ``rel``: its second look is due ``look_again_seconds`` from now."""
        self.last_sighting = time.monotonic()
        self.grown.add(rel)

    def _queue_changed_dirs(self, slice_deadline: float) -> int:
        """Stat the recent folders and a slice of the others; queue those whose mtime changed. Returns how many."""
        if not self.db.execute("SELECT 1 FROM dirs LIMIT 1").fetchone():
            self.db.execute("INSERT OR IGNORE INTO queue VALUES ('')")
            return 0
        cutoff = time.time_ns() - self.recent_ns
        # Each at least one per tick: what the budget leaves waits a tick.
        recent = self.db.execute("SELECT path, mtime_ns FROM dirs WHERE mtime_ns >= ? ORDER BY checked, path",
                                 (cutoff,)).fetchall()
        older = self.db.execute("SELECT path, mtime_ns FROM dirs WHERE mtime_ns < ? ORDER BY checked, path LIMIT ?",
                                (cutoff, self.sweep_slice)).fetchall()
        n = 0
        for batch in (recent, older):  # both least recently checked first; siblings adjacent (ordered by path)
            known = dict(batch)
            for rel, outcome in stat_folders(self.root, list(known), slice_deadline):
                n += 1
                self._checked_dir(rel, known[rel], outcome)
        return n

    def _checked_dir(self, rel: str, mtime: int, now: Outcome) -> None:
        """Record one known folder's stat; queue it for listing if its mtime changed."""
        self.db.execute("UPDATE dirs SET checked = ? WHERE path = ?", (self.tick_no, rel))
        if isinstance(now, FileNotFoundError):
            # Gone, or so the share says now: only a listing of its parent that lacks it forgets it.
            self.db.execute("INSERT OR IGNORE INTO queue VALUES (?)", (rel.rpartition("/")[0],))
        elif isinstance(now, OSError):
            self.not_read += 1
        elif now != mtime:
            self.db.execute("INSERT OR IGNORE INTO queue VALUES (?)", (rel,))

    def _sweep_progress(self) -> tuple[int, int]:
        """(folders checked since the sweep round began, folders known); a finished round starts the next."""
        start = self.db.execute("SELECT value FROM meta WHERE key = 'sweep_start'").fetchone()[0]
        total = self.db.execute("SELECT count(*) FROM dirs").fetchone()[0]
        checked = self.db.execute("SELECT count(*) FROM dirs WHERE checked >= ?", (start,)).fetchone()[0]
        if total and checked >= total:
            with self.db:
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'sweep_start'", (self.tick_no + 1,))
        return checked, total

    def _forget_dir(self, rel: str, changes) -> None:
        # A range of the index, not LIKE: '%' and '_' are ordinary characters in file names.
        under = "(dir = ? OR (dir >= ? AND dir < ?))"
        args = (rel, *_below(rel))
        for path, size, mtime, part in self.db.execute(
                f"SELECT path, size, mtime_ns, partition FROM files WHERE {under}", args).fetchall():
            if part:
                changes[dt.date.fromisoformat(part)].add((path, f"deleted-{size}-{mtime}"))
        self.db.execute(f"DELETE FROM files WHERE {under}", args)
        self.db.execute(f"DELETE FROM dirs WHERE {under.replace('dir', 'path')}", args)

    def _subdirs(self, rel: str) -> set[str]:
        """The known folders directly in ``rel``."""
        low, high = _below(rel)
        return {p for (p,) in self.db.execute("SELECT path FROM dirs WHERE path > ? AND path < ?", (low, high))
                if "/" not in p[len(low):]}

    def _list_dir(self, rel: str, changes) -> None:
        path = self._join(rel)

        def listing():
            mtime = names.stat_nas(path).st_mtime_ns  # before the listing: a change while listing shows next tick
            fd = names.open_dir(path)  # a descriptor: folders deeper than PATH_MAX list too
            try:
                with os.scandir(fd) as it:
                    return mtime, fd, list(it)
            except BaseException:
                os.close(fd)
                raise

        try:
            dir_mtime, fd, entries = retrying(listing)
        except FileNotFoundError:
            if rel:  # its parent's listing decides whether it is gone
                self.db.execute("INSERT OR IGNORE INTO queue VALUES (?)", (rel.rpartition("/")[0],))
            return
        except OSError:
            self.not_read += 1  # unreadable now: what it held stays; the inventory records it with its reason
            return
        known = {p: (s, m) for p, s, m in self.db.execute(
            "SELECT path, size, mtime_ns FROM files WHERE dir = ?", (rel,)).fetchall()}
        known_dirs = self._subdirs(rel)
        seen = set()
        try:
            for entry in entries:
                name = names.stored(entry.name)
                child = f"{rel}/{name}" if rel else name
                try:
                    if retrying(entry.is_symlink):
                        continue  # links are followed (or refused) by the inventory walk, not watched
                    if retrying(entry.is_dir):
                        known_dirs.discard(child)
                        if not self.db.execute("SELECT 1 FROM dirs WHERE path = ?", (child,)).fetchone():
                            self.db.execute("INSERT OR IGNORE INTO queue VALUES (?)", (child,))
                            self.grown.add(rel)
                        continue
                    st = retrying(entry.stat)
                except OSError:
                    seen.add(child)  # listed but not statted: kept as it was, never read as deleted
                    known_dirs.discard(child)
                    self.not_read += 1
                    continue
                seen.add(child)
                if known.get(child) != (st.st_size, st.st_mtime_ns):
                    # A changed file keeps the partition it was reported in: if it settles in another one (its
                    # StudyDate was rewritten), the old partition is reported too, so its rows are replaced.
                    self.db.execute("INSERT INTO files VALUES (?, ?, ?, ?, 0, NULL, ?) ON CONFLICT (path) DO "
                                    "UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, stable = 0, "
                                    "seen_tick = excluded.seen_tick",
                                    (child, rel, st.st_size, st.st_mtime_ns, self.tick_no))
                    self.saw_new_file(rel)
        finally:
            os.close(fd)
        for gone in set(known) - seen:
            size, mtime = known[gone]
            part = self.db.execute("SELECT partition FROM files WHERE path = ?", (gone,)).fetchone()[0]
            if part:
                changes[dt.date.fromisoformat(part)].add((gone, f"deleted-{size}-{mtime}"))
            self.db.execute("DELETE FROM files WHERE path = ?", (gone,))
        for gone_dir in known_dirs:  # read, and the folder is not in it: gone with everything below it
            self._forget_dir(gone_dir, changes)
        self.db.execute("INSERT INTO dirs VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE SET mtime_ns = "
                        "excluded.mtime_ns, "
                        "checked = excluded.checked", (rel, dir_mtime, self.tick_no))
