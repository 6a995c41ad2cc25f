"""When the watch (nas/watch.py) reports a file it has seen: the settle rule.

A file still being copied in looks truncated, so a file is reported only once its size and mtime held still
across two looks: a watcher cannot see an open writer on an SMB/NFS share, only what the listing says. The
second look is taken in one of two ways:

- **one tick later** (``look_again_seconds`` 0): 5-10 s after the file landed at a 5 s sensor interval, 60-120 s
  at the default 60 s: most of a new study's way to Orthanc was this wait (docs/speed.md).
- **within the tick that first saw it** (``look_again_seconds`` > 0: the NAS setting ``watch_settle_seconds``,
  1 s by default). The tick waits until that long after its last sighting of a new file, lists again the folders
  where new entries appeared if they changed meanwhile (a study still arriving joins the same tick, and so the
  same run), stats the new files again and reports those unchanged at once. It stops at the tick's deadline
  and after ``MAX_ROUNDS`` waits; what is left takes its second look on the next tick, as above.

A file reported within the tick gets a **confirmation look** on the next tick (``files.stable`` =
``REPORTED_EARLY`` until then). If it changed (its copy stalled for longer than the window) it is pending
again, and once it holds still it is reported again with its new change token: a new run reads the complete file,
whose partial version the first run recorded failed (truncated). So every reported file is still seen unchanged
across one interval, before its report or just after it; only the report comes sooner.
"""

from __future__ import annotations

import datetime as dt
import time

from pacs_assets.nas import names
from pacs_assets.nas.dates import assign_procedure_date
from pacs_assets.nas.walk import retrying

PENDING, STABLE, REPORTED_EARLY = 0, 1, 2  # files.stable
MAX_ROUNDS = 4  # waits of one tick for files still arriving; then the next tick takes over


def settle(watch, changes, today: dt.date, deadline: float, *, this_tick: bool = False) -> int:
    """Report the pending files seen on an earlier tick (``this_tick``: on this one) that are unchanged since
    that look (and older than ``settle_seconds``). Returns how many had changed: they wait for another look."""
    moved = 0
    now_ns = time.time_ns()
    for path, size, mtime, old_part in watch.db.execute(
            "SELECT path, size, mtime_ns, partition FROM files WHERE stable = 0 AND "
            f"seen_tick {'=' if this_tick else '<'} ? ORDER BY path", (watch.tick_no,)).fetchall():
        if time.monotonic() > deadline + (0 if this_tick else 5):  # reading headers: the rest waits a tick
            break
        st = _stat(watch, path)
        if st is None:
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            _seen_changed(watch, path, st)
            moved += 1
            continue
        if now_ns - mtime < watch.settle_ns:
            continue
        study_date, series_date = (watch.read_dates(str(watch.root), path, size, mtime) if watch.read_dates
                                   else (None, None))
        day, _ = assign_procedure_date(study_date, series_date, mtime, watch.start, today)
        watch.db.execute("UPDATE files SET stable = ?, partition = ? WHERE path = ?",
                         (REPORTED_EARLY if this_tick else STABLE, day.isoformat(), path))
        changes[day].add((path, f"{size}-{mtime}"))
        if old_part and old_part != day.isoformat():
            changes[dt.date.fromisoformat(old_part)].add((path, f"moved-{size}-{mtime}"))
    return moved


def confirm(watch, deadline: float) -> None:
    """The confirmation look at the files reported within the last tick: unchanged, they are stable; changed,
    pending again (with their new size and mtime, seen on this tick)."""
    for path, size, mtime in watch.db.execute(
            "SELECT path, size, mtime_ns FROM files WHERE stable = ? ORDER BY path", (REPORTED_EARLY,)).fetchall():
        if time.monotonic() > deadline:
            return  # the rest on the next tick
        st = _stat(watch, path)
        if st is None:
            continue
        if (st.st_size, st.st_mtime_ns) == (size, mtime):
            watch.db.execute("UPDATE files SET stable = ? WHERE path = ?", (STABLE, path))
        else:
            _seen_changed(watch, path, st)


def settle_within_tick(watch, changes, today: dt.date, deadline: float) -> None:
    """The second look at this tick's new files, taken ``look_again_seconds`` after the last of them was seen."""
    for _ in range(MAX_ROUNDS):
        if not watch.db.execute("SELECT 1 FROM files WHERE stable = 0 AND seen_tick = ? LIMIT 1",
                                (watch.tick_no,)).fetchone():
            return
        wake = watch.last_sighting + watch.look_again_seconds
        if wake > deadline:
            return  # no budget left: the next tick takes the second look
        time.sleep(max(0.0, wake - time.monotonic()))
        if _relist_grown(watch, changes, deadline):
            continue  # more arrived while we waited: wait for those too, then look at all of them
        if not settle(watch, changes, today, deadline, this_tick=True):
            return


def _relist_grown(watch, changes, deadline: float) -> bool:
    """List again the folders where this tick saw new entries, if they changed since; True if that (or a new
    folder below them) brought more new files."""
    before = watch.last_sighting
    for rel in sorted(watch.grown):
        mtime = watch.db.execute("SELECT mtime_ns FROM dirs WHERE path = ?", (rel,)).fetchone()
        try:
            now = retrying(lambda rel=rel: names.stat_nas(watch._join(rel)).st_mtime_ns)
        except OSError:
            continue  # the next tick's stat of the folder decides
        if mtime is None or now != mtime[0]:
            watch.db.execute("INSERT OR IGNORE INTO queue VALUES (?)", (rel,))
    watch.list_queue(changes, deadline)
    return watch.last_sighting != before


def _stat(watch, path: str):
    try:
        return retrying(lambda: names.stat_nas(watch._join(path)))
    except OSError:
        # Gone or unreadable now: its folder's listing decides (a deletion changed the folder's mtime).
        watch.db.execute("INSERT OR IGNORE INTO queue VALUES (?)", (path.rpartition("/")[0],))
        return None


def _seen_changed(watch, path: str, st) -> None:
    """A file that changed since its last look: pending, as first seen now (a later look must find it unchanged)."""
    watch.db.execute("UPDATE files SET size = ?, mtime_ns = ?, stable = 0, seen_tick = ? WHERE path = ?",
                     (st.st_size, st.st_mtime_ns, watch.tick_no, path))
    watch.saw_new_file(path.rpartition("/")[0])
