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
from pacs_assets.nas.base import NasBase, NasSource
from pacs_assets.nas.registry import source_for
from pacs_assets.orthanc.client import OrthancClient, build_client


class IndexResource(ConfigurableResource):
    """The DuckDB index file. Opened briefly per step, never held (see index/connection.py)."""

    path: str


class OrthancResource(ConfigurableResource):
    url: str
    more_urls: list[str] = []  # more nodes on the same index and storage (orthanc/nodes.py)
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 60.0
    concurrency: int = 4
    retries: int = 4

    def client(self) -> OrthancClient:
        return build_client([self.url, *self.more_urls], self.username, self.password,
                            timeout=self.timeout_seconds, retries=self.retries)


class NasSourceResource:
    """One configured NAS: its validated settings (which name the environment variables holding secrets, never
    the secrets) and the kind's source built from them. A plain object, which Dagster hands to the steps as it
    is: a ConfigurableResource would hold the settings only as config values (JSON), validated again per use."""

    def __init__(self, settings: NasBase):
        self.settings = settings

    def source(self) -> NasSource:
        return source_for(self.settings)


def orthanc_retry_policy(orthanc) -> RetryPolicy | None:
    """The step retry policy of every step that needs Orthanc (an ``OrthancConfig``): a restart of Orthanc is
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
    orthanc = config.orthanc
    resources: dict[str, ConfigurableResource] = {
        "index": IndexResource(path=str(config.index.path)),
        # EnvVar: the UI shows the variable's name, never the secret.
        "orthanc": OrthancResource(url=orthanc.url, more_urls=orthanc.more_urls, username=EnvVar(orthanc.username_env),
                                   password=EnvVar(orthanc.password_env), timeout_seconds=orthanc.timeout_seconds,
                                   concurrency=orthanc.concurrency, retries=orthanc.retries),
    }
    for nas in config.nas:
        resources[nas_resource_key(nas.id)] = NasSourceResource(nas)
    return resources
