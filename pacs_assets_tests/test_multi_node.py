"""Past one Orthanc: two real Orthanc processes on one PostgreSQL index and one shared storage
(services/orthanc_cluster.py), and the NAS graph uploading across both through `orthanc.more_urls`."""

from __future__ import annotations

import datetime as dt
import threading
import time

import duckdb
import pytest
import requests
import yaml

from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.harness import materialize_nas, write_config

TODAY = dt.date.today()


def _site(tmp_path, cluster, files: int):
    make_bulk_dicom_nas(tmp_path / "nas", files, files_per_series=100, days=2, start_date=TODAY - dt.timedelta(days=3))
    config = write_config(tmp_path / "pacs.yaml", [{
        "id": "ct", "kind": "dicom_folder", "root": "nas",
        "partitions_start": (TODAY - dt.timedelta(days=10)).isoformat()}], orthanc_url=cluster.urls[0])
    raw = yaml.safe_load(config.read_text())
    raw["orthanc"]["more_urls"] = cluster.urls[1:]
    raw["orthanc"]["retries"] = 2
    config.write_text(yaml.safe_dump(raw))
    return config


def _count(cluster, node: int) -> int:
    return requests.get(f"{cluster.urls[node]}/statistics", auth=cluster.auth, timeout=10).json()["CountInstances"]


def _ledger(tmp_path) -> tuple[dict, dict]:
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        status = dict(con.execute("SELECT status, count(*) FROM file_status GROUP BY ALL").fetchall())
        nodes = dict(con.execute("SELECT orthanc_node, count(*) FROM import_history WHERE status = 'imported' "
                                 "GROUP BY ALL").fetchall())
    return status, nodes


@pytest.fixture
def cluster(orthanc_cluster, monkeypatch):
    """The two-node cluster, its credentials in the environment as the site config expects them."""
    monkeypatch.setenv("ORTHANC_USERNAME", orthanc_cluster.username)
    monkeypatch.setenv("ORTHANC_PASSWORD", orthanc_cluster.password)
    return orthanc_cluster


def test_uploads_spread_over_two_nodes_on_one_index(tmp_path, cluster):
    n = 400
    config = _site(tmp_path, cluster, n)
    assert materialize_nas(config, "ct").success
    status, nodes = _ledger(tmp_path)
    assert status == {"imported": n}
    assert set(nodes) == set(cluster.urls) and all(v > n // 10 for v in nodes.values()), nodes  # spread
    assert _count(cluster, 0) == _count(cluster, 1) == n  # every instance through both nodes
    dicom = [p for p in cluster.storage_files() if not p.name.endswith(".json")]
    assert len(dicom) == n  # nothing stored twice


def test_a_node_killed_mid_run_loses_nothing(tmp_path, cluster):
    n = 1200
    config = _site(tmp_path, cluster, n)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=materialize_nas(config, "ct",
                                                                                   raise_on_error=False)))
    runner.start()
    deadline = time.monotonic() + 120
    while _count(cluster, 0) < n // 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    cluster.kill_node(1)
    killed_at = _count(cluster, 0)
    runner.join(300)
    assert outcome["result"].success
    assert killed_at < n, "the upload ended before the kill: use more files"
    status, nodes = _ledger(tmp_path)
    assert status == {"imported": n}, status  # every file recorded, none lost, none called duplicate
    assert _count(cluster, 0) == n
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        rerouted = con.execute("SELECT count(*) FROM import_history WHERE error_message LIKE '%unreachable; sent to%'"
                               ).fetchall()[0][0]
    assert rerouted >= 1  # the ledger says what happened
    cluster.start_node(1)
    assert _count(cluster, 1) == n  # the restarted node sees everything: one index


def test_serialization_failures_between_nodes_are_retried_never_failed(cluster_dir, tmp_path):
    """Two nodes writing one series at once collide in PostgreSQL (SERIALIZABLE transactions). Orthanc retries a
    collision `MaximumConnectionRetries` times, then answers HTTP 503 "could not serialize access". With its own
    retries off (0) the collisions reach the client (about 1 upload in 6 here): each is retried as often as the
    configured `retries`, and every file ends imported."""
    from pacs_assets.config import DicomFolderNas
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.orthanc.client import build_client
    from pacs_assets.pipeline.hierarchy import build_hierarchy
    from pacs_assets.pipeline.inventory import take_inventory
    from pacs_assets.pipeline.upload import upload_window
    from pacs_assets_tests.services.orthanc_cluster import OrthancCluster

    n, start, end = 800, TODAY - dt.timedelta(days=10), TODAY + dt.timedelta(days=1)
    root, index = tmp_path / "nas", tmp_path / "index.duckdb"
    make_bulk_dicom_nas(root, n, files_per_series=n, days=1, start_date=TODAY - dt.timedelta(days=3))  # one series
    nas = DicomFolderNas(id="ct", kind="dicom_folder", root=root, partitions_start=start)
    source = DicomFolderSource("ct", root)
    take_inventory(source, nas, index, start, end, today=TODAY)
    build_hierarchy(index, "ct", start, end)
    with OrthancCluster(cluster_dir / "cluster", nodes=2, max_retries=0) as cluster:
        # Every collision reaches the client here, so give it more retries than the default 4 (0.5 s backoff);
        # before the fix, a client of several nodes retried any answer once.
        client = build_client(cluster.urls, *cluster.auth, retries=8)
        done = upload_window(source, client, index, "ct", start, end, concurrency=8)
        assert _count(cluster, 0) == n
    assert done.summary.counts["imported"] == n, dict(done.summary.counts)
    with duckdb.connect(str(index), read_only=True) as con:
        failed, retried = con.execute("SELECT count(*) FILTER (WHERE status = 'failed'), "
                                      "count(*) FILTER (WHERE attempts > 1) FROM import_history").fetchall()[0]
    assert failed == 0
    assert retried > 0, "no collision reached the client: the test did not exercise the retry"
