"""The work of ``file_inventory``: walk a NAS (through its source) into staging, then merge one window.

The index is opened twice: a short read of the scan cache, and one transaction for the merge. The walk
itself holds no lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable

from pacs_assets.index.inventory import (
    StagingCache,
    add_records,
    load_cache,
    merge_inventory,
)
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import NasBase, NasSource
from pacs_assets.nas.dates import assign_procedure_date

# A walk that finds less than this share of the files the NAS had is an outage, not mass deletion.
OUTAGE_SHARE = 0.5


class NasOutage(RuntimeError):
    """The walk saw far fewer files than the index knew: an unmounted or partly offline NAS (one sentence)."""


@dataclasses.dataclass
class InventoryResult:
    walked: int
    known_before: int
    counts: dict[str, int]  # status -> files, in the window
    seconds: float


def take_inventory(source: NasSource, nas: NasBase, index_path: str | os.PathLike, start: dt.date, end: dt.date,
                   *, today: dt.date, progress: Callable[[int, int], None] | None = None) -> InventoryResult:
    """Walk the whole NAS and replace the inventory of the window [start, end).

    Raises ConfigError when the NAS cannot be read now and NasOutage when most of it is missing.
    """
    source.check_available()
    scanned_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    started, walked = time.monotonic(), 0
    with Staging(index_path) as staging:
        known = load_cache(staging, nas.id)
        for batch in source.scan(StagingCache(staging)):
            for rec in batch:
                rec.procedure_date, rec.date_source = assign_procedure_date(
                    rec.study_date, rec.series_date, rec.mtime_ns, nas.partitions_start, today)
            add_records(staging, batch, scanned_at)
            walked += len(batch)
            if progress:
                progress(walked, known)
        if known and walked < known * OUTAGE_SHARE:
            raise NasOutage(
                f"NAS '{nas.id}' at {nas.root} shows {walked} files where the index knew {known}: "
                "treating it as an outage (unmounted or partly offline NAS), not as deletions; index unchanged.")
        counts = merge_inventory(staging, nas.id, start, end)
    return InventoryResult(walked, known, counts, time.monotonic() - started)
