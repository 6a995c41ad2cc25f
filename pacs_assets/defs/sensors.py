"""Sensors: a new-files sensor per NAS, which requests runs for the procedure dates where files appeared,
changed or vanished, walking only the folders where they did.

Run keys are derived from the changes themselves, so the same change never starts two runs. Each run
request names the folders to walk (through a reference to a list stored beside the watch state: folder
names often name patients, and run config shows in the UI). A run walks, stages and merges only those
folders. When a tick finds many affected dates it asks for one run over their range instead of one run
per date. On the first look at a NAS (everything is new), past ``MAX_FOLDERS`` folders, and for a kind
without folder semantics (firebird_jpeg2000: its catalog says where files are), it asks for a
reconciliation run instead: one whole walk that materializes only the dates whose files changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from zoneinfo import ZoneInfo

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pacs_assets.config import NasConfig, PacsConfig
from pacs_assets.defs.partitions import range_tags
from pacs_assets.nas.folder_lists import write_folder_list
from pacs_assets.nas.registry import kind_of
from pacs_assets.nas.watch import NasUnavailable, NasWatch, TickResult

TICK_BUDGET_SECONDS = 20.0
MAX_RUNS_PER_TICK = 8
MAX_FOLDERS = 2000  # beyond this, one whole walk (a reconciliation) is cheaper than naming every folder
# The daemon evaluates sensors on a 5 s loop and skips a sensor whose last tick *started* less than its minimum
# interval ago. A tick starts a moment after its loop does, so a minimum equal to sensor_interval_seconds skips
# every other loop: 5 s became a 10 s cadence (benchmarks/bench_daemon.py), 60 s became 65 s. One second of
# slack keeps the cadence at the configured interval. Correctness does not depend on it: a file settles on
# the next tick that finds it unchanged, whenever that tick comes.
DAEMON_LOOP_SLACK_SECONDS = 1


def minimum_interval(interval_seconds: int) -> int:
    """The sensor's minimum_interval_seconds that gives ticks every ``interval_seconds`` under the daemon."""
    return max(1, interval_seconds - DAEMON_LOOP_SLACK_SECONDS)


def job_name(nas_id: str) -> str:
    return f"{nas_id}_job"


def reconciliation_job_name(nas_id: str) -> str:
    return f"{nas_id}_reconciliation_job"


def watch_state_path(config: PacsConfig, nas_id: str, who: str = "sensor") -> Path:
    """The watch state of a NAS: one for the new-files sensor, another for the incremental schedule."""
    name = f"{nas_id}.sqlite" if who == "sensor" else f"{nas_id}.{who}.sqlite"
    return config.index.path.parent / "watch" / name


def folder_run_config(nas_id: str, ref: str | None) -> dict:
    """The run config that makes ``file_inventory`` walk only the folders behind ``ref`` (None: everything)."""
    if ref is None:
        return {}
    op = AssetKey([nas_id, "file_inventory"]).to_python_identifier()
    return {"ops": {op: {"config": {"folders_ref": ref}}}}


def _run_key(nas_id: str, label: str, changes: list[tuple[str, str]]) -> str:
    digest = hashlib.sha1(json.dumps(changes).encode()).hexdigest()[:16]
    return f"{nas_id}:{label}:{digest}"


def run_requests_for(nas: NasConfig, config: PacsConfig, result: TickResult,
                     trigger: str = "new_files") -> list[RunRequest]:
    """Runs of the NAS job for the changed dates and folders; or one reconciliation run (a whole walk that
    materializes only the dates that changed) for the first look at a NAS, for a kind without folders, or
    for changes in more folders than ``MAX_FOLDERS``."""
    changes = result.changes
    if not changes:
        return []
    state_dir = watch_state_path(config, nas.id).parent
    days = sorted(changes)
    all_changes = [c for d in days for c in changes[d]]
    folders = sorted({f for d in days for f in result.folders(d)})
    whole_nas = not kind_of(nas).has_folders  # a kind that cannot date a file by reading it: its catalog can
    if whole_nas or result.first_look or len(folders) > MAX_FOLDERS:
        return [RunRequest(job_name=reconciliation_job_name(nas.id),
                           run_key=_run_key(nas.id, f"reconcile:{days[0]}..{days[-1]}", all_changes),
                           tags={"pacs/trigger": trigger})]
    if len(days) > MAX_RUNS_PER_TICK:
        ref = write_folder_list(state_dir, folders)
        label = f"{days[0]}..{days[-1]}"
        return [RunRequest(job_name=job_name(nas.id), run_key=_run_key(nas.id, label, all_changes),
                           run_config=folder_run_config(nas.id, ref),
                           tags={**range_tags(days[0].isoformat(), days[-1].isoformat()), "pacs/trigger": trigger})]
    return [RunRequest(job_name=job_name(nas.id), partition_key=d.isoformat(),
                       run_key=_run_key(nas.id, d.isoformat(), changes[d]),
                       run_config=folder_run_config(nas.id, write_folder_list(state_dir, result.folders(d))),
                       tags={"pacs/trigger": trigger}) for d in days]


def look_for_changes(nas: NasConfig, config: PacsConfig, who: str,
                     trigger: str = "new_files") -> tuple[TickResult, list[RunRequest]]:
    """One look at the NAS through its watch state (``who``: the sensor's or the schedule's) and the runs its
    changes call for. Raises NasUnavailable on an outage."""
    today = dt.datetime.now(ZoneInfo(config.timezone)).date()
    watch = NasWatch(watch_state_path(config, nas.id, who), nas.root, partitions_start=nas.partitions_start,
                     settle_seconds=nas.settle_seconds, read_dates=kind_of(nas).read_dates,
                     look_again_seconds=nas.watch_settle_seconds)
    try:
        result = watch.tick(TICK_BUDGET_SECONDS, today)
    finally:
        watch.close()
    return result, run_requests_for(nas, config, result, trigger)


def build_new_files_sensor(nas: NasConfig, config: PacsConfig, jobs: list):
    @sensor(name=f"{nas.id}_new_files_sensor", jobs=jobs,
            minimum_interval_seconds=minimum_interval(nas.sensor_interval_seconds),
            default_status=DefaultSensorStatus.STOPPED,
            description=f"Watches NAS '{nas.id}' for new, changed and deleted files and materializes the "
                        "procedure dates they belong to, walking only the folders that changed.")
    def new_files_sensor(context: SensorEvaluationContext):
        try:
            result, requests = look_for_changes(nas, config, "sensor")
        except NasUnavailable as exc:
            return SkipReason(str(exc))
        cursor = json.dumps({"statted": result.folders_statted, "listed": result.folders_listed,
                             "queued": result.queued, "pending": result.pending, "not_read": result.not_read,
                             "sweep": f"{result.sweep_checked}/{result.sweep_total}"})
        unread = f", {result.not_read} folders not read (kept as they were)" if result.not_read else ""
        sweep = f"; sweep {result.sweep_checked}/{result.sweep_total} folders" if result.sweep_total else ""
        if not requests:
            return SensorResult(skip_reason=SkipReason(
                f"no settled change ({result.folders_statted} folders checked, {result.queued} still to list"
                f"{unread}{sweep})"), cursor=cursor)
        return SensorResult(run_requests=requests, cursor=cursor)

    return new_files_sensor
