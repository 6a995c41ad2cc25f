"""The Dagster side of modality arrivals: the ``orthanc/arrivals`` asset, its job, and ``orthanc_changes_sensor``.

- the asset reads one Seq range ``(since, until]`` (run config) of Orthanc's /changes feed and records the
  new instances in ``orthanc_arrivals`` (pipeline/arrivals.py): a rerun of the same range gives the same rows;
- the sensor keeps the last Seq it saw as its cursor and requests one run per tick for the range that holds
  new instances (run key ``orthanc:{since}:{until}``).

The same concept on three layers: the asset and sensor (defs/arrivals.py), the work (pipeline/arrivals.py),
the SQL (index/arrivals.py).
"""

# No `from __future__ import annotations`: Dagster reads the Config annotation of the asset at definition time.
from collections import Counter
from typing import NamedTuple

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Config,
    DefaultSensorStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)
from pydantic import Field

from pacs_assets.config import ConfigError, PacsConfig
from pacs_assets.defs.resources import IndexResource, OrthancResource, orthanc_retry_policy
from pacs_assets.orthanc.changes import read_changes
from pacs_assets.orthanc.client import OrthancUnavailable
from pacs_assets.pipeline.arrivals import record_arrivals

ARRIVALS_KEY = AssetKey(["orthanc", "arrivals"])
ARRIVALS_GROUP = "orthanc"
ARRIVALS_JOB = "orthanc_arrivals_job"
SENSOR_NAME = "orthanc_changes_sensor"
OWNERS = ["team:radiology-it"]
TICK_BUDGET_SECONDS = 20.0
SENSOR_HTTP_TIMEOUT = 10.0
# One run covers at most this many new instances; a longer backlog (the first look at a busy Orthanc)
# is spread over consecutive ticks, each continuing where the last stopped.
MAX_INSTANCES_PER_RUN = 10_000


class OrthancArrivalsConfig(Config):
    """The Seq range of Orthanc's /changes to record: changes with since < Seq <= until."""

    since: int = Field(ge=0, description="Last Seq already recorded (exclusive).")
    until: int = Field(ge=0, description="Last Seq to record (inclusive).")


def arrivals_run_config(since: int, until: int) -> dict:
    return {"ops": {ARRIVALS_KEY.to_python_identifier(): {"config": {"since": since, "until": until}}}}


# -- the asset ------------------------------------------------------------------------------------------

def _count_table(title: str, counts: Counter) -> MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))
    return MetadataValue.md(f"| {title} | instances |\n|---|---|\n{rows}" if rows else "none")


def build_arrivals_asset(site: PacsConfig):
    @asset(key=ARRIVALS_KEY, group_name=ARRIVALS_GROUP, kinds={"duckdb", "python"}, owners=OWNERS,
           description="Every instance Orthanc received, from its /changes feed (NewInstance), in the index "
                       "table orthanc_arrivals: modality C-STOREs, and our NAS imports flagged from_nas. Run "
                       "config: the Seq range (since, until]; a rerun of a range rewrites the same rows.",
           retry_policy=orthanc_retry_policy(site.orthanc))
    def orthanc_arrivals(context: AssetExecutionContext, config: OrthancArrivalsConfig, index: IndexResource,
                         orthanc: OrthancResource) -> MaterializeResult:
        if config.until < config.since:
            raise Failure(description=f"Run config asks for Seq {config.since}..{config.until}: 'until' must not "
                                      "be below 'since'.", allow_retries=False)
        try:
            s = record_arrivals(orthanc.client(), index.path, config.since, config.until,
                                concurrency=orthanc.concurrency)
        except OrthancUnavailable as exc:
            raise Failure(description=str(exc)) from None
        context.log.info(f"Orthanc changes {config.since}..{s.position}: {s.new_instance_changes} new "
                         f"instances, {s.written} recorded ({s.from_nas} known on a NAS), "
                         f"{s.gone} deleted from Orthanc since.")
        return MaterializeResult(metadata={
            "since": config.since,
            "until": config.until,
            "changes_read": s.changes_read,
            "new_instance_changes": s.new_instance_changes,
            "instances_recorded": s.written,
            "from_nas": s.from_nas,
            "not_from_nas": s.written - s.from_nas,
            "gone_from_orthanc": s.gone,
            "kept_newer_arrival": s.kept_newer,
            "by_origin": _count_table("origin", s.origins),
            "by_modality": _count_table("modality", s.modalities),
            "fetch_seconds": round(s.seconds, 2),
            "dagster/row_count": s.totals["rows"],
            "table_from_nas": s.totals["from_nas"],
            "table_not_on_nas_now": s.totals["not_on_nas_now"],
        })

    return orthanc_arrivals


