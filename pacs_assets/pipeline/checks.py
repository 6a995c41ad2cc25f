"""The asset checks' work, as plain functions returning ``(passed, metadata)``. Metadata carries counts and
NAS ids only, never UIDs, paths or patient data.

The same concept on two layers: the Dagster asset checks (defs/checks.py) and their work (pipeline/checks.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections import Counter

from pacs_assets.identity.model import DIFFERENT, VARIANT
from pacs_assets.index import consistency
from pacs_assets.index.connection import session
from pacs_assets.index.patient_records import held_counts
from pacs_assets.nas.base import KindCheck, NasSettings
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.client import OrthancUnavailable
from pacs_assets.pipeline.identity_guard import IdentityGuard, index_collisions
from pacs_assets.pipeline.reconciliation import orthanc_sweep


def every_file_accounted_for(index_path: str | os.PathLike, nas_id: str, start: dt.date,
                             end: dt.date) -> tuple[bool, dict]:
    counts = consistency.unaccounted_files(index_path, nas_id, start, end)
    return counts["dicom_not_indexed"] == 0 and counts["without_reason"] == 0, counts


def no_sop_instance_conflicts(index_path: str | os.PathLike, nas_id: str) -> tuple[bool, dict]:
    groups = [g for g in consistency.sop_conflicts(index_path) if nas_id in g[0].split(",")]
    table = "\n".join(f"| {nas_ids} | {differs} | {n} |" for nas_ids, differs, n in groups)
    return not groups, {"conflicting_instances": sum(g[2] for g in groups),
                        "conflicts": f"| NAS | differs | instances |\n|---|---|---|\n{table}" if groups else "none"}


def no_uid_conflicts(index_path: str | os.PathLike, nas_id: str) -> tuple[bool, dict]:
    """No file of this NAS shares a SOP Instance UID with a file of different content (on this NAS or
    another), and none ended ``uid_conflict``. Counts only: ``pacs history --status uid_conflict`` names them."""
    found = consistency.uid_conflicts(index_path, nas_id)
    across = found.pop("across")
    table = "\n".join(f"| {other} | {n} |" for other, n in across.items())
    metadata = {**found, "groups_across_nas": sum(across.values()),
                "across_nas": f"| other NAS | UIDs with different content |\n|---|---|\n{table}" if across else "none"}
    return not (found["uid_conflict_files"] or found["groups_within_nas"] or across), metadata


def indexed_instances_in_orthanc(index_path: str | os.PathLike, nas_id: str, client: OrthancApi,
                                 start: dt.date | None = None, end: dt.date | None = None) -> tuple[bool, dict]:
    """Every file of the window [start, end) (all dates if None) that the ledger says is in Orthanc really is,
    asked in batched ``/tools/find`` queries by SOP Instance UID and matched by Orthanc ID."""
    try:
        client.system()
        counts = orthanc_sweep(index_path, nas_id, client, start, end)
    except OrthancUnavailable as exc:
        return False, {"error": str(exc)}
    return counts["missing_in_orthanc"] == 0, counts


def patient_identity(index_path: str | os.PathLike, nas_id: str, guard: IdentityGuard) -> tuple[dict, dict]:
    """(different people, variants) involving this NAS, as check metadata: counts per kind, no names or IDs.
    'passed' is no collision of that verdict; the held files of each are counted by ``held_files``."""
    found = [c for c in index_collisions(guard, index_path) if any(m.record.source == nas_id for m in c.members)]
    out = []
    for verdict in (DIFFERENT, VARIANT):
        mine = [c for c in found if c.verdict == verdict]
        kinds = Counter(c.kind for c in mine)
        table = "\n".join(f"| {kind} | {n} |" for kind, n in sorted(kinds.items()))
        by_kind = f"| kind | collisions |\n|---|---|\n{table}" if mine else "none"
        out.append({"collisions": len(mine), "by_kind": by_kind, "see": "pacs identity"})
    return out[0], out[1]


def held_files(index_path: str | os.PathLike, nas_id: str) -> tuple[bool, dict]:
    """Files of this NAS held now (their patient identity collides), by kind of collision."""
    with session(index_path, read_only=True) as con:
        counts = held_counts(con, nas_id)
    table = "\n".join(f"| {kind} | {n} |" for kind, n in sorted(counts.items()))
    return not counts, {"files_held": sum(counts.values()),
                        "held_by_kind": f"| kind | files held |\n|---|---|\n{table}" if counts else "none"}


def kind_check(spec: KindCheck, nas: NasSettings, index_path: str | os.PathLike,
               client: OrthancApi) -> tuple[bool, dict]:
    """A kind's own check (``NasKind.checks``), handed the index's query for this NAS: the kind never reads the
    index itself, and the SQL stays in index/consistency.py."""
    return spec.run(nas, functools.partial(consistency.stored_files_of_format, index_path, nas.id), client)
