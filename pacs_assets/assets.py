"""The asset factory: one graph per configured NAS, ``file_inventory -> dicom_index -> orthanc_instances``.

All three share the NAS's daily partitions (procedure date) and a single-run backfill policy, so a
backfill over years walks the NAS once, not once per day. Every step holds the DuckDB lock only for
short merges, never for a whole walk or upload (see index/store.py).
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at definition time.

import datetime as dt
import time
from zoneinfo import ZoneInfo

from dagster import (
    AssetExecutionContext,
    AssetKey,
    Backoff,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from pacs_assets.config import ConfigError, NasConfig, PacsConfig
from pacs_assets.dates import assign_procedure_date
from pacs_assets.importer import import_records
from pacs_assets.index import store
from pacs_assets.orthanc import OrthancUnavailable
from pacs_assets.resources import IndexResource, OrthancResource, nas_resource_key

# Pools (limits in dagster.yaml): walks use every core, and uploads share Orthanc's ingest ceiling, so
# each runs one at a time across all runs. The upload pool is also what keeps two runs of one NAS from
# staging and uploading the same pending files at once (without it each file is sent twice: harmless for
# Orthanc, but the ledger's last word becomes 'duplicate'). The index needs no pool: its locks are short.
WALK_POOL, UPLOAD_POOL = "nas_walk", "orthanc_upload"
PROGRESS_EVERY_SECONDS = 15.0
# A walk that finds less than this share of the files the NAS had is an outage, not mass deletion.
OUTAGE_SHARE = 0.5
OWNERS = ["team:radiology-it"]


def nas_partitions(nas: NasConfig, timezone: str) -> DailyPartitionsDefinition:
    # end_offset=1: today's partition exists, so today's procedures can be imported today.
    return DailyPartitionsDefinition(start_date=nas.partitions_start.isoformat(), end_offset=1, timezone=timezone)


def _window(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    window = context.partition_time_window
    return window.start.date(), window.end.date()


class _Progress:
    """Logs 'done / total, rate, ETA' at a steady interval during long steps."""

    def __init__(self, context: AssetExecutionContext, what: str, total: int | None = None):
        self.context, self.what, self.total = context, what, total
        self.started = self.last = time.monotonic()

    def tick(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            eta = (self.total - done) / rate if rate else float("inf")
            self.context.log.info(f"{self.what}: {done}/{self.total} ({rate:.0f}/s, ETA {eta:.0f} s)")
        else:
            self.context.log.info(f"{self.what}: {done} ({rate:.0f}/s)")


def _status_table(counts: dict[str, int]) -> MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))
    return MetadataValue.md(f"| status | files |\n|---|---|\n{rows}")


def build_nas_assets(nas: NasConfig, config: PacsConfig) -> list:
    prefix = nas.id
    partitions = nas_partitions(nas, config.timezone)
    source_key = nas_resource_key(nas.id)
    tz = ZoneInfo(config.timezone)
    common = dict(group_name=nas.id, partitions_def=partitions, backfill_policy=BackfillPolicy.single_run(),
                  owners=OWNERS)

    @asset(key=AssetKey([prefix, "file_inventory"]), kinds={"duckdb", "python"},
           required_resource_keys={source_key, "index"}, pool=WALK_POOL,
           description=f"Every file under NAS '{nas.id}' ({nas.kind}), walked read-only: size, mtime, change "
                       "token, what it is and, for the skipped and failed, why. Partitioned by procedure date.",
           **common)
    def file_inventory(context: AssetExecutionContext) -> MaterializeResult:
        index: IndexResource = context.resources.index
        source = getattr(context.resources, source_key).source()
        start, end = _window(context)
        try:
            source.check_available()
        except ConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        known = store.known_file_count(index.path, nas.id)
        today = dt.datetime.now(tz).date()
        scanned_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        progress = _Progress(context, f"walking NAS '{nas.id}'", total=known or None)
        started, walked = time.monotonic(), 0
        with store.Staging(index.path) as staging:
            staging.load_cache(nas.id)
            for batch in source.scan(staging.cache()):
                for rec in batch:
                    rec.procedure_date, rec.date_source = assign_procedure_date(
                        rec.study_date, rec.series_date, rec.mtime_ns, nas.partitions_start, today)
                staging.add_records(batch, scanned_at)
                walked += len(batch)
                progress.tick(walked)
            if known and walked < known * OUTAGE_SHARE:
                raise Failure(description=(
                    f"NAS '{nas.id}' at {nas.root} shows {walked} files where the index knew {known}: "
                    "treating it as an outage (unmounted or partly offline NAS), not as deletions; index unchanged."))
            counts = staging.merge_inventory(nas.id, start, end)
        seconds = time.monotonic() - started
        return MaterializeResult(metadata={
            "files_walked": walked,
            "files_in_partitions": sum(counts.values()),
            **{f"files_{k}": v for k, v in counts.items()},
            "walk_seconds": round(seconds, 2),
            "files_per_second": round(walked / max(seconds, 1e-9), 1),
            "by_status": _status_table(counts),
        })

    @asset(key=AssetKey([prefix, "dicom_index"]), deps=[file_inventory], kinds={"duckdb"},
           description=f"Patients, studies, series and instances found on NAS '{nas.id}', in the DuckDB index; "
                       "each partition's rows replaced in one transaction.",
           **common)
    def dicom_index(context: AssetExecutionContext, index: IndexResource) -> MaterializeResult:
        start, end = _window(context)
        counts = store.rebuild_hierarchy(index.path, nas.id, start, end)
        return MaterializeResult(metadata={f"{k}": v for k, v in counts.items()})

    @asset(key=AssetKey([prefix, "orthanc_instances"]), deps=[dicom_index], kinds={"python"},
           description=f"NAS '{nas.id}' instances uploaded to Orthanc; every attempt in import_history. "
                       "A rerun uploads only what is not imported yet.",
           retry_policy=RetryPolicy(max_retries=config.orthanc.run_retries,
                                    delay=config.orthanc.run_retry_delay_seconds,
                                    backoff=Backoff.EXPONENTIAL) if config.orthanc.run_retries else None,
           pool=UPLOAD_POOL, required_resource_keys={source_key, "index", "orthanc"},
           **common)
    def orthanc_instances(context: AssetExecutionContext) -> MaterializeResult:
        index: IndexResource = context.resources.index
        orthanc: OrthancResource = context.resources.orthanc
        source = getattr(context.resources, source_key).source()
        start, end = _window(context)
        client = orthanc.client()
        try:
            client.system()
        except OrthancUnavailable as exc:
            raise Failure(description=str(exc)) from None
        with store.Staging(index.path) as staging:
            todo = store.stage_pending_imports(staging, nas.id, start, end)
            progress = _Progress(context, f"importing NAS '{nas.id}' into Orthanc", total=todo)
            try:
                summary = import_records(
                    source, client, store.iter_staged(staging), lambda rows: store.append_ledger(index.path, rows),
                    concurrency=orthanc.concurrency, run_id=context.run.run_id,
                    progress=lambda s: progress.tick(s.done))
            except OrthancUnavailable as exc:
                raise Failure(description=str(exc)) from None
        store.refresh_orthanc_counts(index.path, nas.id, start, end)
        totals = store.status_counts(index.path, nas.id, start, end)
        named = {}
        if config.privacy.log_patient_data:  # file paths often name the patient: only where the site allows it
            rows = "\n".join(f"| {p} | {r} |" for p, r in store.failed_files(index.path, nas.id, start, end))
            named["failed_files"] = MetadataValue.md(f"| file | reason |\n|---|---|\n{rows}")
        failures = "\n".join(f"| {reason} | {n} |" for reason, n in summary.failures_by_reason.most_common(10))
        return MaterializeResult(metadata={
            "uploaded_this_run": summary.done,
            **{f"this_run_{k}": v for k, v in summary.counts.items()},
            **{f"files_{k}": v for k, v in totals.items()},
            "bytes_sent": summary.bytes_sent,
            "upload_seconds": round(summary.seconds, 2),
            "instances_per_second": round(summary.done / max(summary.seconds, 1e-9), 1),
            "by_status": _status_table(totals),
            "failures_by_reason": MetadataValue.md(f"| reason | files |\n|---|---|\n{failures}" if failures
                                                   else "no failures"),
            **named,
        })

    return [file_inventory, dicom_index, orthanc_instances]
