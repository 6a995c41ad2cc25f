"""The nightly reconciliation of a NAS: two unpartitioned assets in one job, which materialize only what changed.

- ``<nas>/reconciliation`` (pool ``nas_walk``) walks the whole NAS, merges the inventory of every date in one
  transaction, and records a materialization of ``file_inventory`` only for the dates whose files were
  added, changed or deleted. Its own materialization says when it ran and what it found (counts).
- ``<nas>/reconciliation_catch_up`` (pool ``orthanc_upload``) rebuilds the hierarchy of exactly the dates
  whose instances lag the inventory and uploads exactly the dates with instances not yet in Orthanc,
  recording ``dicom_index`` / ``orthanc_instances`` materializations for those dates only. Its check proves
  every stored instance is in Orthanc (pipeline/orthanc_sweep.py: what changed since the last full sweep).

An unchanged NAS thus costs one walk and two materializations, whatever the number of partitions: Dagster's
bookkeeping per partition and asset, for ten years of daily partitions, would be minutes per night
(docs/speed.md).

The same concept on three layers: the Dagster assets and job (defs/reconciliation.py), the work
(pipeline/reconciliation.py), the SQL (index/reconciliation.py).
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import datetime as dt
from zoneinfo import ZoneInfo

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
    define_asset_job,
)

from pacs_assets.config import ConfigError, NasConfig, PacsConfig
from pacs_assets.defs.assets import OWNERS, UPLOAD_POOL, WALK_POOL
from pacs_assets.defs.checks import folders_read_result, folders_read_spec
from pacs_assets.defs.progress import Progress
from pacs_assets.defs.resources import (
    IndexResource,
    OrthancResource,
    nas_of,
    nas_resource_key,
    orthanc_retry_policy,
)
from pacs_assets.defs.sensors import reconciliation_job_name
from pacs_assets.orthanc.client import OrthancRefused, OrthancUnavailable
from pacs_assets.pipeline import checks as work
from pacs_assets.pipeline.identity_guard import guard_for
from pacs_assets.pipeline.inventory import NasOutage
from pacs_assets.pipeline.reconciliation import catch_up, reconcile

SHOWN_DATES = 60  # changed dates listed in the metadata table (the counts cover all)


def reconciliation_keys(nas_id: str) -> list[AssetKey]:
    return [AssetKey([nas_id, "reconciliation"]), AssetKey([nas_id, "reconciliation_catch_up"])]


def _dates_table(changes: dict[dt.date, dict[str, int]]) -> MetadataValue:
    if not changes:
        return MetadataValue.md("no partition changed")
    rows = [f"| {d} | {c.get('added', 0)} | {c.get('changed', 0)} | {c.get('deleted', 0)} |"
            for d, c in sorted(changes.items(), reverse=True)[:SHOWN_DATES]]
    more = f"\n\n… and {len(changes) - SHOWN_DATES} more dates" if len(changes) > SHOWN_DATES else ""
    return MetadataValue.md("| date | added | changed | deleted |\n|---|---|---|---|\n" + "\n".join(rows) + more)


def build_reconciliation(nas: NasConfig, config: PacsConfig) -> tuple[list, list, object]:
    """(assets, checks, job) of one NAS's reconciliation."""
    source_key = nas_resource_key(nas.id)
    tz = ZoneInfo(config.timezone)
    walk_key, catch_up_key = reconciliation_keys(nas.id)
    # Its own group: "Materialize all" in the NAS's group keeps launching partitioned assets only.
    group = f"{nas.id}_reconciliation"
    inventory_key, index_key, orthanc_key = (AssetKey([nas.id, n]) for n in ("file_inventory", "dicom_index",
                                                                             "orthanc_instances"))

    @asset(key=walk_key, group_name=group, kinds={"duckdb", "python"}, owners=OWNERS, pool=WALK_POOL,
           required_resource_keys={source_key, "index"}, check_specs=[folders_read_spec(walk_key)],
           description=f"The reconciliation of NAS '{nas.id}': one walk of everything; materializes "
                       "file_inventory only for the procedure dates whose files changed.")
    def reconciliation(context: AssetExecutionContext) -> MaterializeResult:
        index: IndexResource = context.resources.index
        site_nas = nas_of(context, nas.id)  # the source and its settings, from one place
        progress = Progress(context, f"reconciling NAS '{nas.id}'")
        try:
            found = reconcile(site_nas.source(), site_nas.settings, index.path, today=dt.datetime.now(tz).date(),
                              progress=lambda done, known: progress.tick(done, known or None))
        except ConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        except NasOutage as exc:
            raise Failure(description=str(exc)) from None
        for day, kinds in sorted(found.changes.items()):
            context.log_event(AssetMaterialization(
                asset_key=inventory_key, partition=day.isoformat(),
                metadata={**{f"files_{k}": v for k, v in kinds.items()}, "by": "reconciliation"}))
        totals = found.totals()
        return MaterializeResult(metadata={
            "files_walked": found.walked, "files_known_before": found.known_before,
            "files_added": totals["added"], "files_changed": totals["changed"], "files_deleted": totals["deleted"],
            "partitions_changed": len(found.changes),
            "walk_seconds": round(found.seconds, 2),
            "changed_dates": _dates_table(found.changes),
            "folders_not_read": found.not_read,  # their known rows kept, not deleted (check every_folder_read)
        }, check_results=[folders_read_result(found.not_read, found.kept)])

    @asset(key=catch_up_key, deps=[reconciliation], group_name=group, kinds={"duckdb", "python"}, owners=OWNERS,
           pool=UPLOAD_POOL, required_resource_keys={source_key, "index", "orthanc"},
           retry_policy=orthanc_retry_policy(config.orthanc),
           description=f"After the reconciliation of NAS '{nas.id}': rebuilds the index of, and uploads, only "
                       "the procedure dates that need it; materializes dicom_index and orthanc_instances for those.")
    def reconciliation_catch_up(context: AssetExecutionContext) -> MaterializeResult:
        index: IndexResource = context.resources.index
        orthanc: OrthancResource = context.resources.orthanc
        source = nas_of(context, nas.id).source()

        def rebuilt(days: list[dt.date]) -> None:
            for day in days:
                context.log_event(AssetMaterialization(asset_key=index_key, partition=day.isoformat(),
                                                       metadata={"by": "reconciliation"}))

        try:
            done = catch_up(source, orthanc.client(), index.path, nas.id, on_rebuilt=rebuilt,
                            concurrency=orthanc.concurrency, run_id=context.run.run_id,
                            outage_wait_seconds=orthanc.outage_wait_seconds,
                            identity=guard_for(config))
        except OrthancRefused as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        except OrthancUnavailable as exc:
            raise Failure(description=str(exc)) from None
        for day in done.uploaded:
            context.log_event(AssetMaterialization(asset_key=orthanc_key, partition=day.isoformat(),
                                                   metadata={"by": "reconciliation"}))
        return MaterializeResult(metadata={
            "partitions_reindexed": len(done.rebuilt), "partitions_uploaded": len(done.uploaded),
            "uploaded_this_run": done.summary.done, "files_held_this_run": sum(done.held.values()),
            **{f"this_run_{k}": v for k, v in done.summary.counts.items()},
        })

    @asset_check(asset=catch_up_key, name="every_stored_instance_in_orthanc",
                 required_resource_keys={"index", "orthanc"},
                 description="The whole-NAS sweep: every file recorded as imported or duplicate is in Orthanc. "
                             "Nightly it checks what changed since the last clean full sweep (Orthanc's "
                             "/changes and instance count) and reads a slice of Orthanc's instance list, the "
                             "whole list within a week (`listed`); a full sweep whenever anything is in doubt.")
    def every_stored_instance_in_orthanc(context: AssetCheckExecutionContext) -> AssetCheckResult:
        passed, metadata = work.every_stored_instance_in_orthanc(context.resources.index.path, nas.id,
                                                                context.resources.orthanc.client())
        return AssetCheckResult(passed=passed, metadata=metadata)

    job = define_asset_job(reconciliation_job_name(nas.id), selection=AssetSelection.assets(walk_key, catch_up_key),
                           description=f"Reconcile NAS '{nas.id}': walk everything, materialize only what changed.")
    return [reconciliation, reconciliation_catch_up], [every_stored_instance_in_orthanc], job
