"""Runs, a sensor and searches at the same moment against one DuckDB index, each in its own process.

DuckDB lets one process at a time open the index, and while it does nobody else can open it, not even
read-only (measured). Production has exactly this mix of processes: runs launched by the daemon, sensors
ticking in the daemon, an operator's `pacs search`. The design (pacs_assets/index/connection.py) is that no
process keeps the index open for long: a run streams into a private staging DuckDB and merges in one short
transaction, and ``connection.connect`` waits with backoff while another process holds the lock. This test
checks that design under real contention:

- five worker processes (pacs_assets_tests/automation/workers.py), all started together: each imports
  and builds its definitions first, says READY, and starts its real work only when the test says GO:
  (a) an incremental run of one partition of NAS ``ct``;
  (b) a backfill run over all partitions of ``ct`` and (b2) one over all partitions of a second NAS ``mr``
      that shares the index (same Orthanc too);
  (c) the ``ct`` new-files sensor, ticking in a loop (it must never need the index: its state is a SQLite
      file beside it) — it must not fail, and must request runs for the sample's dates;
  (d) `pacs search` in a loop (a new process per search, as an operator runs it), or a read-only
      ``connection.session`` query when the package has no `pacs search`.
- the runs share one Dagster instance (a temporary DAGSTER_HOME with the repository's dagster.yaml, SQLite
  storage), as runs launched by the daemon do. Its pools are what they are in production, except that the
  ``nas_walk`` pool is raised to 3 so that the three walks (the index's heaviest writers: scan-cache load
  and inventory merge) overlap too. ``orthanc_upload`` stays at 1: that pool is what keeps two runs of one
  NAS from uploading the same files at once (without it both can stage the same pending files and the
  ledger gets an 'imported' and a 'duplicate' row for one file).

What must hold: no output of any process mentions a DuckDB lock error ('Could not set lock', 'Conflicting
lock', or our own IndexBusy 'stayed locked'); every run succeeds; every search answers, and the number of
patients a search finds never shrinks (a reader never sees a half-merged window); and nothing is lost:
file_status covers every file of both NAS with the status the sample's manifest predicts, import_history
holds exactly one imported/duplicate attempt per DICOM file, and Orthanc holds every instance.

Every process the test starts is stopped by PID and checked gone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
import requests
from dagster import AssetKey, DagsterInstance

from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import materialize_nas, write_config
from pacs_assets_tests.services.process import pid_alive, stop_pid

REPO = Path(__file__).resolve().parents[2]
TODAY = dt.date.today()
SAMPLE_START = TODAY - dt.timedelta(days=12)
PARTITIONS_START = (TODAY - dt.timedelta(days=20)).isoformat()
LOCK_ERRORS = ("Could not set lock", "Conflicting lock", "stayed locked by another process")
# A known package bug (see test_a_partition_run_is_not_blocked_by_another_runs_unfinished_windows below).


def nas(nas_id: str) -> dict:
    return {"id": nas_id, "kind": "dicom_folder", "root": f"nas_{nas_id}", "partitions_start": PARTITIONS_START}


def orthanc_sop_uids(orthanc) -> set[str]:
    answer = requests.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=30,
                           json={"Level": "Instance", "Query": {}, "Expand": True}).json()
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in answer}


class Workers:
    """The worker processes of one test: started with a barrier, stopped by PID, checked gone."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env = tmp, env
        self.go, self.stop = tmp / "GO", tmp / "STOP"
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start(self, name: str, *args: str) -> None:
        with open(self.log(name), "wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "pacs_assets_tests.automation.workers", "--ready",
                 str(self.tmp / f"READY-{name}"), "--go", str(self.go), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all((self.tmp / f"READY-{n}").exists() for n in self.procs):
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"worker {name} exited before it was ready:\n{self.tail(name)}"
            assert time.monotonic() < deadline, "workers not ready in time"
            time.sleep(0.02)

    def wait(self, names, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            try:
                self.procs[name].wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {name} did not finish within {timeout:.0f} s:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])

    def result(self, name: str) -> dict:
        lines = [ln for ln in self.log(name).read_text(errors="replace").splitlines() if ln.startswith("RESULT ")]
        assert lines, f"worker {name} (exit {self.procs[name].returncode}) printed no result:\n{self.tail(name)}"
        return json.loads(lines[-1][len("RESULT "):])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_pid(proc.pid, timeout=10)
            proc.poll()
        alive = [name for name, proc in self.procs.items() if pid_alive(proc.pid)]
        assert not alive, f"workers still running: {alive}"


