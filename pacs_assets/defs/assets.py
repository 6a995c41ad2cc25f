"""The asset factory: one graph per configured NAS, ``file_inventory -> dicom_index -> orthanc_instances``.

All three share the NAS's daily partitions (procedure date) and a single-run backfill policy, so a
backfill over years walks the NAS once, not once per day. Each asset is a thin wrapper: the work is a
plain function in ``pacs_assets.pipeline``; here are only Dagster's concerns (pools, retries, progress
logs, metadata). No step holds the DuckDB lock for longer than a short merge (index/connection.py).
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at definition time.

import datetime as dt
import functools
import warnings
from zoneinfo import ZoneInfo

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from pacs_assets.config import ConfigError, NasConfig, PacsConfig
from pacs_assets.defs.checks import folders_read_result, folders_read_spec
from pacs_assets.defs.partitions import nas_partitions
from pacs_assets.defs.progress import Progress
from pacs_assets.defs.resources import IndexResource, OrthancResource, nas_of, nas_resource_key, orthanc_retry_policy
from pacs_assets.defs.sensors import watch_state_path
from pacs_assets.nas.folder_lists import read_folder_list
from pacs_assets.nas.names import shown
from pacs_assets.nas.registry import kind_of
from pacs_assets.orthanc.client import OrthancRefused, OrthancUnavailable
from pacs_assets.pipeline.hierarchy import build_hierarchy
from pacs_assets.pipeline.identity_guard import guard_for
from pacs_assets.pipeline.inventory import NasOutage, take_inventory
from pacs_assets.pipeline.upload import upload_window

# Pools (limits in dagster.yaml): walks use every core, and uploads share Orthanc's ingest ceiling, so
# each runs one at a time across all runs. The upload pool is also what keeps two runs of one NAS from
# staging and uploading the same pending files at once (without it each file is sent twice: harmless for
# Orthanc, but the ledger's last word becomes 'duplicate'). The index needs no pool: its locks are short.
WALK_POOL, UPLOAD_POOL = "nas_walk", "orthanc_upload"
OWNERS = ["team:radiology-it"]


class InventoryConfig(Config):
    """Which folders a run walks. Both empty (a backfill, a launch from the UI): the whole NAS."""

    folders: list[str] = []  # folders relative to the NAS root ('' = the root), each without its subfolders
    # What the new-files sensor and the incremental schedule pass instead: a reference to their stored list
    # (folder names often name patients; run config shows in the UI).
    folders_ref: str = ""


def _folders(config: InventoryConfig, state_dir, context) -> list[str] | None:
    if config.folders_ref:
        folders = read_folder_list(state_dir, config.folders_ref)
        if folders is None:
            context.log.warning("the folder list of this run is gone (older than a week?): walking the whole NAS")
        return folders
    return list(config.folders) or None


def _accepting_beta_backfill_policy(build):
    """Silence just Dagster's BetaWarning for ``@asset(backfill_policy=...)`` while ``build`` defines assets.

    Scoped, not a module-level filter: a later ``simplefilter`` (pytest resets filters per test) would undo
    that one, and this touches no one else's warnings.
    """
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            # Accepted: single-run backfills (one walk for years of partitions) are the point of the design.
            warnings.filterwarnings("ignore", category=BetaWarning,
                                    message=r"Parameter `backfill_policy` of .* is currently in beta")
            return build(*args, **kwargs)

    return wrapper


def _window(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    window = context.partition_time_window
    return window.start.date(), window.end.date()


def _status_table(counts: dict[str, int]) -> MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))
    return MetadataValue.md(f"| status | files |\n|---|---|\n{rows}")


def _held_table(held) -> MetadataValue:
    rows = "\n".join(f"| {kind} | {n} |" for kind, n in sorted(held.items()))
    return MetadataValue.md(f"| collision | files held |\n|---|---|\n{rows}" if rows else "none held")


@_accepting_beta_backfill_policy
def build_nas_assets(nas: NasConfig, config: PacsConfig) -> list:
    prefix = nas.id
    partitions = nas_partitions(nas, config.timezone)
    source_key = nas_resource_key(nas.id)
    tz = ZoneInfo(config.timezone)
    log_names = config.privacy.log_patient_data  # the asset's own ``config`` is its run config
    watch_dir = watch_state_path(config, nas.id).parent
    common = dict(group_name=nas.id, partitions_def=partitions, backfill_policy=BackfillPolicy.single_run(),
                  owners=OWNERS)

    @asset(key=AssetKey([prefix, "file_inventory"]), kinds={"duckdb", "python"},
           required_resource_keys={source_key, "index"}, pool=WALK_POOL,
           check_specs=[folders_read_spec(AssetKey([prefix, "file_inventory"]))],
           description=f"Every file under NAS '{nas.id}' ({nas.kind}), walked read-only: size, mtime, change "
                       "token, what it is and, for the skipped and failed, why. Partitioned by procedure date.",
           **common)
    def file_inventory(context: AssetExecutionContext, config: InventoryConfig) -> MaterializeResult:
        index: IndexResource = context.resources.index
        site_nas = nas_of(context, nas.id)  # the source and its settings, from one place
        start, end = _window(context)
        folders = _folders(config, watch_dir, context)
        progress = Progress(context, f"walking NAS '{nas.id}'" + (f" ({len(folders)} folders)" if folders else ""))
        try:
            result = take_inventory(site_nas.source(), site_nas.settings, index.path, start, end,
                                    today=dt.datetime.now(tz).date(), folders=folders,
                                    progress=lambda done, known: progress.tick(done, known or None))
        except ConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        except NasOutage as exc:
            raise Failure(description=str(exc)) from None
        counts = result.counts
        named = {}
        if result.unread and log_names:  # folder names often name the patient
            rows = "\n".join(f"| {shown(p) or '(root)'} | {scope} |" for p, scope in result.unread[:200])
            named["not_read"] = MetadataValue.md(f"| folder or file | scope |\n|---|---|\n{rows}")
        return MaterializeResult(metadata={
            "folders_walked": len(folders) if folders is not None and kind_of(nas).has_folders else "all",
            "files_walked": result.walked,
            "files_in_partitions": sum(counts.values()),
            **{f"files_{k}": v for k, v in counts.items()},
            "walk_seconds": round(result.seconds, 2),
            "files_per_second": round(result.walked / max(result.seconds, 1e-9), 1),
            "by_status": _status_table(counts),
            "folders_not_read": result.not_read,  # their known rows kept, not deleted (check every_folder_read)
            **named,
        }, check_results=[folders_read_result(result.not_read, result.kept)])

    @asset(key=AssetKey([prefix, "dicom_index"]), deps=[file_inventory], kinds={"duckdb"},
           description=f"Patients, studies, series and instances found on NAS '{nas.id}', in the DuckDB index; "
                       "each partition's rows replaced in one transaction.",
           **common)
    def dicom_index(context: AssetExecutionContext, index: IndexResource) -> MaterializeResult:
        start, end = _window(context)
        return MaterializeResult(metadata=build_hierarchy(index.path, nas.id, start, end))

    @asset(key=AssetKey([prefix, "orthanc_instances"]), deps=[dicom_index], kinds={"python"},
           description=f"NAS '{nas.id}' instances uploaded to Orthanc; every attempt in import_history. "
                       "A rerun uploads only what is not imported yet.",
           retry_policy=orthanc_retry_policy(config.orthanc), pool=UPLOAD_POOL,
           required_resource_keys={source_key, "index", "orthanc"},
           **common)
    def orthanc_instances(context: AssetExecutionContext) -> MaterializeResult:
        index: IndexResource = context.resources.index
        orthanc: OrthancResource = context.resources.orthanc
        source = nas_of(context, nas.id).source()
        start, end = _window(context)
        progress = Progress(context, f"importing NAS '{nas.id}' into Orthanc")
        try:
            done = upload_window(source, orthanc.client(), index.path, nas.id, start, end,
                                 concurrency=orthanc.concurrency, run_id=context.run.run_id,
                                 on_staged=lambda n: setattr(progress, "total", n),
                                 progress=lambda s: progress.tick(s.done),
                                 with_paths=config.privacy.log_patient_data,
                                 outage_wait_seconds=orthanc.outage_wait_seconds,
                                 identity=guard_for(config))
        except OrthancRefused as exc:  # a wrong password does not get better by waiting: fail now, no retry
            raise Failure(description=str(exc), allow_retries=False) from None
        except OrthancUnavailable as exc:
            raise Failure(description=str(exc)) from None
        summary, totals = done.summary, done.totals
        named = {}
        if config.privacy.log_patient_data:  # file paths often name the patient: only where the site allows it
            rows = "\n".join(f"| {shown(p)} | {r} |" for p, r in done.failed_files)
            named["failed_files"] = MetadataValue.md(f"| file | reason |\n|---|---|\n{rows}")
        # Messages can quote file paths: without the site's consent, only their categories (file unreadable...).
        reasons = summary.failures_by_reason if config.privacy.log_patient_data else summary.failures_by_category
        failures = "\n".join(f"| {reason} | {n} |" for reason, n in reasons.most_common(10))
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
            # Held: their PatientID would meet a different person in Orthanc (`pacs identity` names them).
            "files_held_this_run": sum(done.held.values()),
            "held_by_kind": _held_table(done.held),
            "name_variants_met": done.variants,
            "identity_guard_seconds": round(done.identity_seconds, 3),
            **named,
        })

    return [file_inventory, dicom_index, orthanc_instances]
