"""Modality arrivals: the instances Orthanc received, recorded in the index from Orthanc's /changes feed.

A modality that sends its images straight to Orthanc (C-STORE) bypasses every NAS, so the NAS graphs never
see them. Orthanc logs every stored instance in ``GET /changes`` (``NewInstance``, with a growing ``Seq``):

- the asset ``orthanc/arrivals`` reads the changes of one Seq range ``(since, until]`` (run config), fetches
  each new instance's identifiers from Orthanc's own index (no DICOM file is read) and writes them into the
  ``orthanc_arrivals`` table (index/arrivals.py), replacing those instances' rows in one transaction: a
  rerun of the same range gives the same rows;
- the sensor ``orthanc_changes_sensor`` keeps the last Seq it saw as its cursor and requests one run per
  tick for the range that holds new instances (run key ``orthanc:{since}:{until}``).

Our own NAS imports appear in /changes too. They are recorded as well, flagged ``from_nas`` (the index knows
the SOP Instance UID on a NAS) and with ``origin`` = ``RestApi``: the feed cannot tell them apart by itself,
skipping them would make the table depend on what the NAS index happened to hold at run time (a modality's
instance later found on a NAS would silently vanish on a rerun), and a complete ledger of what Orthanc
received is what reconciliation needs. Modality arrivals proper are ``WHERE NOT from_nas`` (or
``origin = 'DicomProtocol'``). Patient data goes into the index only; logs and metadata carry counts.
"""

# No `from __future__ import annotations`: Dagster reads the Config annotation of the asset at definition time.
import dataclasses
import datetime as dt
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import requests
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Backoff,
    Config,
    DefaultSensorStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
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
from pacs_assets.index import arrivals as arrivals_sql
from pacs_assets.orthanc import OrthancClient, OrthancUnavailable
from pacs_assets.resources import IndexResource, OrthancResource

ARRIVALS_KEY = AssetKey(["orthanc", "arrivals"])
ARRIVALS_GROUP = "orthanc"
ARRIVALS_JOB = "orthanc_arrivals_job"
SENSOR_NAME = "orthanc_changes_sensor"
OWNERS = ["team:radiology-it"]
CHANGES_PAGE = 1000
TICK_BUDGET_SECONDS = 20.0
SENSOR_HTTP_TIMEOUT = 10.0
# One run covers at most this many new instances; a longer backlog (the first look at a busy Orthanc)
# is spread over consecutive ticks, each continuing where the last stopped.
MAX_INSTANCES_PER_RUN = 10_000
# The site config (config.py) has no key for it yet: an environment variable, else 30 s.


class OrthancArrivalsConfig(Config):
    """The Seq range of Orthanc's /changes to record: changes with since < Seq <= until."""

    since: int = Field(ge=0, description="Last Seq already recorded (exclusive).")
    until: int = Field(ge=0, description="Last Seq to record (inclusive).")


def arrivals_run_config(since: int, until: int) -> dict:
    return {"ops": {ARRIVALS_KEY.to_python_identifier(): {"config": {"since": since, "until": until}}}}


# -- Orthanc REST ---------------------------------------------------------------------------------------

