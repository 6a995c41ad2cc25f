"""Building the Dagster definitions for a site: per configured NAS, one asset graph, one partitioned job, its
schedules and its new-files sensor. The one definitions module, the code location, is pacs_assets/definitions.py:
it calls ``build_definitions`` with the site's configuration."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from pacs_assets.config import PacsConfig
from pacs_assets.defs.arrivals import build_orthanc_arrivals
from pacs_assets.defs.assets import build_nas_assets
from pacs_assets.defs.checks import build_nas_checks
from pacs_assets.defs.executor import pacs_in_process_executor
from pacs_assets.defs.identity_release import build_identity_sensor
from pacs_assets.defs.reconciliation import build_reconciliation, reconciliation_keys
from pacs_assets.defs.resources import build_resources
from pacs_assets.defs.schedules import build_schedules
from pacs_assets.defs.sensors import build_new_files_sensor, job_name


def build_definitions(config: PacsConfig) -> Definitions:
    assets, checks, jobs, schedules, sensors = [], [], [], [], []
    reconciliation_jobs = {}
    for nas in config.nas:
        assets += build_nas_assets(nas, config)
        checks += build_nas_checks(nas, config)
        rec_assets, rec_checks, rec_job = build_reconciliation(nas, config)
        assets, checks = assets + rec_assets, checks + rec_checks
        partitioned = AssetSelection.groups(nas.id) - AssetSelection.assets(*reconciliation_keys(nas.id))
        job = define_asset_job(job_name(nas.id), selection=partitioned,
                               description=f"Inventory, index and import NAS '{nas.id}'.")
        jobs += [job, rec_job]
        reconciliation_jobs[nas.id] = rec_job
        schedules += build_schedules(nas, config, job, rec_job)
        sensors.append(build_new_files_sensor(nas, config, [job, rec_job]))
    sensors.append(build_identity_sensor(config, reconciliation_jobs))  # uploads what a decision released
    arrivals = build_orthanc_arrivals(config)  # orthanc/arrivals, its job and the /changes sensor
    assets, jobs, sensors = assets + arrivals.assets, jobs + arrivals.jobs, sensors + arrivals.sensors
    # Every run in one process (jobs, UI launches and `dagster asset materialize` alike): a one-partition run
    # is seconds of work, while one process per step (3 assets + their checks) costs more than that work, and
    # the multiprocess executor's parent spins a core while a retry waits. Pools and retry policies hold in process. The
    # project's in-process executor also sleeps while a step waits for a pool slot, answers SIGINT/SIGTERM there,
    # and frees the slots of dead runs (defs/executor.py).
    return Definitions(assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules, sensors=sensors,
                       resources=build_resources(config), executor=pacs_in_process_executor)