# -- the sensor -----------------------------------------------------------------------------------------

def _parse_cursor(cursor: str | None) -> int:
    try:
        return max(int(cursor), 0) if cursor else 0
    except ValueError:
        return 0


def build_orthanc_changes_sensor(site: PacsConfig, job_name: str = ARRIVALS_JOB, *,
                                 minimum_interval_seconds: int | None = None,
                                 tick_budget_seconds: float = TICK_BUDGET_SECONDS,
                                 max_instances_per_run: int = MAX_INSTANCES_PER_RUN):
    @sensor(name=SENSOR_NAME, job_name=job_name,
            minimum_interval_seconds=minimum_interval_seconds or site.orthanc.changes_sensor_interval_seconds,
            default_status=DefaultSensorStatus.STOPPED,
            description="Follows Orthanc's /changes feed (cursor: the last Seq seen) and records the instances "
                        "that arrived, modality C-STOREs included, via one orthanc/arrivals run per tick.")
    def orthanc_changes_sensor(context: SensorEvaluationContext, orthanc: OrthancResource):
        since = _parse_cursor(context.cursor)
        # A tick must end soon: a short timeout, one retry.
        client = orthanc.client(timeout=min(orthanc.timeout_seconds, SENSOR_HTTP_TIMEOUT), retries=1, backoff=0.2)
        try:
            client.system()
            scan = read_changes(client, since, budget=tick_budget_seconds, max_new=max_instances_per_run)
            if scan.orthanc_last is not None:
                # Orthanc's feed ends below our cursor: its database was replaced or its changes cleared.
                context.log.warning(f"Orthanc's changes end at Seq {scan.orthanc_last}, below this sensor's "
                                    f"cursor {since}: its database was replaced; reading it from the start.")
                since = 0
                scan = read_changes(client, 0, budget=tick_budget_seconds, max_new=max_instances_per_run)
        except OrthancUnavailable as exc:
            return SkipReason(str(exc))
        cursor = str(scan.position)
        if not scan.new_instances:
            return SensorResult(skip_reason=SkipReason(
                f"No new instance in Orthanc's changes after Seq {since} ({scan.changes} other changes)."),
                cursor=cursor)
        until = scan.position
        return SensorResult(run_requests=[RunRequest(
            run_key=f"orthanc:{since}:{until}", run_config=arrivals_run_config(since, until),
            tags={"pacs/trigger": "orthanc_changes"})], cursor=cursor)

    return orthanc_changes_sensor


class OrthancArrivals(NamedTuple):
    assets: list
    jobs: list
    sensors: list


def build_orthanc_arrivals(site: PacsConfig) -> OrthancArrivals:
    """The orthanc/arrivals asset, its job and the /changes sensor, for build_definitions."""
    if any(nas.id == ARRIVALS_GROUP for nas in site.nas):
        raise ConfigError(f"{site.source_file}: NAS id '{ARRIVALS_GROUP}' is reserved for Orthanc's own assets; "
                          "rename that NAS.")
    job = define_asset_job(ARRIVALS_JOB, selection=AssetSelection.assets(ARRIVALS_KEY),
                           description="Record the instances Orthanc received in a Seq range of its /changes feed.")
    return OrthancArrivals([build_arrivals_asset(site)], [job], [build_orthanc_changes_sensor(site, job.name)])
