"""Past one Orthanc: two real Orthanc processes on one PostgreSQL index and one shared storage
(services/orthanc_cluster.py), and the NAS graph uploading across both through `orthanc.more_urls`."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time

import duckdb
import pytest
import requests
import yaml

from pacs_assets.pipeline.already_stored import FOUND_SERIES
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
    # Spread: each node took uploads. Not in what proportion: a node is picked per upload thread, and how many
    # threads the pool starts, and which turn of the round robin each gets, depends on timing (CI, once: 376/24).
    assert set(nodes) == set(cluster.urls), nodes
    assert _count(cluster, 0) == _count(cluster, 1) == n  # every instance through both nodes
    dicom = [p for p in cluster.storage_files() if not p.name.endswith(".json")]
    assert len(dicom) == n  # nothing stored twice

    # The index is lost: the rerun finds every series whole through either node (PostgreSQL's statistics
    # say what SQLite's do) and sends nothing.
    last = requests.get(f"{cluster.urls[0]}/changes", params={"limit": 1}, auth=cluster.auth, timeout=10).json()
    for leftover in tmp_path.glob("index.duckdb*"):
        leftover.unlink()
    assert materialize_nas(config, "ct").success
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        found = con.execute("SELECT status, error_message, attempts, count(*) FROM import_history GROUP BY ALL")
        assert found.fetchall() == [("imported", FOUND_SERIES, 0, n)]
    assert requests.get(f"{cluster.urls[1]}/changes", params={"limit": 1}, auth=cluster.auth,
                        timeout=10).json()["Last"] == last["Last"]


def test_a_node_killed_mid_run_loses_nothing(tmp_path, cluster):
    n = 600
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


def _connect(urls: list[str], auth: tuple[str, str], **kw):
    """A client of these nodes, built the way the site's ``orthanc.url`` + ``more_urls`` build it."""
    from pacs_assets.orthanc.connect import connect
    from pacs_assets.orthanc.orthanc_settings import OrthancSettings

    return connect(OrthancSettings(url=urls[0], more_urls=urls[1:]), *auth, **kw)


def _indexed_window(tmp_path, n: int, files_per_series: int):
    """A plain-DICOM NAS of ``n`` files, inventoried and indexed: (source, index, start, end)."""
    from pacs_assets.config import DicomFolderNas
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.pipeline.hierarchy import build_hierarchy
    from pacs_assets.pipeline.inventory import take_inventory

    start, end = TODAY - dt.timedelta(days=10), TODAY + dt.timedelta(days=1)
    root, index = tmp_path / "nas", tmp_path / "index.duckdb"
    make_bulk_dicom_nas(root, n, files_per_series=files_per_series, days=1, start_date=TODAY - dt.timedelta(days=3))
    first = min(root.rglob("*.dcm"))
    shutil.copy2(first, first.with_name("copy-" + first.name))  # the same instance twice: one duplicate
    nas = DicomFolderNas(id="ct", kind="dicom_folder", root=root, partitions_start=start)
    source = DicomFolderSource("ct", root)
    take_inventory(source, nas, index, start, end, today=TODAY)
    build_hierarchy(index, "ct", start, end)
    return source, index, start, end


@pytest.mark.parametrize("domain", [None, "AR-"], ids=["as_is", "id_domain"])
def test_answers_lost_at_six_points_leave_every_file_imported_once(tmp_path, cluster, domain):
    """A node stores a file and dies before answering, at six chosen uploads (a proxy drops the answer, then
    refuses uploads until the file has failed over, services/lost_answers.py): no timing luck. The other
    node answers AlreadyStored for those very bytes; each such file is imported once, confirmed after the
    failover, and the one real second copy on the NAS stays the only duplicate. Under an ID domain the bytes
    sent are the rewritten file's (its PatientID prefixed): Orthanc's MD5 is compared with those, not the NAS
    file's, or every lost answer would end a `uid_conflict`."""
    from pacs_assets.nas.base import IdDomain
    from pacs_assets.orthanc.client import CONFIRMED
    from pacs_assets.pipeline.identity_guard import IdentityGuard
    from pacs_assets.pipeline.upload import upload_window
    from pacs_assets_tests.services.lost_answers import LostAnswers

    n, drops = 300, {3, 8, 13, 18, 23, 28}
    source, index, start, end = _indexed_window(tmp_path, n, files_per_series=100)
    guard = IdentityGuard.load({"ct": IdDomain(issuer="ARCHIVE_VENDOR", prefix=domain) if domain else None}, index)
    with LostAnswers(cluster.urls, drop_at=drops) as proxy:
        client = _connect(proxy.urls, cluster.auth, retries=2, backoff=0.01)
        client.down_seconds = 0  # a dead node is tried again at once: more uploads reach the next drop point
        done = upload_window(source, client, index, "ct", start, end, concurrency=4, identity=guard)
    # What stopped the drops, if any, in full (a string: pytest cuts a dict short), with the proxy's last events.
    reached = (f"posts {proxy.posts}, refused {proxy.refused}, not stored {proxy.not_stored}, "
               f"state {proxy.state()}")
    # At least five of the six drop points (the bar). A drop waits until both nodes are live and no
    # candidate is in flight on the other node. Once in ~240 runs under load the sixth came due only after the
    # uploads were over, and once in CI only the first was reached: a candidate Orthanc held for most of the run
    # (PostgreSQL retrying while both nodes write one series) kept every drop point from the other node. Such a
    # candidate is now let go after a while (services/lost_answers.py STALLED_SECONDS).
    assert len(proxy.dropped) >= len(drops) - 1, reached
    assert {k: v for k, v in done.totals.items() if v} == {"imported": n, "duplicate": 1}, done.totals
    assert +done.summary.counts == {"imported": n, "duplicate": 1}
    assert _count(cluster, 0) == n
    with duckdb.connect(str(index), read_only=True) as con:
        rows = con.execute("SELECT file_hash, status, error_message FROM import_history").fetchall()
    assert len(rows) == n + 1  # one attempt per file: none failed, none recorded twice
    lost = [msg for _, status, msg in rows if "after a lost answer" in (msg or "")]
    assert len(lost) >= len(proxy.dropped), lost  # each file whose answer was lost says so (and its NAS copy may too)
    for digest in proxy.dropped if not domain else ():  # sent as they are: the proxy saw the NAS file's bytes
        notes = [(status, msg or "") for h, status, msg in rows if h == digest]
        assert any("after a lost answer" in msg for _, msg in notes), notes
    patients = requests.get(f"{cluster.urls[0]}/patients", params={"expand": ""}, auth=cluster.auth, timeout=10)
    sent_ids = {p["MainDicomTags"]["PatientID"] for p in patients.json()}
    assert all(pid.startswith(domain) for pid in sent_ids) if domain else sent_ids, sent_ids
    failed_over = [msg for _, status, msg in rows if status == "imported" and "unreachable; sent to" in (msg or "")]
    confirmed = sum(CONFIRMED in msg for msg in failed_over)
    assert confirmed >= len(proxy.dropped) - 1, failed_over  # confirmed on the other node


