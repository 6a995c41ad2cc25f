"""Schedules per NAS: an incremental look every 15 minutes (configurable), for sites that keep the new-files
sensor off, and the nightly reconciliation.

The incremental schedule works like the sensor, from folder modification times in its own watch state: it
asks for runs of the dates that changed, walking only the folders that changed (a file is reported once it
held still across two looks, the second within the same tick: nas/settle.py). The nightly reconciliation runs the NAS's
reconciliation job: one walk of everything, which also catches files rewritten in place, then only the
partitions whose content changed are materialized (defs/reconciliation.py).
"""

from __future__ import annotations

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from pacs_assets.config import NasConfig, PacsConfig
from pacs_assets.defs.sensors import look_for_changes
from pacs_assets.nas.watch import NasUnavailable


def build_schedules(nas: NasConfig, config: PacsConfig, job, reconciliation_job) -> list:
    @schedule(name=f"{nas.id}_incremental_schedule", cron_schedule=nas.incremental_cron, job=job,
              execution_timezone=config.timezone,
              description=f"Every {nas.incremental_cron}: materializes the procedure dates of NAS '{nas.id}' whose "
                          "folders changed, walking only those folders (for sites without the new-files sensor).")
    def incremental(context: ScheduleEvaluationContext):
        try:
            result, requests = look_for_changes(nas, config, "schedule", trigger="incremental")
        except NasUnavailable as exc:
            return SkipReason(str(exc))
        return requests or SkipReason(f"no settled change ({result.folders_statted} folders checked)")

    @schedule(name=f"{nas.id}_nightly_reconciliation_schedule", cron_schedule=nas.reconciliation_cron,
              job=reconciliation_job, execution_timezone=config.timezone,
              description=f"Re-walks all of NAS '{nas.id}' in one run; only the procedure dates whose files changed "
                          "are materialized (index and Orthanc catch up with anything the sensor could not see).")
    def nightly_reconciliation(context: ScheduleEvaluationContext):
        return RunRequest(run_key=f"{nas.id}:reconcile:{context.scheduled_execution_time:%Y-%m-%d}",
                          tags={"pacs/trigger": "reconciliation"})

    return [incremental, nightly_reconciliation]
