"""The nightly whole-NAS Orthanc check at a cost that follows what changed, with a full sweep at least weekly.

Orthanc 1.10.1's ``/changes`` feed cannot say what was deleted: a deletion logs no change and erases the
instance's ``NewInstance`` (measured). It can still prove that nothing was. Say a full sweep read Orthanc's
exact list while it held C0 instances and its last change was L0. Every instance stored since has exactly one
``NewInstance`` change after L0 while it stays, and none of the C0 instances gains one unless it was deleted
and stored again. So if Orthanc now holds C0 + N instances, N being the ``NewInstance`` changes after L0,
nothing it held at L0 is gone. Then only the ledger's attempts recorded since the last sweep are checked: those
among the new changes are there, the rest are looked up by UID. Any doubt means a full sweep, which is also
run when there is no clean mark, another Orthanc, a changes log that went backwards, something missing, or a
full sweep older than ``FULL_EVERY``. Either way a deleted instance is noticed the night after it went.

The same concept on two layers: the work (pipeline/orthanc_sweep.py) and the SQL (index/orthanc_sweeps.py).
"""

from __future__ import annotations

import datetime as dt
import os

from pacs_assets.index.orthanc_sweeps import SweepMark, entries_since, last_attempt_id, last_mark, save_mark
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.changes import read_changes
from pacs_assets.pipeline.reconciliation import FIND_BATCH, full_sweep, missing_of

FULL_EVERY = dt.timedelta(days=7)


def nightly_sweep(index_path: str | os.PathLike, nas_id: str, client: OrthancApi, *,
                  now: dt.datetime | None = None) -> dict:
    """Counts of the whole-NAS check: ``checked`` (ledger entries looked at), ``missing_in_orthanc`` and
    ``sweep`` ('full', or 'changes' when the last clean full sweep's mark proved the rest)."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    mark = last_mark(index_path, nas_id)
    if mark is not None and mark.orthanc == client.url and now - mark.full_at < FULL_EVERY:
        counts = _since(index_path, nas_id, client, mark)
        if counts is not None:
            return counts
    attempt = last_attempt_id(index_path, nas_id)  # before the ledger is read: a later entry is checked next time
    counts, seen = full_sweep(index_path, nas_id, client)
    clean = seen is not None and counts["missing_in_orthanc"] == 0
    save_mark(index_path, nas_id, SweepMark(client.url, *seen, attempt, now) if clean else None)
    return {**counts, "sweep": "full"}


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
