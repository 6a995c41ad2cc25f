"""The work of ``orthanc_instances``: upload what a window still lacks, writing every attempt to the ledger.

``import_records`` uploads a stream of records with bounded concurrency; ``upload_window`` stages the
window's pending instances (from ``instances``, what ``dicom_index`` produced) and runs it.

Memory stays flat: at most ``concurrency * 4`` uploads are in flight and ledger rows are flushed in
batches. The batches are for speed; exactness comes from the run's journal (index/journal.py), written
before and after each POST and merged into ``import_history`` when ``upload_window`` starts (journals of
killed runs) and ends (its own), so a SIGKILL loses no attempt Orthanc answered. If Orthanc becomes
unreachable (after retries) or refuses our credentials, no new upload starts, what finished is recorded,
and ``OrthancUnavailable`` says how far the run got; the rest stays pending.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from pacs_assets.index import ledger
from pacs_assets.index.connection import in_transaction, transaction
from pacs_assets.index.journal import Journal, Reclaims, merging_journals
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, NasSource, SendAs
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.client import OrthancRefused, OrthancUnavailable, UploadResult
from pacs_assets.orthanc.ids import orthanc_instance_id
from pacs_assets.pipeline.already_stored import record_already_stored
from pacs_assets.pipeline.failures import UNREADABLE, failure_category
from pacs_assets.pipeline.identity_guard import IdentityGuard, Plan, hold_files
from pacs_assets.pipeline.ledger_writer import LedgerWriter

NO_RECLAIMS = Reclaims({})
PROGRESS_EVERY = 500  # attempts between two progress calls (the ledger is written every ``flush_every``)
RECLAIMED = "AlreadyStored: from this NAS's own interrupted upload (index/journal.py)"


@dataclasses.dataclass
class ImportSummary:
    counts: Counter = dataclasses.field(default_factory=lambda: Counter(dict.fromkeys(ledger.LEDGER_STATUSES, 0)))
    bytes_sent: int = 0
    seconds: float = 0.0
    failures_by_reason: Counter = dataclasses.field(default_factory=Counter)

    @property
    def done(self) -> int:  # attempts, whatever their outcome
        return sum(self.counts.values())

    @property
    def stored(self) -> int:  # files Orthanc holds after their attempt (imported or already there)
        return self.counts["imported"] + self.counts["duplicate"]

    def add(self, other: ImportSummary) -> None:
        """Fold another upload's summary into this one (several windows of one step)."""
        self.counts.update(other.counts)
        self.bytes_sent += other.bytes_sent
        self.seconds += other.seconds
        self.failures_by_reason.update(other.failures_by_reason)

    @property
    def failures_by_category(self) -> Counter:
        """The failures counted by ``failure_category``: what metadata may show when paths may not."""
        out: Counter = Counter()
        for message, n in self.failures_by_reason.items():
            out[failure_category(message)] += n
        return out



def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _upload_one(source: NasSource, client: OrthancApi, record: FileRecord, run_id: str | None,
                journal: Journal | None, reclaims: Reclaims, send_as: SendAs | None = None) -> tuple[dict, int]:
    sent_id = send_as.patient_id if send_as else record.patient_id  # what Orthanc keys the patient by
    expected = orthanc_instance_id(sent_id, record.study_instance_uid, record.series_instance_uid,
                                   record.sop_instance_uid)
    key = journal.new_key() if journal else None
    with reclaims.guard(expected):
        started = _now()
        if journal:
            journal.started(key, record.nas_id, record.file_path, record.change_token, expected, started, run_id)
        try:
            body = source.upload_body(record, send_as)
        except Exception as exc:  # noqa: BLE001 - a file that vanished or broke since indexing is a failed attempt
            body = None
            result = UploadResult("failed", error_message=f"{UNREADABLE}: {str(exc)[:200]}",
                                  retryable=True, attempts=0)
        if body is not None:  # streamed from the NAS: memory does not depend on the file's size
            result = client.upload(body)
        file_hash = result.file_hash
        status = reclaims.status(expected, record.file_path, record.change_token, result.status,
                                 result.orthanc_instance_id)
    row = {
        "nas_id": record.nas_id, "file_path": record.file_path, "change_token": record.change_token,
        "file_hash": file_hash, "partition_date": record.procedure_date,
        "orthanc_instance_id": result.orthanc_instance_id, "patient_id": record.patient_id,
        "study_instance_uid": record.study_instance_uid, "series_instance_uid": record.series_instance_uid,
        "sop_instance_uid": record.sop_instance_uid, "status": status,
        "error_message": RECLAIMED if status != result.status else result.error_message,
        "retryable": result.retryable, "attempts": result.attempts, "http_status": result.http_status,
        "started_at": started, "finished_at": _now(), "run_id": run_id, "attempt_key": key,
        "orthanc_node": result.node,
    }
    if journal:
        journal.answered(row)
    return row, body.length if body is not None and result.http_status == 200 else 0


