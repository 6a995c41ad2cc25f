"""Recording what Orthanc received in a Seq range of its /changes feed into the ``orthanc_arrivals`` table.

Our own NAS imports appear in /changes too. They are recorded as well, flagged ``from_nas`` (the index knows
the SOP Instance UID on a NAS) and with ``origin`` = ``RestApi``: the feed cannot tell them apart by itself,
skipping them would make the table depend on what the NAS index happened to hold at run time (a modality's
instance later found on a NAS would silently vanish on a rerun), and a complete ledger of what Orthanc
received is what reconciliation needs. Modality arrivals proper are ``WHERE NOT from_nas`` (or
``origin = 'DicomProtocol'``). Patient data goes into the index only; the summary carries counts.

The same concept on three layers: the asset and sensor (defs/arrivals.py), the work (pipeline/arrivals.py),
the SQL (index/arrivals.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter

from pacs_assets.index import arrivals as arrivals_sql
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.changes import fetch_arrivals, read_changes


@dataclasses.dataclass
class ArrivalsSummary:
    position: int
    changes_read: int
    new_instance_changes: int
    written: int
    from_nas: int
    kept_newer: int
    gone: int
    origins: Counter
    modalities: Counter
    totals: dict
    seconds: float


def record_arrivals(client: OrthancApi, index_path: str | os.PathLike, since: int, until: int, *,
                    concurrency: int = 4) -> ArrivalsSummary:
    """Read changes (since, until], fetch the new instances' identifiers, replace their rows. Raises
    OrthancUnavailable (one sentence) when Orthanc cannot be read."""
    started = time.monotonic()
    client.system()
    scan = read_changes(client, since, until)
    rows, gone = fetch_arrivals(client, scan.new_instances, concurrency=concurrency)
    counts = arrivals_sql.replace_arrivals(index_path, rows)
    totals = arrivals_sql.arrival_totals(index_path)
    return ArrivalsSummary(
        position=scan.position, changes_read=scan.changes, new_instance_changes=len(scan.new_instances),
        written=counts["written"], from_nas=counts["from_nas"], kept_newer=counts["kept_newer"], gone=gone,
        origins=Counter(r["origin"] or "unknown" for r in rows),
        modalities=Counter(r["modality"] or "unknown" for r in rows), totals=totals,
        seconds=time.monotonic() - started)