def _get_json(client: OrthancClient, path: str, what: str, params: dict | None = None, *,
              missing_ok: bool = False):
    """GET a JSON answer, retrying what can succeed later. ``what`` names the endpoint without any ID.

    Returns None for a 404 when ``missing_ok`` (an instance deleted since it arrived); raises
    OrthancUnavailable with one sentence otherwise.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            resp = client.session.get(f"{client.url}{path}", params=params, timeout=client.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            kind = "did not answer in time" if isinstance(exc, requests.Timeout) else "is unreachable"
            error, retryable = f"Orthanc at {client.url} {kind} (GET {what}).", True
        else:
            if resp.status_code == 200:
                return resp.json()
            if resp.status_code == 404 and missing_ok:
                return None
            if resp.status_code == 401:
                raise OrthancUnavailable(f"Orthanc at {client.url} refused the credentials (HTTP 401): "
                                         "check ORTHANC_USERNAME / ORTHANC_PASSWORD.")
            error = f"Orthanc at {client.url} answered HTTP {resp.status_code} to GET {what}."
            retryable = resp.status_code >= 500 or resp.status_code == 429
        if not retryable or attempt > client.retries:
            raise OrthancUnavailable(error)
        time.sleep(client.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))


@dataclasses.dataclass
class ChangesScan:
    """What a walk over /changes found: its new instances as (seq, orthanc id, change date)."""

    since: int
    position: int  # every change with Seq <= position was looked at
    new_instances: list[tuple[int, str, str | None]] = dataclasses.field(default_factory=list)
    changes: int = 0
    done: bool = False  # reached the end of Orthanc's feed (or `until`)
    orthanc_last: int | None = None  # Orthanc's last Seq when it answered below `since` (database replaced)


def read_changes(client: OrthancClient, since: int, until: int | None = None, *, budget: float | None = None,
                 max_new: int | None = None, page: int = CHANGES_PAGE) -> ChangesScan:
    """Page through ``GET /changes`` from ``since`` (exclusive) up to ``until`` (inclusive, None: the end).

    Stops early when ``budget`` seconds are spent or ``max_new`` new instances are found; ``position`` then
    says where to continue, so consecutive scans neither miss nor repeat a change.
    """
    started = time.monotonic()
    scan = ChangesScan(since=since, position=since)
    while True:
        answer = _get_json(client, "/changes", "/changes", {"since": scan.position, "limit": page})
        changes = answer.get("Changes") or []
        last = int(answer.get("Last", scan.position))
        if not changes:
            if last < scan.position:
                scan.orthanc_last = last
            scan.done = True
            return scan
        for change in changes:
            seq = int(change["Seq"])
            if until is not None and seq > until:
                scan.done = True
                return scan
            scan.changes += 1
            scan.position = seq
            if change.get("ChangeType") == "NewInstance":
                scan.new_instances.append((seq, change["ID"], change.get("Date")))
                if max_new is not None and len(scan.new_instances) >= max_new:
                    return scan
        scan.position = max(scan.position, last)
        if answer.get("Done") or (until is not None and scan.position >= until):
            scan.done = True
            return scan
        if budget is not None and time.monotonic() - started > budget:
            return scan


def _text(tags: dict, name: str) -> str | None:
    value = tags.get(name)
    return value if value not in (None, "") else None


def _timestamp(value: str | None) -> dt.datetime | None:
    """Orthanc's ISO basic format (UTC for ReceptionDate and the changes' Date)."""
    try:
        return dt.datetime.strptime(value, "%Y%m%dT%H%M%S") if value else None
    except ValueError:
        return None


def fetch_arrivals(client: OrthancClient, new_instances: list[tuple[int, str, str | None]], *,
                   concurrency: int = 4) -> tuple[list[dict], int]:
    """The index rows of these new instances, from Orthanc's own index (no DICOM file is read).

    One GET per instance (its main tags and parent) plus one for its metadata (origin, sender, reception
    time), then one per distinct series and one per distinct study: a modality's series of 500 slices costs
    1,002 requests, not 1,500. Returns the rows and how many instances were deleted from Orthanc since.
    """
    latest: dict[str, tuple[int, str | None]] = {}
    for seq, iid, date in new_instances:
        if iid not in latest or seq > latest[iid][0]:
            latest[iid] = (seq, date)
    ids = list(latest)

    def instance(iid: str):
        body = _get_json(client, f"/instances/{iid}", "/instances/{id}", missing_ok=True)
        if body is None:
            return None
        meta = _get_json(client, f"/instances/{iid}/metadata", "/instances/{id}/metadata", {"expand": ""},
                         missing_ok=True)
        return body, meta or {}

    def resource(level: str):
        return lambda rid: _get_json(client, f"/{level}/{rid}", f"/{level}/{{id}}", missing_ok=True)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        instances = dict(zip(ids, pool.map(instance, ids)))
        series_ids = sorted({i[0]["ParentSeries"] for i in instances.values() if i})
        series = dict(zip(series_ids, pool.map(resource("series"), series_ids)))
        study_ids = sorted({s["ParentStudy"] for s in series.values() if s})
        studies = dict(zip(study_ids, pool.map(resource("studies"), study_ids)))

    rows, gone = [], 0
    for iid in ids:
        found = instances[iid]
        se = series.get(found[0]["ParentSeries"]) if found else None
        st = studies.get(se["ParentStudy"]) if se else None
        if st is None:  # deleted from Orthanc between its arrival and now
            gone += 1
            continue
        body, meta = found
        seq, date = latest[iid]
        tags, series_tags = body.get("MainDicomTags", {}), se.get("MainDicomTags", {})
        study_tags, patient_tags = st.get("MainDicomTags", {}), st.get("PatientMainDicomTags", {})
        rows.append({
            "orthanc_instance_id": iid, "seq": seq,
            "patient_id": _text(patient_tags, "PatientID"), "patient_name": _text(patient_tags, "PatientName"),
            "patient_birth_date": _text(patient_tags, "PatientBirthDate"),
            "patient_sex": _text(patient_tags, "PatientSex"),
            "study_instance_uid": _text(study_tags, "StudyInstanceUID"),
            "study_date": _text(study_tags, "StudyDate"),
            "study_description": _text(study_tags, "StudyDescription"),
            "accession_number": _text(study_tags, "AccessionNumber"),
            "series_instance_uid": _text(series_tags, "SeriesInstanceUID"),
            "modality": _text(series_tags, "Modality"),
            "sop_instance_uid": _text(tags, "SOPInstanceUID"),
            "sop_class_uid": _text(meta, "SopClassUid"), "transfer_syntax_uid": _text(meta, "TransferSyntax"),
            "origin": _text(meta, "Origin"), "remote_aet": _text(meta, "RemoteAET"),
            "received_at": _timestamp(meta.get("ReceptionDate")) or _timestamp(date),
        })
    return rows, gone


# -- the asset ------------------------------------------------------------------------------------------

def _count_table(title: str, counts: Counter) -> MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))
    return MetadataValue.md(f"| {title} | instances |\n|---|---|\n{rows}" if rows else "none")


def build_arrivals_asset(site: PacsConfig):
    orthanc_cfg = site.orthanc

    @asset(key=ARRIVALS_KEY, group_name=ARRIVALS_GROUP, kinds={"duckdb", "python"}, owners=OWNERS,
           description="Every instance Orthanc received, from its /changes feed (NewInstance), in the index "
                       "table orthanc_arrivals: modality C-STOREs, and our NAS imports flagged from_nas. Run "
                       "config: the Seq range (since, until]; a rerun of a range rewrites the same rows.",
           retry_policy=RetryPolicy(max_retries=orthanc_cfg.run_retries, delay=orthanc_cfg.run_retry_delay_seconds,
                                    backoff=Backoff.EXPONENTIAL) if orthanc_cfg.run_retries else None)
    def orthanc_arrivals(context: AssetExecutionContext, config: OrthancArrivalsConfig, index: IndexResource,
                         orthanc: OrthancResource) -> MaterializeResult:
        if config.until < config.since:
            raise Failure(description=f"Run config asks for Seq {config.since}..{config.until}: 'until' must not "
                                      "be below 'since'.", allow_retries=False)
        client = orthanc.client()
        started = time.monotonic()
        try:
            client.system()
            scan = read_changes(client, config.since, config.until)
            rows, gone = fetch_arrivals(client, scan.new_instances, concurrency=orthanc.concurrency)
        except OrthancUnavailable as exc:
            raise Failure(description=str(exc)) from None
        counts = arrivals_sql.replace_arrivals(index.path, rows)
        totals = arrivals_sql.arrival_totals(index.path)
        seconds = time.monotonic() - started
        context.log.info(f"Orthanc changes {config.since}..{scan.position}: {len(scan.new_instances)} new "
                         f"instances, {counts['written']} recorded ({counts['from_nas']} known on a NAS), "
                         f"{gone} deleted from Orthanc since.")
        origins = Counter(r["origin"] or "unknown" for r in rows)
        return MaterializeResult(metadata={
            "since": config.since,
            "until": config.until,
            "changes_read": scan.changes,
            "new_instance_changes": len(scan.new_instances),
            "instances_recorded": counts["written"],
            "from_nas": counts["from_nas"],
            "not_from_nas": counts["written"] - counts["from_nas"],
            "gone_from_orthanc": gone,
            "kept_newer_arrival": counts["kept_newer"],
            "by_origin": _count_table("origin", origins),
            "by_modality": _count_table("modality", Counter(r["modality"] or "unknown" for r in rows)),
            "fetch_seconds": round(seconds, 2),
            "dagster/row_count": totals["rows"],
            "table_from_nas": totals["from_nas"],
            "table_not_on_nas_now": totals["not_on_nas_now"],
        })

    return orthanc_arrivals


# -- the sensor -----------------------------------------------------------------------------------------

def sensor_client(site: PacsConfig) -> OrthancClient:
    """Orthanc as the site config names it, credentials from the environment at tick time."""
    cfg = site.orthanc
    return OrthancClient(cfg.url, os.environ.get(cfg.username_env), os.environ.get(cfg.password_env),
                         timeout=min(cfg.timeout_seconds, SENSOR_HTTP_TIMEOUT), retries=1, backoff=0.2)


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
    def orthanc_changes_sensor(context: SensorEvaluationContext):
        since = _parse_cursor(context.cursor)
        client = sensor_client(site)
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