def import_records(
    source: NasSource,
    client: OrthancApi,
    records: Iterable[FileRecord],
    write_ledger: Callable[[list[dict]], None],
    *,
    concurrency: int = 4,
    run_id: str | None = None,
    flush_every: int = 2000,
    progress: Callable[[ImportSummary], None] | None = None,
    journal: Journal | None = None,
    reclaims: Reclaims = NO_RECLAIMS,
    send_as: Callable[[FileRecord], SendAs | None] = lambda record: None,
) -> ImportSummary:
    """Upload ``records``; ``write_ledger`` gets the attempts in batches. With a ``journal`` each attempt is
    also journaled before and after its POST (index/journal.py), and ``reclaims`` applies its
    interrupted-upload rule. ``send_as`` gives the patient identity each file is sent under (None: its own)."""
    summary = ImportSummary()
    pending_rows: list[dict] = []
    abort: str | None = None
    refused: str | None = None  # a 401: waiting will not help, nobody should retry
    started = time.monotonic()
    in_flight: set[Future] = set()
    # The ledger batches are written by a thread of their own: a batch costs a DuckDB transaction (~40 ms of CPU
    # to open, ~30 ms per 500 rows), during which the uploads go on instead of draining. One batch at a time, in
    # order; exactness does not depend on them (the journal has every attempt already).
    writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
    writing: Future | None = None
    reported = 0  # attempts the last progress call counted

    def flush() -> None:
        nonlocal writing
        if writing is not None:
            writing.result()  # the previous batch is in (or its error raised here)
        writing = writer.submit(write_ledger, list(pending_rows))
        pending_rows.clear()

    def collect(done: set[Future]) -> None:
        nonlocal abort, refused, reported
        for fut in done:
            row, size = fut.result()
            pending_rows.append(row)
            summary.counts[row["status"]] += 1
            summary.bytes_sent += size
            if row["status"] == "failed":
                summary.failures_by_reason[(row["error_message"] or "")[:80]] += 1
                if row["http_status"] == 401:
                    abort = refused = f"Orthanc at {client.url} refused the credentials (HTTP 401)"
                elif row["retryable"] and row["http_status"] is None and row["attempts"]:
                    abort = f"Orthanc at {client.url} became unreachable"
        if len(pending_rows) >= flush_every:
            flush()
        if progress and summary.done >= reported + PROGRESS_EVERY:
            reported = summary.done
            summary.seconds = time.monotonic() - started
            progress(summary)

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="orthanc-upload") as pool:
            try:
                for record in records:
                    if abort:
                        break
                    in_flight.add(pool.submit(_upload_one, source, client, record, run_id, journal, reclaims,
                                              send_as(record)))
                    if len(in_flight) >= concurrency * 4:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        collect(done)
                done, _ = wait(in_flight)
                collect(done)
            except BaseException:
                # Interrupted (SIGINT/SIGTERM): the queued uploads never start (their files stay pending), only
                # the running ones finish and are journaled. Waiting for the whole queue took > 10 s at load.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        flush()
        writing.result()
    finally:
        writer.shutdown()
    summary.seconds = time.monotonic() - started
    if abort:
        raise (OrthancRefused if refused else OrthancUnavailable)(
            f"{abort} after {summary.stored} files stored ({summary.done} attempts); the files not yet uploaded "
            "stay pending for the next run.")
    return summary


