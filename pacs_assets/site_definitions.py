"""Building the Dagster definitions for a site: one asset graph and one partitioned job per configured NAS."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from pacs_assets.assets import build_nas_assets
from pacs_assets.config import PacsConfig
from pacs_assets.resources import build_resources


def build_definitions(config: PacsConfig) -> Definitions:
    assets, jobs = [], []
    for nas in config.nas:
        assets += build_nas_assets(nas, config)
        jobs.append(define_asset_job(f"{nas.id}_job", selection=AssetSelection.groups(nas.id),
                                     description=f"Inventory, index and import NAS '{nas.id}'."))
    return Definitions(assets=assets, jobs=jobs, resources=build_resources(config))