@pytest.fixture
def two_nas_site(tmp_path, orthanc_env):
    manifests = {"ct": make_dicom_nas(tmp_path / "nas_ct", patients=5, seed=0, start_date=SAMPLE_START),
                 "mr": make_dicom_nas(tmp_path / "nas_mr", patients=5, seed=1, start_date=SAMPLE_START)}
    config = write_config(tmp_path / "pacs.yaml", [nas("ct"), nas("mr")], orthanc_url=orthanc_env.url)
    return manifests, config, tmp_path / "index.duckdb"


def test_runs_sensor_and_searches_at_once_on_one_index(tmp_path, two_nas_site, orthanc_env):
    manifests, config, index = two_nas_site
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots("nas_walk", 3)
    orthanc = orthanc_env
    env = {**os.environ, **orthanc.env(), "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    day = min(manifests["ct"].procedure_dates).isoformat()

    workers = Workers(tmp_path, env)
    runs = {"a_incremental_ct": ("ct", day, day), "b_backfill_ct": ("ct",), "b_backfill_mr": ("mr",)}
    try:
        for name, args in runs.items():
            workers.start(name, "materialize", str(config), *args)
        workers.start("c_sensor_ct", "sensor", str(config), "ct", str(workers.stop))
        workers.start("d_search", "search", str(config), str(workers.stop))
        workers.wait_ready(timeout=120)
        started = time.monotonic()
        workers.go.touch()
        workers.wait(runs, timeout=180)
        run_seconds = time.monotonic() - started
        workers.stop.touch()
        workers.wait(["c_sensor_ct", "d_search"], timeout=60)
    finally:
        workers.stop_all()

    # No process met a lock it could not wait out, in any output.
    for name in workers.procs:
        text = workers.log(name).read_text(errors="replace")
        for needle in LOCK_ERRORS:
            assert needle not in text, f"{name}: DuckDB lock error:\n{workers.tail(name)}"

    results = {name: workers.result(name) for name in workers.procs}
    sensor, search = results["c_sensor_ct"], results["d_search"]
    assert workers.procs["c_sensor_ct"].returncode == 0, workers.tail("c_sensor_ct")
    assert sensor["ticks"] >= 2
    # The first look at the NAS: one reconciliation run (a whole walk that materializes only the dates it finds).
    assert [(r["job_name"], r["partition_key"]) for r in sensor["run_requests"]] == [("ct_reconciliation_job", None)]
    assert search["success"], search["errors"]
    assert search["searches"] >= 3, search
    found = search["patients_found"]
    assert found == sorted(found), f"a search saw the index shrink (a half-merged window?): {found}"
    assert found[-1] == 10  # 5 patients on each NAS, distinct IDs

    # Every run succeeds.
    for name in runs:
        assert results[name]["success"], f"run {name} failed:\n{workers.tail(name)}"

    # The runs really ran at the same time: their steps' time spans overlap (step stats of the shared instance).
    with DagsterInstance.from_config(str(home)) as instance:
        spans = {}
        for name in runs:
            stats = instance.get_run_step_stats(results[name]["run_id"])
            spans[name] = (min(s.start_time for s in stats if s.start_time),
                           max(s.end_time for s in stats if s.end_time))
    # Each run overlapped at least one other (which pair depends on the machine's load: runs in one process
    # finish in seconds, so the incremental run may end before the second backfill starts).
    def overlap(one: str, other: str) -> bool:
        return spans[one][0] < spans[other][1] and spans[other][0] < spans[one][1]

    for one in runs:
        assert any(overlap(one, other) for other in runs if other != one), (one, spans)

    _assert_nothing_lost(manifests, index, orthanc)
    print(f"runs took {run_seconds:.1f} s together; {search['searches']} searches via {search['via']}; "
          f"{sensor['ticks']} sensor ticks")


def _assert_nothing_lost(manifests, index: Path, orthanc) -> None:
    with duckdb.connect(str(index), read_only=True) as con:
        status_rows = con.execute("SELECT nas_id, file_path, status FROM file_status").fetchall()
        ledger = con.execute("SELECT nas_id, file_path, list(status ORDER BY attempt_id) FROM import_history "
                             "GROUP BY ALL").fetchall()
        indexed = con.execute("SELECT nas_id, file_path, sop_instance_uid FROM instances").fetchall()
    keys = [(n, p) for n, p, _ in status_rows]
    assert len(keys) == len(set(keys)), "a file has more than one current status"
    status = {(n, p): s for n, p, s in status_rows}
    attempts = {(n, p): s for n, p, s in ledger}
    sop_of = {(n, p): sop for n, p, sop in indexed}
    for nas_id, manifest in manifests.items():
        assert {p for n, p in status if n == nas_id} == set(manifest.expected), nas_id
        dicom = {p for p, e in manifest.expected.items() if e in ("ok", "duplicate")}
        assert {p for n, p in sop_of if n == nas_id} == dicom, f"{nas_id}: instances table incomplete"
        by_sop = defaultdict(list)
        for path, expected in manifest.expected.items():
            key = (nas_id, path)
            if path in dicom:
                # Exactly one upload attempt per file, whichever run made it: none lost, none repeated.
                assert attempts.get(key) in (["imported"], ["duplicate"]), (key, attempts.get(key))
                assert status[key] == attempts[key][0]
                by_sop[sop_of[key]].append(status[key])
            else:
                assert status[key] == expected, (key, status[key])
                assert key not in attempts, key
        for statuses in by_sop.values():
            assert sorted(statuses) == sorted(["imported"] + ["duplicate"] * (len(statuses) - 1))
    assert set(attempts) <= set(status)
    assert orthanc_sop_uids(orthanc) == manifests["ct"].sop_instance_uids | manifests["mr"].sop_instance_uids


def test_a_partition_run_is_not_blocked_by_another_runs_unfinished_windows(tmp_path, orthanc_env):
    """Deterministic form of the race the concurrent test can hit: a backfill's file_inventory has merged
    every window of the NAS (its dicom_index step has not run yet, or never will: the run was stopped).
    An incremental run of one partition must still index and import that partition."""
    manifest = make_dicom_nas(tmp_path / "nas_ct", patients=4, seed=0, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", [nas("ct")], orthanc_url=orthanc_env.url)
    from pacs_assets.config import load_config
    from pacs_assets.defs.site import build_definitions

    job = build_definitions(load_config(config)).resolve_job_def("ct_job")
    keys = job.partitions_def.get_partition_keys()
    walk_only = job.execute_in_process(
        instance=DagsterInstance.ephemeral(), asset_selection=[AssetKey(["ct", "file_inventory"])],
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    assert walk_only.success

    day = min(manifest.procedure_dates).isoformat()
    result = materialize_nas(config, "ct", first=day, last=day, raise_on_error=False)

    assert result.success


SENSOR_TICKS = """
import json, sys
from dagster import DagsterInstance, build_sensor_context
from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
defs = build_definitions(load_config(sys.argv[1]))
sensor, cursor, keys = defs.resolve_sensor_def("ct_new_files_sensor"), None, []
with DagsterInstance.ephemeral() as instance:
    for _ in range(2):
        with build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
            data = sensor.evaluate_tick(context)
        cursor, keys = data.cursor, keys + [r.partition_key for r in data.run_requests or []]
print("RESULT " + json.dumps(keys))
"""


def test_the_sensor_never_needs_the_index(tmp_path):
    """While another process holds the index read-write (nobody else can open it, not even read-only),
    the new-files sensor still ticks and requests its runs: it never touches the index."""
    make_dicom_nas(tmp_path / "nas_ct", patients=4, seed=0, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", [nas("ct")], orthanc_url="http://127.0.0.1:9")
    index = tmp_path / "index.duckdb"
    holder = duckdb.connect(str(index))  # this process holds the index's lock for the whole test
    try:
        holder.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
        done = subprocess.run([sys.executable, "-c", SENSOR_TICKS, str(config)], cwd=REPO, check=False,
                              env={**os.environ, "PACS_INDEX_LOCK_WAIT": "0"}, capture_output=True, text=True,
                              timeout=120)
    finally:
        holder.close()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert not [needle for needle in LOCK_ERRORS if needle in output]
    keys = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert keys == [None]  # the first look: one reconciliation run, requested without the index