def wait_for_orthanc(client: OrthancApi, wait_seconds: float, *, max_delay: float = 15.0) -> dict:
    """``GET /system`` until Orthanc answers, for up to ``wait_seconds``, sleeping with exponential backoff
    between tries (a sleep, not a spin: a run waiting out a restart of Orthanc costs no CPU). A refusal
    (HTTP 401, not Orthanc) is raised at once: waiting will not change it."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            return client.system()
        except OrthancRefused:
            raise
        except OrthancUnavailable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(delay, left))
            delay = min(delay * 2, max_delay)


@dataclasses.dataclass
class WindowUpload:
    summary: ImportSummary
    staged: int  # files that needed an upload when the step began
    totals: dict[str, int]  # file_status -> files, in the window, after the upload
    failed_files: list[tuple[str, str]]  # (path, reason); only when the caller may see paths
    already_stored: int = 0  # staged files Orthanc already held: recorded without sending
    held: Counter = dataclasses.field(default_factory=Counter)  # collision kind -> files held by this upload
    variants: int = 0  # name variants met (listed by `pacs identity`, not held)
    identity_seconds: float = 0.0  # what the identity guard cost this upload (benchmarks/bench_incremental.py)


def upload_window(source: NasSource, client: OrthancApi, index_path: str | os.PathLike, nas_id: str,
                  start: dt.date, end: dt.date, *, concurrency: int = 4, run_id: str | None = None,
                  on_staged: Callable[[int], None] | None = None,
                  progress: Callable[[ImportSummary], None] | None = None,
                  with_paths: bool = False, outage_wait_seconds: float = 0.0,
                  identity: IdentityGuard | None = None) -> WindowUpload:
    """Upload the window's indexed instances that are not in Orthanc yet, except the files the identity guard
    holds (pipeline/identity_guard.py; without ``identity``: no ID domains, the decisions beside the index). Raises
    OrthancUnavailable (one sentence) when Orthanc cannot be reached or refuses us; what finished is recorded
    either way."""
    wait_for_orthanc(client, outage_wait_seconds)
    identity = identity or IdentityGuard.load({}, index_path)
    with Staging(index_path) as staging:
        # One short index session: what killed runs left (before deciding what is still pending), the rule for
        # their interrupted uploads, and the window's pending instances staged.
        with merging_journals(index_path) as merge, staging.attached_to_index() as con:
            if merge.needed:
                with in_transaction(con):
                    merge(con)
            reclaims = Reclaims.load(con, nas_id)
            staged = ledger.stage_pending_uploads(staging, nas_id, start, end, con=con)
        guard_started = time.monotonic()
        plan = Plan(identity, nas_id, [])
        if staged:  # before anything is sent: who would meet whom under one PatientID in Orthanc
            plan = identity.plan(staging, index_path, nas_id, client, (start, end))
        held = hold_files(plan, staging, index_path, nas_id, start, end) if staged else Counter()
        guard_seconds = time.monotonic() - guard_started
        found = record_already_stored(source, client, staging, index_path, run_id=run_id,
                                      skip=reclaims.instance_ids, send_as=plan.send_as) if staged else 0
        if on_staged:
            on_staged(staged - found)
        writer = LedgerWriter(index_path)
        journal = Journal(index_path)
        try:
            summary = import_records(source, client, ledger.iter_staged(staging), writer,
                                     concurrency=concurrency, run_id=run_id, progress=progress,
                                     journal=journal, reclaims=reclaims, send_as=plan.send_as)
        finally:
            try:
                writer.close()  # first: its rows name the kept file of each uid_conflict
            finally:
                journal.close()
                # One short transaction: what the batches did not write yet, the window's counts, its totals.
                with merging_journals(index_path, own=journal.path) as merge, transaction(index_path) as con:
                    merge(con)
                    ledger.refresh_orthanc_counts(con, nas_id, start, end)
                    totals = ledger.status_counts(con, nas_id, start, end)
                    failed = ledger.failed_files(con, nas_id, start, end) if with_paths else []
        summary.counts.update(imported=-writer.demoted, duplicate=writer.demoted)
    return WindowUpload(summary, staged, totals, failed, found, held, plan.variant_count, guard_seconds)
