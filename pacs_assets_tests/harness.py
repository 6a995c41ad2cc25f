"""Running a NAS's asset graph in-process over all its partitions, as a single-run backfill would."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, ExecuteInProcessResult

from pacs_assets.config import load_config
from pacs_assets.site_definitions import build_definitions


def materialize_nas(config_path: Path, nas_id: str, *, first: str | None = None, last: str | None = None,
                    raise_on_error: bool = True, instance: DagsterInstance | None = None,
                    asset_selection: list | None = None) -> ExecuteInProcessResult:
    defs = build_definitions(load_config(config_path))
    job = defs.resolve_job_def(f"{nas_id}_job")
    keys = job.partitions_def.get_partition_keys()
    return job.execute_in_process(
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
        asset_selection=asset_selection,
        tags={"dagster/asset_partition_range_start": first or keys[0],
              "dagster/asset_partition_range_end": last or keys[-1]},
    )


def step_failure_message(result: ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "expected a failed step"
    data = failures[0].step_failure_data
    if data.user_failure_data is not None:  # a dagster.Failure: its description is what the UI shows
        return data.user_failure_data.description
    error = data.error
    while error.cause is not None:
        error = error.cause
    return error.message
