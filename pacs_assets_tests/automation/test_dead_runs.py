"""Runs started from a terminal or cron (`dagster asset materialize`, as the README shows), with no daemon: a run
killed with SIGKILL must not leave the next one waiting for ever on its pool slot; a run waiting for a slot sleeps
and stops on SIGINT/SIGTERM; `pacs status` shows who holds the slots (pacs_assets/defs/executor.py).

Real components: the project's dagster.yaml on SQLite in a private DAGSTER_HOME, the real CLI in its own process,
a real Orthanc, and a live run holding the upload slot (slot_holder.py). Every process started is stopped by PID.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import requests
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from pacs_assets import process_identity
from pacs_assets.defs.assets import UPLOAD_POOL
from pacs_assets.defs.executor import free_slots_of_dead_runs
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import write_config
from pacs_assets_tests.services.orthanc_cluster import process_cpu_seconds
from pacs_assets_tests.services.process import log_tail, spawn, stop_pid, wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TODAY = dt.date.today()
FIRST, LAST = (TODAY - dt.timedelta(days=10)).isoformat(), TODAY.isoformat()
ENDED = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def _site(tmp_path: Path, orthanc_url: str) -> tuple[Path, Path]:
    config = write_config(tmp_path / "pacs.yaml", [{"id": "ct", "kind": "dicom_folder", "root": "nas",
                                                    "partitions_start": FIRST}], orthanc_url=orthanc_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return config, home


class Cli:
    """One process of this test, started as an operator would, its output in a log; stopped by PID at the end."""

    def __init__(self, tmp_path: Path, env: dict):
        self.tmp, self.env, self.procs = tmp_path, env, []

    def start(self, name: str, *cmd: str) -> subprocess.Popen:
        proc = spawn(list(cmd), self.tmp / f"{name}.log", env=self.env, cwd=REPO, new_session=True)
        proc.name = name
        self.procs.append(proc)
        return proc

    def materialize(self, name: str) -> subprocess.Popen:
        return self.start(name, str(BIN / "dagster"), "asset", "materialize", "-m", "pacs_assets.definitions",
                          "--select", "group:ct", "--partition-range", f"{FIRST}...{LAST}")

    def log(self, proc) -> str:
        return log_tail(self.tmp / f"{proc.name}.log", 40)

    def stop(self, proc, sig: int) -> None:
        """Send ``sig``; the process must be gone within 10 s (the issue's bound for SIGINT/SIGTERM)."""
        proc.send_signal(sig)
        sent = time.monotonic()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.name} still running 10 s after signal {sig}:\n{self.log(proc)}")
        print(f"{proc.name} stopped {time.monotonic() - sent:.1f} s after signal {sig}")

    def status(self) -> dict:
        done = subprocess.run([str(BIN / "pacs"), "status", "--json"], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["pool_slots"]

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_pid(proc.pid, timeout=10)
            proc.poll()


def _slot_runs(instance: DagsterInstance) -> tuple[set[str], set[str]]:
    """(runs holding an upload slot, runs waiting for one)."""
    info = instance.event_log_storage.get_concurrency_info(UPLOAD_POOL)
    held = {s.run_id for s in info.claimed_slots}
    return held, {p.run_id for p in info.pending_steps} - held


def test_a_waiting_cli_run_sleeps_and_stops_on_sigterm_without_touching_a_live_runs_slot(tmp_path):
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=TODAY - dt.timedelta(days=5))
    config, home = _site(tmp_path, "http://127.0.0.1:9")  # the waiting run never reaches Orthanc
    cli = Cli(tmp_path, {"PACS_CONFIG": str(config), "DAGSTER_HOME": str(home),
                         "ORTHANC_USERNAME": "u", "ORTHANC_PASSWORD": "p"})
    ready, stop = tmp_path / "READY", tmp_path / "STOP"
    try:
        holder = cli.start("holder", sys.executable, "-m", "pacs_assets_tests.automation.slot_holder", str(ready),
                           str(stop))
        wait_until(ready.exists, 120, "the slot holder", process=holder)
        run = cli.materialize("waiting")
        with DagsterInstance.from_config(str(home)) as instance:
            wait_until(lambda: _slot_runs(instance)[1], 180, "the CLI run to wait for the upload slot", process=run)
            (holder_id,), (waiting_id,) = _slot_runs(instance)

            cpu0, t0 = process_cpu_seconds(run.pid), time.monotonic()
            time.sleep(8)
            cpu, wall = process_cpu_seconds(run.pid) - cpu0, time.monotonic() - t0
            print(f"waiting: {cpu:.2f} s of CPU over {wall:.1f} s")
            slots = cli.status()

            cli.stop(run, signal.SIGTERM)
            after = _slot_runs(instance)
            statuses = {r.run_id: r.status for r in instance.get_runs()}
        stop.touch()
        holder.wait(timeout=60)
    finally:
        cli.stop_all()

    assert cpu <= 0.05 * wall, f"the waiting run used {cpu:.2f} s of CPU in {wall:.1f} s:\n{cli.log(run)}"
    assert [(r["run_id"], r["holds"], r["process"]) for r in slots["runs"]] == [
        (holder_id, True, "alive"), (waiting_id, False, "alive")]
    assert slots["runs"][1]["nas_id"] == "ct" and slots["runs"][1]["pid"] == str(run.pid)
    # SIGTERM ended the waiting run and freed its place in the queue; the live run kept its slot, and still ran.
    assert statuses[waiting_id] in ENDED, cli.log(run)
    assert after == ({holder_id}, set())
    assert "Freed the" not in (tmp_path / "waiting.log").read_text()
    assert holder.returncode == 0 and statuses[holder_id] == DagsterRunStatus.STARTED, cli.log(holder)


