"""Failed runs fail fast and cost no CPU: a wrong password is never retried; an Orthanc that is down is waited
for with sleeps (backoff), not a spinning executor, and the failure says what happened in one sentence."""

from __future__ import annotations

import datetime as dt
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import NAS, SAMPLE_START, materialize_nas, step_failure_message, write_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _config(tmp_path, orthanc_url: str, **orthanc):
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_url)
    raw = yaml.safe_load(config.read_text())
    raw["orthanc"].update(orthanc)
    config.write_text(yaml.safe_dump(raw))
    return config


def _step_events(result, kind: str) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == kind)


def test_a_wrong_password_fails_at_once_without_retries(tmp_path, orthanc, monkeypatch):
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    monkeypatch.setenv("ORTHANC_USERNAME", orthanc.username)
    monkeypatch.setenv("ORTHANC_PASSWORD", "not-the-password")
    config = _config(tmp_path, orthanc.url, run_retries=2, run_retry_delay_seconds=30, outage_wait_seconds=60)
    started = time.monotonic()
    result = materialize_nas(config, "ct", raise_on_error=False)
    seconds = time.monotonic() - started
    assert not result.success
    assert "refused the credentials (HTTP 401)" in step_failure_message(result)
    assert _step_events(result, "STEP_UP_FOR_RETRY") == 0 and _step_events(result, "STEP_RESTARTED") == 0
    # Not a speed limit: a run that waited out the configured outage (60 s) fails it; retries are counted above.
    assert seconds < 60, f"a 401 took {seconds:.0f} s to fail (retries or outage waits were not skipped)"


def test_an_orthanc_that_is_down_is_waited_for_without_burning_a_core(tmp_path, orthanc_env):
    """Through `dagster asset materialize` (the project's executor, not execute_in_process): the process tree's
    CPU while it waits out the outage is far below one core."""
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = _config(tmp_path, orthanc_env.url, run_retries=1, run_retry_delay_seconds=2, outage_wait_seconds=6)
    assert materialize_nas(config, "ct").success  # walk + index + upload once, all up
    orthanc_env.stop()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home)}
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    done = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "pacs_assets.definitions",
                           "--select", "ct/orthanc_instances", "--partition", SAMPLE_START.isoformat()],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"Orthanc at {orthanc_env.url} is unreachable" in output
    assert "STEP_UP_FOR_RETRY" in output  # the one retry happened
    # Two outage waits of 6 s (the first attempt and its retry, 2 s apart): at least 14 s of waiting...
    assert wall >= 14, output[-2000:]
    # ...while the processes sleep: the CPU used is starting Dagster (~3-5 s here), far below one core.
    assert cpu < 0.5 * wall, f"{cpu:.1f} s of CPU over {wall:.1f} s"


def test_the_abort_message_counts_files_stored_not_attempts(tmp_path, orthanc):
    """Orthanc dies mid-upload: the sentence says how many files Orthanc stored and how many attempts were
    made, and both numbers are what the ledger holds."""
    import re
    import signal
    import threading

    import duckdb
    import requests

    from pacs_assets.config import DicomFolderNas
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.orthanc.client import OrthancClient, OrthancUnavailable
    from pacs_assets.pipeline.hierarchy import build_hierarchy
    from pacs_assets.pipeline.inventory import take_inventory
    from pacs_assets.pipeline.upload import upload_window
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

    root, index = tmp_path / "nas", tmp_path / "index.duckdb"
    n = make_bulk_dicom_nas(root, 3000, files_per_series=500, days=1, start_date=SAMPLE_START)
    nas = DicomFolderNas(id="ct", kind="dicom_folder", root=root, partitions_start=SAMPLE_START)
    source = DicomFolderSource("ct", root)
    start, end = SAMPLE_START, SAMPLE_START + dt.timedelta(days=30)
    take_inventory(source, nas, index, start, end, today=dt.date.today())
    build_hierarchy(index, "ct", start, end)
    client = OrthancClient(orthanc.url, orthanc.username, orthanc.password, timeout=5, retries=1, backoff=0.05)
    outcome = {}

    def upload():
        try:
            upload_window(source, client, index, "ct", start, end, concurrency=4)
        except OrthancUnavailable as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=upload)
    worker.start()
    count = lambda: requests.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=5).json()["CountInstances"]  # noqa: E731
    while count() < 200 and worker.is_alive():
        time.sleep(0.05)
    os.kill(orthanc.pid, signal.SIGKILL)  # at once: a SIGTERM'd Orthanc keeps storing for 2-3 s
    worker.join(120)
    orthanc.stop()
    match = re.search(r"after (\d+) files stored \((\d+) attempts\)", outcome.get("error", ""))
    assert match, outcome
    with duckdb.connect(str(index), read_only=True) as con:
        stored, attempts = con.execute("SELECT count(*) FILTER (WHERE status IN ('imported', 'duplicate')), count(*) "
                                       "FROM import_history").fetchall()[0]
    assert (int(match[1]), int(match[2])) == (stored, attempts)
    assert 0 < stored < attempts < n  # some attempts failed when Orthanc went away; they are not "stored"
