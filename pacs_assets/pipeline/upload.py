"""The work of ``orthanc_instances``: upload what a window still lacks, writing every attempt to the ledger.

``import_records`` uploads a stream of records with bounded concurrency; ``upload_window`` stages the
window's pending instances (from ``instances``, what ``dicom_index`` produced) and runs it.

Memory stays flat: at most ``concurrency * 4`` uploads are in flight and ledger rows are flushed in
batches. If Orthanc becomes unreachable (after retries) or refuses our credentials, no new upload starts,
what finished is recorded, and ``OrthancUnavailable`` says how far the run got; the rest stays pending.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from pacs_assets.index import ledger
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, NasSource
from pacs_assets.orthanc.client import OrthancClient, OrthancUnavailable, UploadResult


@dataclasses.dataclass
class ImportSummary:
    counts: Counter = dataclasses.field(default_factory=Counter)
    bytes_sent: int = 0
    seconds: float = 0.0
    failures_by_reason: Counter = dataclasses.field(default_factory=Counter)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def failures_by_category(self) -> Counter:
        """The failures counted by ``failure_category``: what metadata may show when paths may not."""
        out: Counter = Counter()
        for message, n in self.failures_by_reason.items():
            out[failure_category(message)] += n
        return out


UNREADABLE = "cannot read the file for upload"
_HTTP = re.compile(r"^HTTP (\d{3})\b")
_HTTP_LABELS = {400: "bad file format", 401: "credentials refused", 403: "forbidden", 404: "not found",
                409: "conflict", 413: "file too large", 429: "too many requests"}


def failure_category(message: str | None) -> str:
    """A short, fixed label for an upload failure's message (from ``_upload_one`` and OrthancClient.upload).

    The message itself may quote a file path, and NAS folders are often named after patients: the label is
    made only of words from this function, never of the message's own text.
    """
    message = message or ""
    if message.startswith(UNREADABLE):
        return "file unreadable"
    if message.endswith(": timed out"):
        return "timeout"
    if message.endswith(": connection failed"):
        return "connection failed"
    match = _HTTP.match(message)
    if not match:
        return "other"
    code = int(match.group(1))
    if code == 400 and not re.search(r"bad file format|cannot parse", message, re.IGNORECASE):
        return "HTTP 400 rejected"
    label = _HTTP_LABELS.get(code) or ("Orthanc error" if code >= 500 else None)
    return f"HTTP {code} {label}" if label else f"HTTP {code}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _upload_one(source: NasSource, client: OrthancClient, record: FileRecord, run_id: str | None) -> tuple[dict, int]:
    started = _now()
    try:
        data = source.dicom_bytes(record)
    except Exception as exc:  # noqa: BLE001 - a file that vanished or broke since indexing is a failed attempt
        data = None
        result = UploadResult("failed", error_message=f"{UNREADABLE}: {str(exc)[:200]}",
                              retryable=True, attempts=0)
    file_hash = None
    if data is not None:
        file_hash = hashlib.sha1(data).hexdigest()
        result = client.upload(data)
    row = {
        "nas_id": record.nas_id, "file_path": record.file_path, "change_token": record.change_token,
        "file_hash": file_hash, "partition_date": record.procedure_date,
        "orthanc_instance_id": result.orthanc_instance_id, "patient_id": record.patient_id,
        "study_instance_uid": record.study_instance_uid, "series_instance_uid": record.series_instance_uid,
        "sop_instance_uid": record.sop_instance_uid, "status": result.status,
        "error_message": result.error_message, "retryable": result.retryable, "attempts": result.attempts,
        "http_status": result.http_status, "started_at": started, "finished_at": _now(), "run_id": run_id,
    }
    return row, len(data) if data else 0


def import_records(
    source: NasSource,
    client: OrthancClient,
    records: Iterable[FileRecord],
    write_ledger: Callable[[list[dict]], None],
    *,
    concurrency: int = 4,
    run_id: str | None = None,
    flush_every: int = 500,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    summary = ImportSummary()
    pending_rows: list[dict] = []
    abort: str | None = None
    started = time.monotonic()
    in_flight: set[Future] = set()

    def collect(done: set[Future]) -> None:
        nonlocal abort
        for fut in done:
            row, size = fut.result()
            pending_rows.append(row)
            summary.counts[row["status"]] += 1
            summary.bytes_sent += size
            if row["status"] == "failed":
                summary.failures_by_reason[(row["error_message"] or "")[:80]] += 1
                if row["http_status"] == 401:
                    abort = f"Orthanc at {client.url} refused the credentials (HTTP 401)"
                elif row["retryable"] and row["http_status"] is None and row["attempts"]:
                    abort = f"Orthanc at {client.url} became unreachable"
        if len(pending_rows) >= flush_every:
            write_ledger(list(pending_rows))
            pending_rows.clear()
            if progress:
                summary.seconds = time.monotonic() - started
                progress(summary)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="orthanc-upload") as pool:
        for record in records:
            if abort:
                break
            in_flight.add(pool.submit(_upload_one, source, client, record, run_id))
            if len(in_flight) >= concurrency * 4:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                collect(done)
        done, _ = wait(in_flight)
        collect(done)
    write_ledger(pending_rows)
    summary.seconds = time.monotonic() - started
    if abort:
        raise OrthancUnavailable(
            f"{abort} after {summary.done} uploads; the files not yet uploaded stay pending for the next run.")
    return summary


@dataclasses.dataclass
class WindowUpload:
    summary: ImportSummary
    staged: int  # files that needed an upload when the step began
    totals: dict[str, int]  # file_status -> files, in the window, after the upload
    failed_files: list[tuple[str, str]]  # (path, reason); only when the caller may see paths


def upload_window(source: NasSource, client: OrthancClient, index_path: str | os.PathLike, nas_id: str,
                  start: dt.date, end: dt.date, *, concurrency: int = 4, run_id: str | None = None,
                  on_staged: Callable[[int], None] | None = None,
                  progress: Callable[[ImportSummary], None] | None = None,
                  with_paths: bool = False) -> WindowUpload:
    """Upload the window's indexed instances that are not in Orthanc yet. Raises OrthancUnavailable (one
    sentence) when Orthanc cannot be reached or refuses us; what finished is recorded either way."""
    client.system()
    with Staging(index_path) as staging:
        staged = ledger.stage_pending_uploads(staging, nas_id, start, end)
        if on_staged:
            on_staged(staged)
        try:
            summary = import_records(source, client, ledger.iter_staged(staging),
                                     lambda rows: ledger.append_ledger(index_path, rows),
                                     concurrency=concurrency, run_id=run_id, progress=progress)
        finally:
            ledger.refresh_orthanc_counts(index_path, nas_id, start, end)
    totals = ledger.status_counts(index_path, nas_id, start, end)
    failed = ledger.failed_files(index_path, nas_id, start, end) if with_paths else []
    return WindowUpload(summary, staged, totals, failed)
