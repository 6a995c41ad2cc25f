"""Sensors: a new-files sensor per NAS, which requests runs for the procedure dates where files appeared,
changed or vanished.

Run keys are derived from the changes themselves, so the same change never starts two runs. Each run
walks the whole NAS anyway (from the scan cache: only changed files are parsed), so when a tick finds
many affected dates — the first look at a NAS with years of history — it asks for one run over their
range instead of one run per date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from zoneinfo import ZoneInfo

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pacs_assets.config import NasConfig, PacsConfig
from pacs_assets.defs.partitions import range_tags
from pacs_assets.nas.registry import kind_of
from pacs_assets.nas.watch import NasUnavailable, NasWatch

TICK_BUDGET_SECONDS = 20.0
MAX_RUNS_PER_TICK = 8


def watch_state_path(config: PacsConfig, nas_id: str) -> Path:
    return config.index.path.parent / "watch" / f"{nas_id}.sqlite"


def _run_key(nas_id: str, label: str, changes: list[tuple[str, str]]) -> str:
    digest = hashlib.sha1(json.dumps(changes).encode()).hexdigest()[:16]
    return f"{nas_id}:{label}:{digest}"


def run_requests_for(nas_id: str, changes: dict[dt.date, list[tuple[str, str]]], whole_nas: bool) -> list[RunRequest]:
    if not changes:
        return []
    days = sorted(changes)
    if whole_nas or len(days) > MAX_RUNS_PER_TICK:
        all_changes = [c for d in days for c in changes[d]]
        label = f"{days[0]}..{days[-1]}"
        return [RunRequest(run_key=_run_key(nas_id, label, all_changes),
                           tags={**range_tags(days[0].isoformat(), days[-1].isoformat()), "pacs/trigger": "new_files"})]
    return [RunRequest(partition_key=d.isoformat(), run_key=_run_key(nas_id, d.isoformat(), changes[d]),
                       tags={"pacs/trigger": "new_files"}) for d in days]


def build_new_files_sensor(nas: NasConfig, config: PacsConfig, job_name: str):
    tz = ZoneInfo(config.timezone)
    kind = kind_of(nas)

    @sensor(name=f"{nas.id}_new_files_sensor", job_name=job_name, minimum_interval_seconds=nas.sensor_interval_seconds,
            default_status=DefaultSensorStatus.STOPPED,
            description=f"Watches NAS '{nas.id}' for new, changed and deleted files and materializes the "
                        "procedure dates they belong to.")
    def new_files_sensor(context: SensorEvaluationContext):
        today = dt.datetime.now(tz).date()
        watch = NasWatch(watch_state_path(config, nas.id), nas.root, partitions_start=nas.partitions_start,
                         settle_seconds=nas.settle_seconds, read_dates=kind.read_dates)
        try:
            result = watch.tick(TICK_BUDGET_SECONDS, today)
        except NasUnavailable as exc:
            return SkipReason(str(exc))
        finally:
            watch.close()
        # A kind that cannot date a file by reading it (its catalog knows): reconcile the dates it spans.
        whole = kind.read_dates is None
        if whole and result.changes:
            last = max(max(result.changes), today)
            result.changes.setdefault(last, [])
        requests = run_requests_for(nas.id, result.changes, whole)
        cursor = json.dumps({"statted": result.folders_statted, "listed": result.folders_listed,
                             "queued": result.queued, "pending": result.pending})
        if not requests:
            return SensorResult(skip_reason=SkipReason(
                f"no settled change ({result.folders_statted} folders checked, {result.queued} still to list)"),
                cursor=cursor)
        return SensorResult(run_requests=requests, cursor=cursor)

    return new_files_sensor
