"""Schedules per NAS: an incremental run of the current procedure date every 15 minutes (configurable), and a
nightly reconciliation over every partition, which also catches files rewritten in place."""

from __future__ import annotations

from dagster import RunRequest, ScheduleEvaluationContext, schedule

from pacs_assets.config import NasConfig, PacsConfig
from pacs_assets.defs.partitions import nas_partitions, range_tags


def build_schedules(nas: NasConfig, config: PacsConfig, job) -> list:
    partitions = nas_partitions(nas, config.timezone)
    # build_schedule_from_partitioned_job refuses a custom cron for a daily-partitioned job, and a
    # 15-minute cadence on daily partitions is the point here: so a plain schedule asks for today's key.
    @schedule(name=f"{nas.id}_incremental_schedule", cron_schedule=nas.incremental_cron, job=job,
              execution_timezone=config.timezone,
              description=f"Materializes today's procedure date of NAS '{nas.id}' ({nas.incremental_cron}).")
    def incremental(context: ScheduleEvaluationContext):
        key = partitions.get_last_partition_key(current_time=context.scheduled_execution_time)
        return RunRequest(partition_key=key, tags={"pacs/trigger": "incremental"})

    @schedule(name=f"{nas.id}_nightly_reconciliation_schedule", cron_schedule=nas.reconciliation_cron,
              job=job, execution_timezone=config.timezone,
              description=f"Re-walks NAS '{nas.id}' over every procedure date in one run: index and Orthanc "
                          "catch up with anything the sensor could not see.")
    def nightly_reconciliation(context: ScheduleEvaluationContext):
        keys = partitions.get_partition_keys(current_time=context.scheduled_execution_time)
        return RunRequest(run_key=f"{nas.id}:reconcile:{context.scheduled_execution_time:%Y-%m-%d}",
                          tags={**range_tags(keys[0], keys[-1]), "pacs/trigger": "reconciliation"})

    return [incremental, nightly_reconciliation]
