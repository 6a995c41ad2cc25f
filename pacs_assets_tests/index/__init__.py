"""Tests of the index's read-only queries. ``build_site`` / ``running_site`` are shared with the CLI tests:
sample NAS devices materialized (walk, index, import) into a real DuckDB index against a real Orthanc."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pytest
import yaml

from pacs_assets.local_services.orthanc_server import OrthancServer
from pacs_assets.sample.dicom_nas import SampleManifest, make_dicom_nas
from pacs_assets_tests.conftest import write_config
from pacs_assets_tests.harness import materialize_nas

TODAY = dt.date.today()
# (NAS id, sample seed, patients, first procedure date as days before today). Seed 0 and 1 use the same
# names (Müller^Jürgen, Παπαδοπούλου^Ελένη, Yamada^Tarou=山田^太郎=やまだ^たろう, ...) with other patient IDs.
TWO_NAS = (("ct", 0, 8, 12), ("mr", 1, 5, 6))


@dataclasses.dataclass
class Site:
    config: Path
    index: Path
    manifests: dict[str, SampleManifest]

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with duckdb.connect(str(self.index), read_only=True) as con:
            return con.execute(sql, list(params)).fetchall()


def build_site(workdir: Path, orthanc_url: str, nas: Sequence[tuple] = TWO_NAS, *, dicom_port: int = 4242,
               materialize: bool = True, **config_extra) -> Site:
    """Sample NAS devices under ``workdir`` and a pacs.yaml; with ``materialize`` each NAS's whole graph runs."""
    specs, manifests = [], {}
    for nas_id, seed, patients, days_ago in nas:
        manifests[nas_id] = make_dicom_nas(workdir / f"nas_{nas_id}", patients=patients, seed=seed,
                                           start_date=TODAY - dt.timedelta(days=days_ago))
        specs.append({"id": nas_id, "kind": "dicom_folder", "root": f"nas_{nas_id}",
                      "partitions_start": (TODAY - dt.timedelta(days=20)).isoformat()})
    config = write_config(workdir / "pacs.yaml", specs, orthanc_url=orthanc_url, **config_extra)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["orthanc"]["dicom_port"] = dicom_port
    config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    site = Site(config=config, index=workdir / "index.duckdb", manifests=manifests)
    if materialize:
        for nas_id in manifests:
            assert materialize_nas(config, nas_id).success, nas_id
    return site


@contextlib.contextmanager
def running_site(workdir: Path, nas: Sequence[tuple] = TWO_NAS) -> Iterator[tuple[Site, OrthancServer]]:
    """A site materialized against its own real Orthanc, which keeps running (credentials in the environment)
    until the block ends: for module-scoped fixtures, which cannot use the function-scoped ``orthanc``."""
    with OrthancServer(workdir / "orthanc") as orthanc, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHANC_USERNAME", orthanc.username)
        mp.setenv("ORTHANC_PASSWORD", orthanc.password)
        yield build_site(workdir, orthanc.url, nas, dicom_port=orthanc.dicom_port), orthanc
