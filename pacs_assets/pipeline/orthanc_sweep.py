"""The nightly whole-NAS Orthanc check at a cost that follows what changed, with Orthanc's whole list read weekly.

Orthanc 1.10.1's ``/changes`` feed cannot say what was deleted: a deletion logs no change and erases the
instance's ``NewInstance`` (measured). It can still prove that nothing was. Say a full sweep read Orthanc's
exact list while it held C0 instances and its last change was L0. Every instance stored since has exactly one
``NewInstance`` change after L0 while it stays, and none of the C0 instances gains one unless it was deleted
and stored again. So if Orthanc now holds C0 + N instances, N being the ``NewInstance`` changes after L0,
nothing it held at L0 is gone. Then only the ledger's attempts recorded since the last sweep are checked: those
among the new changes are there, the rest are looked up by UID. Any doubt means a full sweep, which is also
run when there is no clean mark, another Orthanc, a changes log that went backwards, or something missing.
Either way a deleted instance is noticed the night after it went.

Every entry is still verified against Orthanc's own list at least weekly, but not all in one night (reading
200,000 IDs costs ~2 s, 2-3x walking the NAS): a *cycle* reads the list a slice a night, by offset, over at most
``SLICE_NIGHTS`` nights, up to the instance count Orthanc had when the cycle began, and keeps the IDs listed.
That is exact because the cycle leans on the same chain: while each night proves nothing Orthanc
held is gone, those first offsets hold the same instances every night (new ones are listed after them), and
an ID listed is still there. Any break of the chain ends the cycle with a full sweep. When the last slice is
read, every ledger entry up to the cycle's start must have been listed; one that was not means a full sweep
that very night, which settles it. Where Orthanc is far bigger than the NAS (``LIST_FACTOR``), listing it
costs more than finding the NAS's entries by UID, so instead a full sweep by UID runs every ``FULL_EVERY``.

The same concept on two layers: the work (pipeline/orthanc_sweep.py) and the SQL (index/orthanc_sweeps.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os

from pacs_assets.index.orthanc_sweeps import (
    SweepCycle,
    SweepMark,
    entries_since,
    last_attempt_id,
    ledger_extent,
    marks,
    save_mark,
    save_slice,
)
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.changes import read_changes
from pacs_assets.pipeline.reconciliation import FIND_BATCH, LIST_FACTOR, full_sweep, missing_of

FULL_EVERY = dt.timedelta(days=7)
SLICE_NIGHTS = 7  # a cycle's nights at most: every entry listed again within FULL_EVERY of its last listing
DAY = dt.timedelta(days=1)


def nightly_sweep(index_path: str | os.PathLike, nas_id: str, client: OrthancApi, *,
                  now: dt.datetime | None = None) -> dict:
    """Counts of the whole-NAS check: ``checked`` (ledger entries looked at), ``missing_in_orthanc``, ``sweep``
    ('full', or 'changes' when the last clean mark proved the rest) and, then, ``listed``: the IDs of Orthanc's list
    read for the cycle."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    mark, cycle = marks(index_path, nas_id)
    # A cycle that stalled (its slices never read) leaves full_at behind: a full sweep after twice FULL_EVERY.
    if mark is not None and mark.orthanc == client.url and now - mark.full_at < 2 * FULL_EVERY:
        counts = _since(index_path, nas_id, client, mark)
        if counts is not None:
            listed = 0 if counts["missing_in_orthanc"] else _slice(index_path, nas_id, client, mark, cycle, now)
            if listed is not None:
                return {**counts, "listed": listed}
    attempt = last_attempt_id(index_path, nas_id)  # before the ledger is read: a later entry is checked next time
    counts, seen = full_sweep(index_path, nas_id, client)
    clean = seen is not None and counts["missing_in_orthanc"] == 0
    save_mark(index_path, nas_id, SweepMark(client.url, *seen, attempt, now) if clean else None, full=True)
    return {**counts, "sweep": "full"}


def _slice(index_path: str | os.PathLike, nas_id: str, client: OrthancApi, mark: SweepMark,
           cycle: SweepCycle | None, now: dt.datetime) -> int | None:
    """Tonight's share of the cycle: how many IDs of Orthanc's list were read; None when a full sweep must run
    instead (the cycle ended with a ledger entry never listed, or, Orthanc being far bigger than the NAS, the
    last full sweep is ``FULL_EVERY`` old)."""
    if cycle is None:
        attempt, stored = ledger_extent(index_path, nas_id)  # first: these entries were in Orthanc when counted
        count, _ = client.listing_mark()
        if count > LIST_FACTOR * stored:
            return 0 if now - mark.full_at < FULL_EVERY else None
        cycle = SweepCycle(count, attempt, now, 0)
    # At least an equal share a night, more when nights were missed: done by the cycle's last night.
    nights_left = max(1, round((cycle.started_at + (SLICE_NIGHTS - 1) * DAY - now) / DAY) + 1)
    left = cycle.positions - cycle.next_offset
    share = min(left, max(math.ceil(cycle.positions / SLICE_NIGHTS), math.ceil(left / nights_left)))
    listed = client.instance_slice(cycle.next_offset, cycle.next_offset + share)
    unseen = save_slice(index_path, nas_id, dataclasses.replace(cycle, next_offset=cycle.next_offset + share),
                        listed)
    return None if unseen else len(listed)


def _since(index_path: str | os.PathLike, nas_id: str, client: OrthancApi, mark: SweepMark) -> dict | None:
    """The check from the mark on, or None when the changes since do not prove that nothing Orthanc held
    then is gone."""
    count, last = client.listing_mark()
    if last < mark.last_seq:  # Orthanc's database replaced, or its changes log cleared
        return None
    scan = read_changes(client, mark.last_seq, until=last)
    arrived = {orthanc_id for _, orthanc_id, _ in scan.new_instances}
    if not scan.done or scan.orthanc_last is not None or count != mark.instance_count + len(arrived):
        return None
    attempt, rows = entries_since(index_path, nas_id, mark.last_attempt_id)
    unsure = [row for row in rows if row[1] not in arrived]
    missing = missing_of(client, [unsure[i:i + FIND_BATCH] for i in range(0, len(unsure), FIND_BATCH)])
    if missing:  # the next sweep is a full one, until nothing is missing
        save_mark(index_path, nas_id, None)
    elif (count, last, attempt) != (mark.instance_count, mark.last_seq, mark.last_attempt_id):  # else no write
        save_mark(index_path, nas_id, SweepMark(client.url, count, last, attempt, mark.full_at))
    return {"checked": len(rows), "missing_in_orthanc": missing, "sweep": "changes"}
