"""A run killed with SIGKILL in the middle of its upload (the OOM killer, a reboot) must not block the uploads
after it: the instance's run monitoring (dagster.yaml) frees the dead run's `orthanc_upload` pool slot, the
next run starts uploading within seconds, and at the end nothing is lost.

Real components: a private Orthanc, `dagster-daemon run` with the project's own dagster.yaml (which starts
its code server and launches each run as a subprocess of it), `dagster job launch` as a data engineer
would, and a NAS of a few thousand files, so the upload lasts long enough to be killed mid-way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time

import duckdb
import psutil
import requests
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.automation.test_end_to_end import BIN, REPO
from pacs_assets_tests.harness import write_config
from pacs_assets_tests.services.process import ProcessTree, log_tail, spawn, stop_pid, wait_until

TODAY = dt.date.today()
FILES = 1500  # at ~200 uploads/s the kill at a fifth leaves seconds of upload: far more than it takes
# Run monitoring polls every 5 s and frees slots 5 s after a run ended; the next run must be uploading well
# within this (it also has to be dequeued, load the code location and walk the NAS from the scan cache).
NEXT_UPLOAD_WITHIN = 90.0


def orthanc_count(orthanc) -> int:
    return requests.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=10).json()["CountInstances"]


def launch(env: dict, first: str, last: str) -> None:
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    done = subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "ct_job",
                           "--tags", json.dumps(tags)], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def run_workers(daemon_pid: int) -> list[psutil.Process]:
    """The processes the code server started for runs: everything below a `dagster api grpc` process."""
    out = []
    for proc in psutil.Process(daemon_pid).children(recursive=True):
        try:
            if "grpc" in " ".join(proc.cmdline()):
                out += proc.children(recursive=True)
        except psutil.Error:
            continue
    return out


def test_a_sigkilled_upload_frees_its_pool_slot_and_loses_nothing(tmp_path, orthanc):
    start = TODAY - dt.timedelta(days=3)
    n = make_bulk_dicom_nas(tmp_path / "nas", FILES, files_per_series=500, days=2, start_date=start)
    config = write_config(tmp_path / "pacs.yaml", [{
        "id": "ct", "kind": "dicom_folder", "root": "nas",
        "partitions_start": (TODAY - dt.timedelta(days=10)).isoformat()}], orthanc_url=orthanc.url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**orthanc.env(), "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home)}
    with DagsterInstance.from_config(str(home)) as instance:  # create the storage before the daemon opens it
        instance.get_runs(), instance.all_instigator_state()
    first, last = (TODAY - dt.timedelta(days=10)).isoformat(), TODAY.isoformat()

    daemon_log = tmp_path / "daemon.log"
    daemon = spawn(["env", "--default-signal=INT,TERM", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                   daemon_log, env=env, cwd=REPO, new_session=True)
    tree = ProcessTree(daemon.pid)
    try:
        launch(env, first, last)

        def uploading() -> bool:
            tree.snapshot()
            return orthanc_count(orthanc) >= n // 5

        wait_until(uploading, 180, "the first run's upload", log_path=daemon_log, process=daemon, interval=0.2)
        killed = run_workers(daemon.pid)
        assert killed, "no run worker found under the code server"
        for proc in killed:
            proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        at_kill = orthanc_count(orthanc)
        assert at_kill < n, "the upload finished before it could be killed: make the NAS bigger"

        launch(env, first, last)
        wait_until(lambda: orthanc_count(orthanc) > at_kill + 50, NEXT_UPLOAD_WITHIN,
                   "the next run's upload after the crash", log_path=daemon_log, process=daemon, interval=0.5)
        next_upload_after = time.monotonic() - t_kill

        with DagsterInstance.from_config(str(home)) as instance:
            def all_done() -> bool:
                tree.snapshot()
                runs = instance.get_runs(RunsFilter(job_name="ct_job"))
                return len(runs) == 2 and all(r.is_finished for r in runs)

            wait_until(all_done, 180, "both runs to end", log_path=daemon_log, process=daemon, interval=0.5)
            runs = list(reversed(instance.get_runs(RunsFilter(job_name="ct_job"))))  # oldest first
            held = instance.event_log_storage.get_concurrency_info("orthanc_upload")
    finally:
        tree.snapshot()
        stop_pid(daemon.pid, timeout=30, sig=signal.SIGINT)
        daemon.poll()

    assert not tree.alive(), f"left running after the daemon stopped: {tree.alive()}"
    assert [r.status for r in runs] == [DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS], log_tail(daemon_log, 80)
    assert held.active_slot_count == 0 and held.pending_step_count == 0
    print(f"next run uploading {next_upload_after:.1f} s after the SIGKILL")
    # Nothing lost: Orthanc holds every file, and each file's last word in the index says it is there.
    assert orthanc_count(orthanc) == n
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM file_status GROUP BY ALL").fetchall())
    # The journal (index/journal.py) keeps the ledger exact: the killed run's answered uploads are "imported",
    # not re-sent and called "duplicate" by the next run.
    assert statuses == {"imported": n}, statuses
    # No staging or journal left behind by the killed run (it held patient data).
    assert not list((tmp_path / "staging").glob("*/*")), list((tmp_path / "staging").glob("*/*"))
