"""Real processes: one PostgreSQL + 2 Orthanc 1.10.1 on the PostgreSQL index plugin 4.0, one storage."""
from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
import requests

from pacs_assets.orthanc.ids import orthanc_instance_id
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.services.orthanc_cluster import OrthancCluster
from pacs_assets_tests.services.process import pid_alive


@pytest.fixture(scope="module")
def ct_files():
    folder = Path(tempfile.mkdtemp(prefix="ct-files-", dir="/tmp"))
    make_bulk_dicom_nas(folder, 500, files_per_series=50, seed=7)
    files = []
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files.append((path, orthanc_instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                ds.SOPInstanceUID)))
    yield files
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def post(session: requests.Session, url: str, body: bytes) -> requests.Response:
    return session.post(f"{url}/instances", data=body, headers={"Content-Type": "application/dicom"},
                        timeout=30)


def get_json(cluster: OrthancCluster, node: int, path: str, **kw):
    r = requests.get(f"{cluster.urls[node]}{path}", auth=cluster.auth, timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def dicom_files(cluster: OrthancCluster) -> list[Path]:
    return cluster.storage_files()


def test_nodes_share_one_index_and_one_storage(orthanc_cluster, ct_files):
    cluster = orthanc_cluster
    path, expected_id = ct_files[0]
    body = path.read_bytes()
    with requests.Session() as s:
        s.auth = cluster.auth
        assert requests.get(f"{cluster.urls[1]}/system", timeout=5).status_code == 401  # auth is on
        r0 = post(s, cluster.urls[0], body)
        assert r0.status_code == 200, r0.text
        assert r0.json()["Status"] == "Success" and r0.json()["ID"] == expected_id

        # Visible through node 1: the instance, its tags, the counts, /tools/find and /changes.
        inst = get_json(orthanc_cluster, 1, f"/instances/{expected_id}")
        assert inst["ID"] == expected_id
        assert get_json(orthanc_cluster, 0, "/statistics") == get_json(orthanc_cluster, 1, "/statistics")
        assert get_json(orthanc_cluster, 1, "/statistics")["CountInstances"] == 1
        found = requests.post(f"{cluster.urls[1]}/tools/find", auth=cluster.auth, timeout=30,
                              json={"Level": "Instance", "Query": {"PatientID": "BLK*"}}).json()
        assert found == [expected_id]
        changes = get_json(orthanc_cluster, 1, "/changes", params={"since": 0, "limit": 100})
        assert any(c["ChangeType"] == "NewInstance" and c["ID"] == expected_id for c in changes["Changes"])

        # The same file through node 1: AlreadyStored, and storage still holds exactly one file.
        assert len(dicom_files(orthanc_cluster)) == 1
        r1 = post(s, cluster.urls[1], body)
        assert r1.status_code == 200, r1.text
        assert r1.json()["Status"] == "AlreadyStored" and r1.json()["ID"] == expected_id
        assert len(dicom_files(orthanc_cluster)) == 1
        assert get_json(orthanc_cluster, 0, "/statistics")["CountInstances"] == 1

        # Jobs are per node (Orthanc book, scalability): a job made on node 0 is unknown to node 1.
        job = s.post(f"{cluster.urls[0]}/tools/create-archive", timeout=30,
                     json={"Resources": [expected_id], "Asynchronous": True}).json()["ID"]
        assert s.get(f"{cluster.urls[0]}/jobs/{job}", timeout=30).status_code == 200
        assert s.get(f"{cluster.urls[1]}/jobs/{job}", timeout=30).status_code == 404


def test_sigkill_of_one_node_mid_upload_loses_nothing(orthanc_cluster, ct_files):
    cluster = orthanc_cluster
    bodies = [(p.read_bytes(), oid) for p, oid in ct_files]
    expected = {oid for _, oid in bodies}
    assert len(expected) == 500
    done = 0
    lock = threading.Lock()
    killed = threading.Event()
    retried: list[int] = []
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "s"):
            local.s = requests.Session()
            local.s.auth = cluster.auth
        return local.s

    def upload(k: int) -> str:
        nonlocal done
        body, oid = bodies[k]
        target = k % 2  # round-robin over both nodes
        for attempt in range(20):
            try:
                r = post(session(), cluster.urls[target], body)
                if r.status_code == 200:
                    status = r.json()["Status"]
                    assert r.json()["ID"] == oid
                    break
                if r.status_code < 500 and r.status_code != 409:
                    raise AssertionError(f"permanent failure {r.status_code}: {r.text}")
            except requests.ConnectionError:
                pass
            # Failed (node 1 killed, or a 5xx/409): retry on node 0.
            if target != 0 or attempt:
                with lock:
                    retried.append(k)
            target = 0
            session().close()
            time.sleep(0.05 * attempt)
        else:
            raise AssertionError(f"file {k} never uploaded")
        with lock:
            done += 1
            if done == 150:
                threading.Thread(target=lambda: (cluster.kill_node(1), killed.set())).start()
        return status

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(upload, range(len(bodies))))
    elapsed = time.monotonic() - t0
    assert killed.wait(10) and not pid_alive(cluster.nodes[1].pid)
    assert retried, "node 1 was killed mid-way: some uploads should have been retried on node 0"
    assert set(statuses) <= {"Success", "AlreadyStored"}

    def all_ids(node: int) -> set[str]:
        return set(get_json(orthanc_cluster, node, "/instances"))

    assert all_ids(0) == expected
    assert get_json(orthanc_cluster, 0, "/statistics")["CountInstances"] == 500

    cluster.start_node(1)
    assert all_ids(1) == expected
    assert get_json(orthanc_cluster, 1, "/statistics") == get_json(orthanc_cluster, 0, "/statistics")
    # A write that node 1 had made to storage but not indexed yet stays as an orphan file: allowed.
    files = dicom_files(orthanc_cluster)
    assert len(files) >= 500
    print(f"\n500 uploads in {elapsed:.1f} s, {len(set(retried))} retried on node 0 after the SIGKILL, "
          f"{statuses.count('AlreadyStored')} answered AlreadyStored, {len(files) - 500} orphan file(s)")
