"""The work of ``file_inventory``: walk a NAS (through its source) into staging, then merge one window.

An incremental run walks only the folders that changed (``folders``) and merges only their rows; a run
without folders (an explicit backfill) walks everything. The index (with the scan cache file attached) is
opened in short sessions: a count before the walk, one look at the cache for the files it lacks, and the
merge. The walk itself holds no lock.

The same concept on two layers: the work of ``file_inventory`` (pipeline/inventory.py) and its SQL
(index/inventory.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable, Sequence

from pacs_assets.index.connection import WALK_MEMORY_LIMIT
from pacs_assets.index.inventory import add_records, carry_over_links, carry_over_unread, merge_inventory
from pacs_assets.index.staging import Staging
from pacs_assets.index.walk_cache import StagingCache
from pacs_assets.nas.base import NasSettings, NasSource
from pacs_assets.nas.dates import assign_procedure_date
from pacs_assets.nas.registry import kind_of
from pacs_assets.nas.walk import check_root

# A walk that finds less than this share of the files the NAS had is an outage, not mass deletion.
OUTAGE_SHARE = 0.5


class NasOutage(RuntimeError):
    """The walk saw far fewer files than the index knew: an unmounted or partly offline NAS (one sentence)."""


@dataclasses.dataclass
class Walked:
    files: int  # files the walk met (read now, or unchanged and taken from the scan cache)
    known: int  # files the scan cache knew there before
    not_read: int = 0  # folders (and files) whose listing or stat kept failing or was refused
    kept: int = 0  # known rows kept as they were because their folder (or file) could not be read
    unread: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (stored path, scope)


@dataclasses.dataclass
class InventoryResult:
    walked: int
    known_before: int
    counts: dict[str, int]  # status -> files, in the window
    seconds: float
    not_read: int = 0  # what could not be read (see Walked); its known rows were kept
    kept: int = 0
    unread: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def take_inventory(source: NasSource, nas: NasSettings, index_path: str | os.PathLike, start: dt.date, end: dt.date,
                   *, today: dt.date, folders: Sequence[str] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> InventoryResult:
    """Walk the NAS (or only ``folders``, each without its subfolders) and replace the inventory of the
    window [start, end): all of it, or only the rows of the folders walked.

    Raises ConfigError when the NAS cannot be read now and NasOutage when most of it is missing.
    """
    if folders is not None and not kind_of(nas).has_folders:
        folders = None  # a catalog-backed kind: every scan is whole
    started = time.monotonic()
    with Staging(index_path, memory_limit=WALK_MEMORY_LIMIT) as staging:
        seen = walk_into(staging, source, nas, today=today, folders=folders, progress=progress)
        counts = merge_inventory(staging, nas.id, start, end, folders)
    return InventoryResult(seen.files, seen.known, counts, time.monotonic() - started, seen.not_read, seen.kept,
                           seen.unread)


def walk_into(staging: Staging, source: NasSource, nas: NasSettings, *, today: dt.date,
              folders: Sequence[str] | None = None,
              progress: Callable[[int, int], None] | None = None) -> Walked:
    """Stream a walk (whole, or of ``folders``) into staging with procedure dates assigned; refuse an outage.
    What could not be read keeps its known rows (never read as deleted)."""
    source.check_available()
    scanned_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    walked = 0
    staging.nas = (nas.id, str(source.root))
    # A bulk scan offers every walked file to the cache and yields only what it must parse (and what is not a
    # regular file); the unchanged files' rows stay in the scan cache, which the merge reads.
    with StagingCache(staging, nas.partitions_start, today, folders,
                      on_offer=lambda _: progress and progress(walked + cache.seen, cache.known)) as cache:
        for batch in source.scan(cache, folders=folders):
            for rec in batch:
                rec.procedure_date, rec.date_source = assign_procedure_date(
                    rec.study_date, rec.series_date, rec.mtime_ns, nas.partitions_start, today)
            add_records(staging, batch, scanned_at)
            walked += len(batch)
            if progress:
                progress(walked + cache.seen, cache.known)
        walked += cache.seen
        known = cache.look_ahead().known
    if folders is not None:
        carry_over_links(staging, source.root, folders)
    kept = carry_over_unread(staging, source.unread)
    # Once more after the walk: a share unmounted while we walked must not read as deleted folders.
    check_root(nas.id, source.root)
    if folders is None and known and walked < known * OUTAGE_SHARE:
        raise NasOutage(
            f"NAS '{nas.id}' at {nas.root} shows {walked} files where the index knew {known}: "
            "treating it as an outage (unmounted or partly offline NAS), not as deletions; index unchanged.")
    return Walked(walked, known, len(source.unread), kept, list(source.unread))
