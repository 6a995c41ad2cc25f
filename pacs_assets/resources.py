"""Dagster resources: the index, the Orthanc PACS, and one NAS source resource per NAS kind.

``NasSourceResource`` is the one interface (as hooli-data-eng-pipelines does for per-environment
resources); ``DicomFolderResource`` and ``FirebirdJpeg2000Resource`` are its implementations.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path

from dagster import ConfigurableResource, EnvVar

from pacs_assets.config import DicomFolderNas, FirebirdCatalog, FirebirdJpeg2000Nas, NasConfig, PacsConfig
from pacs_assets.orthanc import OrthancClient
from pacs_assets.sources.base import NasSource


class IndexResource(ConfigurableResource):
    """The DuckDB index file. Opened briefly per step, never held (see index/store.py)."""

    path: str


class OrthancResource(ConfigurableResource):
    url: str
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 60.0
    concurrency: int = 4
    retries: int = 4

    def client(self) -> OrthancClient:
        return OrthancClient(self.url, self.username, self.password, timeout=self.timeout_seconds,
                             retries=self.retries)


class NasSourceResource(ConfigurableResource):
    nas_id: str
    root: str

    @abstractmethod
    def source(self) -> NasSource: ...


class DicomFolderResource(NasSourceResource):
    settle_seconds: float = 0.0

    def source(self) -> NasSource:
        from pacs_assets.sources.dicom_folder import DicomFolderSource

        return DicomFolderSource(self.nas_id, Path(self.root), settle_seconds=self.settle_seconds)


class FirebirdJpeg2000Resource(NasSourceResource):
    # The config's `firebird:` block. It names the password's environment variable, never the password.
    catalog_json: str
    mapping_json: str | None = None
    settle_seconds: float = 0.0

    def source(self) -> NasSource:
        from pacs_assets.sources.firebird_jpeg2000 import FirebirdJpeg2000Source

        catalog = FirebirdCatalog.model_validate(json.loads(self.catalog_json))
        mapping = json.loads(self.mapping_json) if self.mapping_json else None
        return FirebirdJpeg2000Source(self.nas_id, Path(self.root), catalog=catalog, mapping=mapping,
                                      settle_seconds=self.settle_seconds)


def nas_resource_key(nas_id: str) -> str:
    return f"{nas_id}_nas"


def nas_resource(nas: NasConfig) -> NasSourceResource:
    if isinstance(nas, DicomFolderNas):
        return DicomFolderResource(nas_id=nas.id, root=str(nas.root), settle_seconds=nas.settle_seconds)
    if isinstance(nas, FirebirdJpeg2000Nas):
        return FirebirdJpeg2000Resource(
            nas_id=nas.id, root=str(nas.root), catalog_json=nas.firebird.model_dump_json(),
            mapping_json=json.dumps(nas.mapping) if nas.mapping else None, settle_seconds=nas.settle_seconds)
    raise TypeError(type(nas).__name__)


def build_resources(config: PacsConfig) -> dict[str, ConfigurableResource]:
    orthanc = config.orthanc
    resources: dict[str, ConfigurableResource] = {
        "index": IndexResource(path=str(config.index.path)),
        # EnvVar: the UI shows the variable's name, never the secret.
        "orthanc": OrthancResource(url=orthanc.url, username=EnvVar(orthanc.username_env),
                                   password=EnvVar(orthanc.password_env), timeout_seconds=orthanc.timeout_seconds,
                                   concurrency=orthanc.concurrency, retries=orthanc.retries),
    }
    for nas in config.nas:
        resources[nas_resource_key(nas.id)] = nas_resource(nas)
    return resources
