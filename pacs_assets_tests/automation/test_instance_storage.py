"""The Dagster instance storage the project ships, for real: the SQLite default (dagster.yaml) and PostgreSQL
(dagster.postgres.yaml, on a private PostgreSQL server), each holding a run over a sample NAS.

Each storage is written through one instance object and read back through a fresh one built from the same
config file, so the run and its materializations are proven to be in the storage, not in memory. For
PostgreSQL the rows are also read with plain SQL from the server.
"""

from __future__ import annotations

import datetime as dt
import glob
import shutil
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)

from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import materialize_nas, write_config

REPO = Path(__file__).resolve().parents[2]
TODAY = dt.date.today()
SAMPLE_START = TODAY - dt.timedelta(days=12)
NAS = [{"id": "ct", "kind": "dicom_folder", "root": "nas",
        "partitions_start": (TODAY - dt.timedelta(days=20)).isoformat()}]
ASSETS = [AssetKey(["ct", name]) for name in ("file_inventory", "dicom_index", "orthanc_instances")]
HAS_POSTGRES = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not HAS_POSTGRES, reason="PostgreSQL not installed: run scripts/install_system_packages.sh"))])
def dagster_home(request, tmp_path, monkeypatch):
    """A DAGSTER_HOME holding the repository's instance config for the storage; yields (home, server)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    if request.param == "sqlite":
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        yield home, None
        return
    from pacs_assets_tests.services.postgres import PostgresServer

    with PostgresServer() as server:  # its own 0711 temp workdir: the `postgres` user can reach it
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        shutil.copy(REPO / "dagster.postgres.yaml", home / "dagster.yaml")
        yield home, server
        pid = server.pid
    from pacs_assets_tests.services.process import pid_alive

    assert not pid_alive(pid), "PostgreSQL outlived its test"


def test_run_and_materializations_are_stored(dagster_home, tmp_path, orthanc_env):
    home, server = dagster_home
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)

    with DagsterInstance.from_config(str(home)) as instance:
        storage = type(instance.run_storage).__name__
        assert storage == ("PostgresRunStorage" if server else "SqliteRunStorage")
        assert instance.event_log_storage.get_pool_config().default_pool_limit == 1
        if server is not None:  # dagster.postgres.yaml turns the daemon's run retries on
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        result = materialize_nas(config, "ct", instance=instance)
        assert result.success
        run_id = result.run_id
        tags = result.dagster_run.tags
        first = dt.date.fromisoformat(tags["dagster/asset_partition_range_start"])
        last = dt.date.fromisoformat(tags["dagster/asset_partition_range_end"])

    # A fresh instance from the same config file: what it sees is in the storage.
    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(RunsFilter(job_name="ct_job"))
        assert [r.run_id for r in runs] == [run_id]
        assert runs[0].status == DagsterRunStatus.SUCCESS
        expected_partitions = {(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}
        for key in ASSETS:
            latest = instance.get_latest_materialization_event(key)
            assert latest is not None and latest.run_id == run_id, key
            records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1000).records
            # A single-run backfill materializes every partition of its range, each once.
            assert sorted(r.partition_key for r in records) == sorted(expected_partitions), key
            assert {r.run_id for r in records} == {run_id}
        walked = instance.get_latest_materialization_event(ASSETS[0]).asset_materialization.metadata
        assert walked["files_walked"].value == len(manifest.expected)  # the metadata is stored too

    if server is None:  # SQLite: the files are in DAGSTER_HOME
        assert (home / "history" / "runs.db").is_file()
        assert (home / "history" / "runs" / f"{run_id}.db").is_file()  # the run's own event log shard
    else:  # the same rows, read straight from PostgreSQL
        import psycopg2

        with psycopg2.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                              dbname=server.db) as con, con.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            assert cur.fetchall() == [(run_id, "SUCCESS")]
            cur.execute("SELECT asset_key, count(*) FROM event_logs WHERE run_id = %s "
                        "AND dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key ORDER BY 1", [run_id])
            assert cur.fetchall() == sorted((key.to_string(), len(expected_partitions)) for key in ASSETS)
        con.close()