def test_serialization_failures_between_nodes_are_retried_never_failed(cluster_dir, tmp_path):
    """Two nodes writing one series at once collide in PostgreSQL (SERIALIZABLE transactions). Orthanc retries a
    collision `MaximumConnectionRetries` times, then answers HTTP 503 "could not serialize access". With its own
    retries off (0) the collisions reach the client (about 1 upload in 6 here): each is retried as often as the
    configured `retries`, and every file ends imported."""
    from pacs_assets.config import DicomFolderNas
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
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
    with OrthancCluster(cluster_dir / "cluster", nodes=2, max_retries=0).throwaway() as cluster:
        # Every collision reaches the client here, so give it more retries than the default 4 (0.5 s backoff);
        # before the fix, a client of several nodes retried any answer once.
        client = _connect(cluster.urls, cluster.auth, retries=8)
        done = upload_window(source, client, index, "ct", start, end, concurrency=8)
        assert _count(cluster, 0) == n
    assert done.summary.counts["imported"] == n, dict(done.summary.counts)
    with duckdb.connect(str(index), read_only=True) as con:
        failed, retried = con.execute("SELECT count(*) FILTER (WHERE status = 'failed'), "
                                      "count(*) FILTER (WHERE attempts > 1) FROM import_history").fetchall()[0]
    assert failed == 0
    assert retried > 0, "no collision reached the client: the test did not exercise the retry"


def test_a_confirmed_import_another_file_had_stored_is_recorded_duplicate(tmp_path):
    """Confirmed after a lost answer means "probably ours": when the ledger (an earlier run) or this run holds a
    clean import of the instance from another file, the confirmed one is that file's duplicate. Decided when
    the run's last answer is in, whatever the order the answers came in."""
    from pacs_assets.index import ledger
    from pacs_assets.index.connection import session
    from pacs_assets.orthanc.client import CONFIRMED
    from pacs_assets.pipeline.ledger_writer import CONFIRMED_ELSEWHERE, LedgerWriter

    index = tmp_path / "index.duckdb"
    with session(index):
        pass  # the schema

    def row(path: str, oid: str, message: str | None = CONFIRMED) -> dict:
        return {"nas_id": "ct", "file_path": path, "change_token": "t", "orthanc_instance_id": oid,
                "status": "imported", "error_message": message, "retryable": False, "partition_date": "2024-01-01",
                "attempt_key": path}

    ledger.append_ledger(index, [row("old.dcm", "o-3", None)])  # an earlier run imported o-3 from old.dcm
    namer = LedgerWriter(index)
    namer([row("a-copy.dcm", "o-1", f"node n0 unreachable; sent to n1; {CONFIRMED}"), row("c.dcm", "o-2"),
           row("b.dcm", "o-3")])
    namer([row("a.dcm", "o-1", None)])  # the other copy's clean import: its answer came in later
    namer.close()
    with duckdb.connect(str(index), read_only=True) as con:
        got = {p: (s, m) for p, s, m in con.execute(
            "SELECT file_path, status, error_message FROM import_history").fetchall()}
    assert got == {"old.dcm": ("imported", None), "a.dcm": ("imported", None), "c.dcm": ("imported", CONFIRMED),
                   "a-copy.dcm": ("duplicate", CONFIRMED_ELSEWHERE), "b.dcm": ("duplicate", CONFIRMED_ELSEWHERE)}
    assert namer.demoted == 2


def test_a_node_that_refused_the_connection_cannot_have_stored_the_file(tmp_path, orthanc):
    """Only an answer lost after the request went out makes AlreadyStored ours: a node that refused the
    connection never saw the file, so the next node's AlreadyStored (another copy stored it) stays duplicate."""
    from pacs_assets_tests.services.process import free_port

    make_bulk_dicom_nas(tmp_path / "nas", 1, files_per_series=1, days=1)
    data = next((tmp_path / "nas").rglob("*.dcm")).read_bytes()
    assert requests.post(f"{orthanc.url}/instances", data=data, auth=orthanc.auth,
                         timeout=30).json()["Status"] == "Success"  # another copy, stored before
    client = _connect([f"http://127.0.0.1:{free_port()}", orthanc.url], orthanc.auth, retries=1, backoff=0.01)
    result = client.upload(data)
    assert (result.status, result.answer_lost, result.node) == ("duplicate", False, orthanc.url)
    assert "unreachable; sent to" in result.error_message