def _orthanc_count(orthanc) -> int:
    return requests.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=10).json()["CountInstances"]


def _ledger(index: Path) -> dict[str, int]:
    with duckdb.connect(str(index), read_only=True) as con:
        return dict(con.execute("SELECT status, count(*) FROM file_status GROUP BY ALL").fetchall())


def test_a_sigkilled_cli_upload_does_not_block_the_next_and_sigint_stops_a_running_one(tmp_path, orthanc):
    n = make_bulk_dicom_nas(tmp_path / "nas", 1500, files_per_series=500, days=2,
                            start_date=TODAY - dt.timedelta(days=3))
    config, home = _site(tmp_path, orthanc.url)
    cli = Cli(tmp_path, {**orthanc.env(), "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home)})
    index = tmp_path / "index.duckdb"
    try:
        first = cli.materialize("first")
        wait_until(lambda: _orthanc_count(orthanc) >= n // 5, 180, "the first run's upload", process=first,
                   interval=0.2)
        first.send_signal(signal.SIGKILL)  # what the OOM killer does: just the one process
        first.wait(timeout=10)
        at_kill = _orthanc_count(orthanc)
        assert at_kill < n, "the upload finished before it could be killed: make the NAS bigger"
        with DagsterInstance.from_config(str(home)) as instance:
            (killed_id,) = [r.run_id for r in instance.get_runs()]
        slots = cli.status()  # what an operator sees before the next run
        assert [(r["run_id"], r["holds"], r["process"]) for r in slots["runs"]] == [(killed_id, True, "dead")]

        second, started = cli.materialize("second"), time.monotonic()
        # No human step: the next run frees the dead run's slot itself and uploads.
        wait_until(lambda: _orthanc_count(orthanc) > at_kill + 100, 30, "the second run's upload", process=second,
                   interval=0.2)
        print(f"second run uploading {time.monotonic() - started:.1f} s after it started")
        cli.stop(second, signal.SIGINT)  # Ctrl-C in the middle of the upload
        at_interrupt = _orthanc_count(orthanc)
        assert at_interrupt < n, "the upload finished before it could be interrupted: make the NAS bigger"
        with DagsterInstance.from_config(str(home)) as instance:
            assert _slot_runs(instance) == (set(), set())
        interrupted = _ledger(index)
        journals = list((tmp_path / "journal").glob("*"))

        third = cli.materialize("third")
        third.wait(timeout=300)
        with DagsterInstance.from_config(str(home)) as instance:
            runs = list(reversed(instance.get_runs()))  # oldest first
            left = _slot_runs(instance)
    finally:
        cli.stop_all()

    second_log = (tmp_path / "second.log").read_text()
    assert f"Freed the 'orthanc_upload' pool slots of run {killed_id}: its process (PID {first.pid}" in second_log
    # The interrupted run merged its journal: every file Orthanc answered is in the ledger, nothing pending twice.
    assert interrupted.get("imported") == at_interrupt, (interrupted, at_interrupt)
    assert journals == [], journals
    assert third.returncode == 0, cli.log(third)
    assert runs[0].status == DagsterRunStatus.FAILURE and runs[1].status in ENDED, [r.status for r in runs]
    assert runs[2].status == DagsterRunStatus.SUCCESS and left == (set(), set())
    assert _orthanc_count(orthanc) == n
    assert _ledger(index) == {"imported": n}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="PostgreSQL not installed"))])
def instance_home(request, tmp_path, monkeypatch):
    """A DAGSTER_HOME with the project's instance file: SQLite, or PostgreSQL (what several machines share)."""
    _, home = _site(tmp_path, "http://127.0.0.1:9")
    if request.param == "sqlite":
        yield home
        return
    from pacs_assets_tests.services.postgres import PostgresServer

    with PostgresServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        shutil.copy(REPO / "dagster.postgres.yaml", home / "dagster.yaml")
        yield home


