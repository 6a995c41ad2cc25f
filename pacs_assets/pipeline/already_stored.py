"""Before any upload: which of the staged files Orthanc already holds, asked in bulk, recorded without sending.

After the index was lost or rebuilt, every file looks pending, and re-sending costs Orthanc a full write and
delete per file (measured on 1.10.1). Instead Orthanc is asked, and only what it lacks is uploaded. Orthanc's
IDs are deterministic (a SHA-1 of PatientID and UIDs: orthanc/client.py), so each staged file's instance and
series IDs are computed here, under the PatientID it would be sent with (``send_as``: its ID domain, a decision).

A series of ``SERIES_MIN`` staged files or more is asked as a whole: its instance IDs (none listed means Orthanc
holds none of them: every file is a miss and nothing more is asked, which helps a first import too), then, if
those IDs are exactly ours, ``GET /series/{id}/statistics``. The instance IDs of ``SERIES_PER_FIND`` such series
come from one expanded ``/tools/find`` of their Series Instance UIDs (~2 ms per series on 1.10.1, against ~5 ms
for a ``GET /series/{id}``, which a UID that list matching would misread still gets). When its instance count
equals ours (so nothing came or went in between) and its ``DicomUncompressedSize`` equals the sum of the body sizes
we would send, every file of the series is a hit (``FOUND_SERIES``). On 1.10.1 that field is the sum of the
``FileSize`` that ``/tools/find`` shows per instance, i.e. of the DICOM files as received (measured: SQLite index
with and without ``StorageCompression``, PostgreSQL index); other attachments (``dicom-until-pixel-data``, which
compression adds, and user ones) count only in ``UncompressedSize``. The two requests cost ~4 ms each for a series
of 100 files, against ~25 ms for one ``/tools/find`` of 100 UIDs with ``Expand``. Anything else (an instance missing
or extra, another total, two files with one ID and different sizes, a file unreadable now) falls back, for the files
of that series Orthanc lists, to the per-file lookup: 100 SOP Instance UIDs per ``/tools/find``, a hit being the
same Orthanc ID with the same stored size as our body (``FOUND``). Smaller series go that way too, batched across
series: below ~5-20 files per series, two requests per series cost more than their share of a find.

What a hit proves: Orthanc holds an instance with the file's Orthanc ID (its PatientID as sent and its three
UIDs), and its stored size is the size of the body we would send; for ``FOUND_SERIES``, Orthanc's series holds
exactly the instance IDs of our files (none missing, none extra) and its stored sizes add up to ours, instead of
being equal one by one. Neither compares bytes (that would be one request per file). So a file reusing the
UIDs with the same size is recorded as in Orthanc (by both), and so are two files of one series whose sizes
differ from Orthanc's copies by amounts that cancel exactly (by the series check). This is accepted: the file
set is exact; a tool that rewrites a header usually changes every file of a series the same way, which a
sum sees; and the alternative, sending the file for the upload's MD5 comparison, costs Orthanc a full write per
file, which is what this step exists to avoid.

A hit is ``duplicate`` when the ledger knows the upload that put the instance there (or another file of this
run has its ID), else ``imported`` (the index was rebuilt: the upload on record is gone, and it was ours). An
instance in ``skip`` (an interrupted upload of ours, index/journal.py decides) is never a hit.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

from pacs_assets.index import ledger
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, NasSource, SendAs
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.ids import orthanc_instance_id, orthanc_series_id

FOUND = "already in Orthanc (found by its UIDs, same size): recorded without sending"
FOUND_SERIES = ("already in Orthanc (its series holds exactly these instances, same total size): "
                "recorded without sending")
BATCH = 100  # UIDs per /tools/find: longer lists cost more per UID on 1.10.1 (docs/speed.md)
SERIES_MIN = 10  # staged files of one series from which it is asked as a whole (break-even ~5-20, measured)
SERIES_PER_FIND = 20  # whole series whose instance lists one /tools/find asks (5: no better, measured)
GROUP_FILES = 5_000  # files at most in such a group (one lookup: its IDs listed, sizes summed)
LOOKUPS_IN_FLIGHT = 3  # requests at once (Orthanc answers each in its own HTTP thread)
LOOKUPS_AHEAD = 32  # lookups queued at most: they go on while this thread writes the ledger


LEDGER_BATCH = 10_000  # hits per ledger write: each opens the index (~20-50 ms); per 100: 5 s per 10,000


Sent = tuple[FileRecord, "SendAs | None", str]  # a staged file, the identity it goes under, its Orthanc ID
Hits = list[tuple[FileRecord, str, str]]  # (file, Orthanc instance ID, how it was found)


def _sent(rec: FileRecord, send_as: Callable[[FileRecord], SendAs | None]) -> Sent:
    identity = send_as(rec)
    return rec, identity, orthanc_instance_id(identity.patient_id if identity else rec.patient_id,
                                              rec.study_instance_uid, rec.series_instance_uid, rec.sop_instance_uid)


def _find_hits(source: NasSource, client: OrthancApi, batch: list[Sent], skip: frozenset[str]) -> Hits:
    """The files of ``batch`` Orthanc holds (same Orthanc ID, same stored size): one ``/tools/find``. A file
    sent under another identity is looked for under that one, with the size of what we send."""
    found = client.find_instances([rec.sop_instance_uid for rec, _, _ in batch], expected=[oid for *_, oid in batch])
    hits = []
    for rec, identity, oid in batch if found else ():
        if oid not in found or oid in skip:
            continue
        try:
            size = source.upload_body(rec, identity).length
        except Exception:  # noqa: BLE001 - unreadable now: the upload will record why
            continue
        if size == found[oid]:
            hits.append((rec, oid, FOUND))
    return hits


def _same_total(source: NasSource, client: OrthancApi, series_id: str, ours: dict[str, list[Sent]]) -> bool:
    """Orthanc's copy of the series has as many instances as ``ours`` (distinct IDs) and, in sum, the size of the
    bodies we would send. False when that cannot be said: a file unreadable now, one ID with two sizes."""
    total = 0
    for files in ours.values():
        try:
            sizes = {source.upload_body(rec, identity).length for rec, identity, _ in files}
        except Exception:  # noqa: BLE001 - unreadable now: the per-file lookup skips it, the upload records why
            return False
        if len(sizes) != 1:  # one ID, two different files: each is compared with Orthanc's copy on its own
            return False
        total += sizes.pop()
    return client.series_dicom_size(series_id) == (len(ours), total)


def _series_hits(source: NasSource, client: OrthancApi, batch: list[Sent], skip: frozenset[str], *,
                 listed: bool = False) -> Hits:
    """The files of NAS series Orthanc holds: a series as a whole when its copy is provably ours (module
    docstring), else per file, asking only for the IDs its series lists. Several Orthanc series when the files
    go under several identities. ``listed``: the instance lists of all of them in one ``/tools/find`` (their
    UIDs are ``_listable``), else one ``GET /series/{id}`` each."""
    by_series: dict[str, dict[str, list[Sent]]] = {}
    series_ids: dict[tuple, str] = {}  # a SHA-1 per series, not per file
    for sent in batch:
        rec, identity = sent[0], sent[1]
        key = (identity.patient_id if identity else rec.patient_id, rec.study_instance_uid, rec.series_instance_uid)
        series_id = series_ids.get(key) or series_ids.setdefault(key, orthanc_series_id(*key))
        by_series.setdefault(series_id, {}).setdefault(sent[2], []).append(sent)
    lists = client.find_series_instances(sorted({key[2] for key in series_ids}), expected=by_series) if listed \
        else None
    hits: Hits = []
    for series_id, ours in by_series.items():
        held = set((lists.get(series_id) if lists is not None else client.series_instance_ids(series_id)) or ())
        if not held:  # a 404: Orthanc holds no file of it (a first import stops here)
            continue
        if held == ours.keys() and _same_total(source, client, series_id, ours):
            hits += [(rec, oid, FOUND_SERIES) for oid, files in ours.items() if oid not in skip for rec, _, _ in files]
            continue
        present = [sent for oid in sorted(held & ours.keys()) for sent in ours[oid]]
        for i in range(0, len(present), BATCH):
            hits += _find_hits(source, client, present[i:i + BATCH], skip)
    return hits


def _listed_series_hits(source: NasSource, client: OrthancApi, batch: list[Sent], skip: frozenset[str]) -> Hits:
    return _series_hits(source, client, batch, skip, listed=True)


def _listable(series_uid: str | None) -> bool:
    """A UID that list matching takes as itself: not empty (that matches every series), no separator, no
    wildcard."""
    return bool(series_uid) and not any(c in series_uid for c in "\\*?")


def _staged_series(staging: Staging) -> Iterator[list[FileRecord]]:
    """The staged records, one NAS series (PatientID, study, series) at a time."""
    records = ledger.iter_staged(staging, 1000, order="patient_id, study_instance_uid, series_instance_uid, file_path")
    for _, series in groupby(records, key=lambda r: (r.patient_id, r.study_instance_uid, r.series_instance_uid)):
        yield list(series)


def _columns(hits: Hits, seen: set[str]) -> dict[str, list]:
    """The hits as ledger.FOUND_COLUMNS. ``by_run``: another file of this run has that ID (Orthanc already had
    it: a duplicate, as when the ledger knows the upload that put it there, which ledger.append_found asks)."""
    by_run = []
    for _, oid, _ in hits:
        by_run.append(oid in seen)
        seen.add(oid)
    recs = [rec for rec, _, _ in hits]
    return {**{name: [getattr(rec, name) for rec in recs] for name in _RECORD_FIELDS},
            "partition_date": [rec.procedure_date for rec in recs],
            "orthanc_instance_id": [oid for _, oid, _ in hits], "error_message": [how for _, _, how in hits],
            "by_run": by_run}


_RECORD_FIELDS = ("nas_id", "file_path", "change_token", "patient_id", "study_instance_uid", "series_instance_uid",
                  "sop_instance_uid")


def record_already_stored(source: NasSource, client: OrthancApi, staging: Staging,
                          index_path: str | os.PathLike, *, run_id: str | None = None,
                          skip: frozenset[str] = frozenset(),
                          send_as: Callable[[FileRecord], SendAs | None] = lambda record: None) -> int:
    """Record the staged files Orthanc already holds and drop them from staging. Returns how many.

    Orthanc is asked a series or 100 UIDs at a time, a few requests at once, their answers taken in order (module
    docstring); the ledger is written once per ``LEDGER_BATCH`` hits, not per request. A run killed in between
    loses only rows it can find again: nothing was sent."""
    staging.con.execute("CREATE TEMP TABLE IF NOT EXISTS already_stored (file_path VARCHAR)")
    recorded, hits, seen = 0, [], set()

    def write() -> None:
        nonlocal recorded
        if hits:
            found = _columns(hits, seen)
            ledger.append_found(index_path, found, run_id=run_id, node=client.url)
            import pandas as pd

            staging.con.register("_found", pd.DataFrame({"file_path": found["file_path"]}))
            staging.con.execute("INSERT INTO already_stored SELECT file_path FROM _found")
            staging.con.unregister("_found")
            recorded += len(hits)
        hits.clear()

    def take(found: Hits) -> None:
        hits.extend(found)
        if len(hits) >= LEDGER_BATCH:
            write()

    # A few lookups in flight: each waits mostly on Orthanc's index, and the ledger writes stay in this thread.
    with ThreadPoolExecutor(LOOKUPS_IN_FLIGHT) as pool:
        pending: deque = deque()
        small: list[FileRecord] = []  # files of small series, BATCH at a time into one /tools/find

        def submit(lookup: Callable[..., Hits], records: list[FileRecord]) -> None:
            pending.append(pool.submit(lambda: lookup(source, client, [_sent(r, send_as) for r in records], skip)))
            while len(pending) >= LOOKUPS_AHEAD or (pending and pending[0].done()):
                take(pending.popleft().result())

        group: list[FileRecord] = []  # whole series, SERIES_PER_FIND at a time into one /tools/find
        groups = 0
        for series in _staged_series(staging):
            if len(series) >= SERIES_MIN and _listable(series[0].series_instance_uid):
                group += series
                groups += 1
                if groups >= SERIES_PER_FIND or len(group) >= GROUP_FILES:
                    submit(_listed_series_hits, group)
                    group, groups = [], 0
                continue
            if len(series) >= SERIES_MIN:
                submit(_series_hits, series)
                continue
            small += series
            while len(small) >= BATCH:
                submit(_find_hits, small[:BATCH])
                small = small[BATCH:]
        if group:
            submit(_listed_series_hits, group)
        if small:
            submit(_find_hits, small)
        while pending:
            take(pending.popleft().result())
    if hits:
        write()
    staging.con.execute("DELETE FROM inventory WHERE file_path IN (SELECT file_path FROM already_stored)")
    return recorded
