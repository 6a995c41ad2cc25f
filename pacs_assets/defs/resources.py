"""Dagster resources: the index, the Orthanc PACS, and one NAS resource per configured NAS.

``NasSourceResource`` is the one interface for every NAS kind and the one route of its settings: it carries
the NAS's validated block of pacs.yaml (the model itself, validated once when the configuration loads, never
serialised and validated again) and builds the kind's source through the registry (nas/registry.py), so the
kinds themselves stay free of Dagster and a new kind needs no new resource class. An asset takes both the
source and the settings from it (``nas_of``).
"""

from __future__ import annotations

from dagster import Backoff, ConfigurableResource, EnvVar, RetryPolicy

from pacs_assets.config import PacsConfig
from pacs_assets.nas.base import NasSettings, NasSource
from pacs_assets.nas.registry import source_for
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.connect import connect
from pacs_assets.orthanc.orthanc_settings import OrthancSettings


class IndexResource(ConfigurableResource):
    """The DuckDB index file. Opened briefly per step, never held (see index/connection.py)."""

    path: str


class OrthancResource(ConfigurableResource, OrthancSettings):
    """Orthanc for every asset, check and sensor: the site's ``orthanc:`` settings themselves (this class adds
    no setting, so a new option is declared once, in orthanc/orthanc_settings.py) plus the credentials, which Dagster
    resolves from the variables the settings name (``EnvVar``: the UI shows the names, never the secrets)."""

    username: str | None = None
    password: str | None = None

    @classmethod
    def from_settings(cls, settings: OrthancSettings) -> OrthancResource:
        return cls(**dict(settings), username=EnvVar(settings.username_env), password=EnvVar(settings.password_env))

    def client(self, *, timeout: float | None = None, retries: int | None = None,
               backoff: float = 0.5) -> OrthancApi:
        """The client of one node or several (orthanc/connect.py); a sensor passes a shorter timeout."""
        return connect(self, self.username, self.password, timeout=timeout, retries=retries, backoff=backoff)


class NasSourceResource:
    """One configured NAS: its validated settings (which name the environment variables holding secrets, never
    the secrets) and the kind's source built from them. A plain object, which Dagster hands to the steps as it
    is: a ConfigurableResource would hold the settings only as config values (JSON), validated again per use."""

    def __init__(self, settings: NasSettings):
        self.settings = settings

    def source(self) -> NasSource:
        return source_for(self.settings)


def orthanc_retry_policy(orthanc: OrthancSettings) -> RetryPolicy | None:
    """The step retry policy of every step that needs Orthanc: a restart of Orthanc is
    waited out, with exponential backoff; None when the site turned step retries off."""
    if not orthanc.run_retries:
        return None
    return RetryPolicy(max_retries=orthanc.run_retries, delay=orthanc.run_retry_delay_seconds,
                       backoff=Backoff.EXPONENTIAL)


def nas_resource_key(nas_id: str) -> str:
    return f"{nas_id}_nas"


def nas_of(context, nas_id: str) -> NasSourceResource:
    """The NAS resource of a step that required ``nas_resource_key(nas_id)``."""
    return getattr(context.resources, nas_resource_key(nas_id))


def build_resources(config: PacsConfig) -> dict[str, ConfigurableResource]:
    resources: dict[str, ConfigurableResource] = {
        "index": IndexResource(path=str(config.index.path)),
        "orthanc": OrthancResource.from_settings(config.orthanc),
    }
    for nas in config.nas:
        resources[nas_resource_key(nas.id)] = NasSourceResource(nas)
    return resources