class _Lines(logging.Handler):
    """The log lines of one logger (not pytest's caplog: CI runs pytest with -p no:logging)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_only_runs_whose_process_is_gone_from_this_machine_are_declared_dead(instance_home):
    """Every case the reaper judges, on a real instance: a run elsewhere or unrecorded is never freed."""
    home = instance_home
    here = process_identity.tags_of_this_process()
    install, boot, pid_ns, start = here[process_identity.KEY_TAG].split("/")
    gone = subprocess.run([sys.executable, "-c", "import json; from pacs_assets import process_identity as p; "
                           "print(json.dumps(p.tags_of_this_process()))"],
                          capture_output=True, text=True, check=True, cwd=REPO)  # a process that has exited

    def key(**parts) -> dict:
        values = {"install": install, "boot": boot, "pid_ns": pid_ns, "start": start, **parts}
        return {**here, process_identity.KEY_TAG: "/".join(values[k] for k in ("install", "boot", "pid_ns", "start"))}

    cases = {  # name: (tags, status, freed?)
        "alive": (here, DagsterRunStatus.STARTED, False),
        "exited": (json.loads(gone.stdout), DagsterRunStatus.STARTED, True),
        "pid_reused": (key(start=str(int(start) + 1)), DagsterRunStatus.STARTED, True),
        "rebooted": (key(boot="0" * 36), DagsterRunStatus.STARTED, True),
        "other_host": ({**json.loads(gone.stdout), process_identity.HOST_TAG: "another-machine"},
                       DagsterRunStatus.STARTED, False),
        "other_container": (key(pid_ns="pid:[1]", start="1"), DagsterRunStatus.STARTED, False),
        "unrecorded": ({}, DagsterRunStatus.STARTED, False),
        "ended_elsewhere": ({process_identity.HOST_TAG: "another-machine"}, DagsterRunStatus.FAILURE, True),
        "ended_still_working": (here, DagsterRunStatus.CANCELED, False),
    }
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(UPLOAD_POOL, len(cases))
        for name, (tags, status, _) in cases.items():
            instance.add_run(DagsterRun(job_name=name, run_id=name, status=status, tags=tags))
            assert storage.claim_concurrency_slot(UPLOAD_POOL, name, "upload").is_claimed
        logger, lines = logging.getLogger("reaper"), _Lines()
        logger.addHandler(lines)
        try:
            freed = free_slots_of_dead_runs(instance, UPLOAD_POOL, "own", logger)
        finally:
            logger.removeHandler(lines)
        held, _ = _slot_runs(instance)
        statuses = {r.run_id: r.status for r in instance.get_runs()}

    assert sorted(freed) == sorted(name for name, (_, _, dead) in cases.items() if dead)
    assert held == {name for name, (_, _, dead) in cases.items() if not dead}
    # A dead run still STARTED is marked failed; one line per freed run says which and why.
    assert all(statuses[name] == DagsterRunStatus.FAILURE for name in ("exited", "pid_reused", "rebooted"))
    assert statuses["other_host"] == DagsterRunStatus.STARTED
    assert len([line for line in lines.lines if "Freed the 'orthanc_upload' pool slots of run" in line]) == 4


def test_the_by_hand_line_of_the_production_docs_frees_a_dead_runs_slots(tmp_path):
    """docs/production.md gives a one-line command for an instance without this project's executor: run as
    written there (its `...` and `RUN_ID` filled in), it frees that run's slots and no other run's."""
    import os
    import re
    import shlex

    _, home = _site(tmp_path, "http://127.0.0.1:9")
    text = (REPO / "docs" / "production.md").read_text()
    line = re.search(r"`(DAGSTER_HOME=\.\.\. python -c .*free_concurrency_slots_for_run.*?)`\.?$", text, re.M)
    assert line, "docs/production.md no longer shows the by-hand command"
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(UPLOAD_POOL, 2)
        for run_id in ("dead_run", "live_run"):
            instance.add_run(DagsterRun(job_name=run_id, run_id=run_id, status=DagsterRunStatus.STARTED))
            assert storage.claim_concurrency_slot(UPLOAD_POOL, run_id, "upload").is_claimed
    command = line.group(1).replace("DAGSTER_HOME=...", f"DAGSTER_HOME={shlex.quote(str(home))}")
    command = command.replace("RUN_ID", "dead_run")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # `python` is the project's
    subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True, timeout=120)
    with DagsterInstance.from_config(str(home)) as instance:
        held, _ = _slot_runs(instance)
    assert held == {"live_run"}
