"""The nightly reconciliation's work: walk the whole NAS, merge what differs, then catch up exactly the dates
whose content changed (their hierarchy, then their uploads).

``reconcile`` is the one place besides an explicit backfill that walks everything. On an unchanged NAS it
writes nothing to the index and reports no changed date, so no partition is materialized again.
``catch_up`` rebuilds the hierarchy of the dates whose instances lag the inventory and uploads the dates
with instances not yet in Orthanc; ``orthanc_sweep`` checks every stored instance against Orthanc's
instance list (the whole-NAS check belongs here, not to every run).

The same concept on three layers: the Dagster assets and job (defs/reconciliation.py), the work
(pipeline/reconciliation.py), the SQL (index/reconciliation.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Callable

from pacs_assets.index import consistency
from pacs_assets.index.connection import WALK_MEMORY_LIMIT, session
from pacs_assets.index.reconciliation import date_ranges, dates_to_rebuild, dates_to_upload, reconcile_inventory
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import NasSettings, NasSource
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.pipeline.hierarchy import build_hierarchy
from pacs_assets.pipeline.inventory import walk_into
from pacs_assets.pipeline.upload import ImportSummary, upload_window

# UIDs per /tools/find (its cost in Orthanc 1.10.1 grows faster than the list); and how many Orthanc instances
# per instance to check make listing them all cheaper (~4 us each) than finding ours by UID (~0.3 ms each).
FIND_BATCH = 100
LIST_FACTOR = 50


@dataclasses.dataclass
class Reconciled:
    walked: int
    known_before: int
    changes: dict[dt.date, dict[str, int]]  # procedure date -> {'added'|'changed'|'deleted': files}
    seconds: float
    not_read: int = 0  # folders/files that could not be read: their known rows were kept (pipeline/inventory.py)
    kept: int = 0

    def totals(self) -> Counter:
        out: Counter = Counter()
        for kinds in self.changes.values():
            out.update(kinds)
        return out


def reconcile(source: NasSource, nas: NasSettings, index_path: str | os.PathLike, *, today: dt.date,
              progress: Callable[[int, int], None] | None = None) -> Reconciled:
    """Walk everything; merge the dates that changed in one transaction. Raises ConfigError / NasOutage."""
    started = time.monotonic()
    with Staging(index_path, memory_limit=WALK_MEMORY_LIMIT) as staging:
        seen = walk_into(staging, source, nas, today=today, progress=progress)
        changes = reconcile_inventory(staging, nas.id)
    return Reconciled(seen.files, seen.known, changes, time.monotonic() - started, seen.not_read, seen.kept)


@dataclasses.dataclass
class CaughtUp:
    rebuilt: list[dt.date] = dataclasses.field(default_factory=list)  # dicom_index dates rewritten
    uploaded: list[dt.date] = dataclasses.field(default_factory=list)  # orthanc_instances dates with uploads
    summary: ImportSummary = dataclasses.field(default_factory=ImportSummary)
    held: Counter = dataclasses.field(default_factory=Counter)  # collision kind -> files held


def catch_up(source: NasSource, client: OrthancApi, index_path: str | os.PathLike, nas_id: str, *,
             on_rebuilt: Callable[[list[dt.date]], None] | None = None, **upload_options) -> CaughtUp:
    """Rebuild the dates whose hierarchy lags, then upload the dates with pending instances, range by range.

    ``on_rebuilt`` hears about the rebuilt dates before any upload starts (an upload may fail: the index is
    already right). Raises OrthancUnavailable / OrthancRefused like ``upload_window``.
    """
    done = CaughtUp()
    identity = upload_options.get("identity")
    decided_since = identity.book.last_made_at if identity else None
    with session(index_path) as con:  # the usual night: nothing to rebuild, both reads in one session
        done.rebuilt = dates_to_rebuild(con, nas_id)
        pending = None if done.rebuilt else dates_to_upload(con, nas_id, decided_since)
    for start, end in date_ranges(done.rebuilt):
        build_hierarchy(index_path, nas_id, start, end)
    if on_rebuilt:
        on_rebuilt(done.rebuilt)
    if pending is None:
        pending = dates_to_upload(index_path, nas_id, decided_since)
    for start, end in date_ranges(pending):
        window = upload_window(source, client, index_path, nas_id, start, end, **upload_options)
        done.summary.add(window.summary)
        done.held.update(window.held)
    done.uploaded = pending
    return done


def orthanc_sweep(index_path: str | os.PathLike, nas_id: str, client: OrthancApi,
                  start: dt.date | None = None, end: dt.date | None = None) -> dict[str, int]:
    """Every instance the ledger says is in Orthanc (in [start, end), or all): how many Orthanc lacks.

    When Orthanc holds at most ``LIST_FACTOR`` times as many instances as there are to check (a whole-NAS
    sweep), its instance list is read (~4-11 us an instance) and compared with the ledger's Orthanc IDs. When
    that list is exact (``OrthancApi.held_instance_ids``: nothing came or went while it was read), what it
    lacks is missing, whatever the number: an emptied or replaced Orthanc costs no more than a healthy one.
    Otherwise, and for a window small against Orthanc, the unlisted instances are looked up by SOP Instance
    UID in batched ``/tools/find`` queries (~0.3 ms each): an instance is missing when it is not found.
    """
    return full_sweep(index_path, nas_id, client, start, end)[0]


def full_sweep(index_path: str | os.PathLike, nas_id: str, client: OrthancApi, start: dt.date | None = None,
               end: dt.date | None = None) -> tuple[dict[str, int], tuple[int, int] | None]:
    """``orthanc_sweep``, and the mark (instance count, last change Seq) Orthanc kept all along the sweep, if it
    did: then what the sweep saw is what Orthanc held at that mark."""
    checked = consistency.stored_count(index_path, nas_id, start, end)
    before = client.listing_mark()
    if checked and before[0] <= LIST_FACTOR * checked:
        held, mark = client.held_instance_ids()
        if mark is not None and not held:  # an emptied Orthanc: every entry missing, none read
            return {"checked": checked, "missing_in_orthanc": checked}, mark
        if mark is not None:  # exact: the IDs alone settle it
            ids = consistency.stored_ids(index_path, nas_id, start, end)
            return {"checked": len(ids), "missing_in_orthanc": sum(1 for i in ids if i not in held)}, mark
        rows = [row for batch in consistency.stored_instances(index_path, nas_id, start, end) for row in batch]
        unsure = [row for row in rows if row[1] not in held]
        batches = [unsure[i:i + FIND_BATCH] for i in range(0, len(unsure), FIND_BATCH)]
        # What the list held may have gone since: no mark (the next sweep is a full one).
        return {"checked": len(rows), "missing_in_orthanc": missing_of(client, batches)}, None
    batches = list(consistency.stored_instances(index_path, nas_id, start, end, batch=FIND_BATCH))
    missing = missing_of(client, batches)  # every entry looked up: unchanged all along, they answer for the mark
    checked = sum(len(batch) for batch in batches)
    return {"checked": checked, "missing_in_orthanc": missing}, before if client.listing_mark() == before else None


def missing_of(client: OrthancApi, batches: list[list[tuple[str, str]]]) -> int:
    """How many of these (SOP Instance UID, Orthanc ID) Orthanc does not hold: one ``/tools/find`` a batch."""
    missing = 0
    for batch in batches:
        found = client.find_instance_ids([sop for sop, _ in batch], expected=[oid for _, oid in batch])
        missing += sum(1 for _, orthanc_id in batch if orthanc_id not in found)
    return missing
