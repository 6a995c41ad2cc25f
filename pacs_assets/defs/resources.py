"""Dagster resources: the index, the Orthanc PACS, and one NAS resource per configured NAS.

``NasSourceResource`` is the one interface for every NAS kind: it carries the NAS's validated block of
pacs.yaml and builds the kind's source through the registry (nas/registry.py), so the kinds themselves
stay free of Dagster and a new kind needs no new resource class.
"""

from __future__ import annotations

from dagster import ConfigurableResource, EnvVar

from pacs_assets.config import NasConfig, PacsConfig
from pacs_assets.nas.base import NasBase, NasSource
from pacs_assets.nas.registry import KINDS, source_for
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


class NasSourceResource(ConfigurableResource):
    nas_id: str
    kind: str
    root: str
    # The NAS's block of pacs.yaml as validated JSON. It names the environment variables holding secrets,
    # never the secrets.
    settings_json: str

    def settings(self) -> NasBase:
        return KINDS[self.kind].settings.model_validate_json(self.settings_json)

    def source(self) -> NasSource:
        return source_for(self.settings())


def nas_resource_key(nas_id: str) -> str:
    return f"{nas_id}_nas"


def nas_resource(nas: NasConfig) -> NasSourceResource:
    return NasSourceResource(nas_id=nas.id, kind=nas.kind, root=str(nas.root), settings_json=nas.model_dump_json())


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
        resources[nas_resource_key(nas.id)] = nas_resource(nas)
    return resources
