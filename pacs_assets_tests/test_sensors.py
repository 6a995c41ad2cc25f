"""The new-files sensor, evaluated tick by tick with build_sensor_context + evaluate_tick on a real NAS tree."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

import duckdb
import pydicom
import requests
from dagster import DagsterInstance, build_sensor_context

from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
from pacs_assets.nas.watch import NasWatch
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import materialize_nas, write_config

TODAY = dt.date.today()
START = TODAY - dt.timedelta(days=12)
NAS = [{"id": "ct", "kind": "dicom_folder", "root": "nas",
        "partitions_start": (TODAY - dt.timedelta(days=20)).isoformat()}]


class Ticker:
    def __init__(self, config_path: Path):
        self.defs = defs = build_definitions(load_config(config_path))
        self.sensor = defs.resolve_sensor_def("ct_new_files_sensor")
        self.instance = DagsterInstance.ephemeral()
        self.cursor = None

    def tick(self):
        with build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data

    def execute(self, request):
        job = self.defs.resolve_job_def(request.job_name)
        return job.execute_in_process(run_config=request.run_config, partition_key=request.partition_key,
                                      tags=dict(request.tags), instance=self.instance)


def site(tmp_path, orthanc_url="http://127.0.0.1:9", **settings):
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=START)
    return manifest, write_config(tmp_path / "pacs.yaml", [{**NAS[0], **settings}], orthanc_url=orthanc_url)


def first_look(ticker: Ticker) -> None:
    ticker.tick()  # first look: everything is new, nothing is stable yet (no second look within the first look)
    first = ticker.tick()
    assert first.run_requests and all(r.run_key.startswith("ct:") for r in first.run_requests)
    quiet = ticker.tick()
    assert quiet.run_requests == [] and "no settled change" in quiet.skip_message


def land_study(tmp_path, manifest) -> None:
    """A modality's export lands: a new study folder with two files, dated yesterday."""
    study = tmp_path / "nas" / "NEW_PATIENT" / "STUDY"
    study.mkdir(parents=True)
    src = manifest.root / manifest.paths("ok")[0]
    day = TODAY - dt.timedelta(days=1)
    for i in range(2):
        target = study / f"IM{i}.dcm"
        shutil.copy(src, target)
        stamp = dt.datetime.combine(day, dt.time(12)).timestamp()
        os.utime(target, (stamp, stamp))


def test_new_study_is_requested_by_the_tick_that_sees_it_and_only_once(tmp_path):
    manifest, config = site(tmp_path)  # the default watch_settle_seconds: the second look within the tick
    ticker = Ticker(config)
    first_look(ticker)
    land_study(tmp_path, manifest)
    # The copied files keep their StudyDate; the partition is whatever dates.py says for them.
    requested = ticker.tick().run_requests  # seen, looked at again a second later, unchanged: reported
    assert len(requested) == 1 and requested[0].partition_key is not None
    assert requested[0].run_key.startswith(f"ct:{requested[0].partition_key}:")
    assert ticker.tick().run_requests == []  # the confirmation look: unchanged, nothing asked again
    assert ticker.tick().run_requests == []


def test_with_no_settle_window_a_new_study_waits_for_the_next_tick(tmp_path):
    manifest, config = site(tmp_path, watch_settle_seconds=0)
    ticker = Ticker(config)
    first_look(ticker)
    land_study(tmp_path, manifest)
    assert ticker.tick().run_requests == []  # seen once: could still be being written
    requested = ticker.tick().run_requests
    assert len(requested) == 1 and requested[0].partition_key is not None
    assert ticker.tick().run_requests == []  # the same change never asks twice


def test_a_file_still_growing_waits(tmp_path):
    manifest, config = site(tmp_path, watch_settle_seconds=0)
    ticker = Ticker(config)
    ticker.tick(), ticker.tick()
    growing = tmp_path / "nas" / "incoming.dcm"
    data = (manifest.root / manifest.paths("ok")[0]).read_bytes()
    growing.write_bytes(data[:1000])
    ticker.tick()
    with growing.open("ab") as f:
        f.write(data[1000:])
    assert ticker.tick().run_requests == []  # changed since the last look
    assert len(ticker.tick().run_requests) == 1


def test_a_file_reported_while_still_being_written_ends_imported(tmp_path, orthanc_env):
    """A copy that stalls for longer than the settle window is reported half-written: the run records it failed
    (truncated); the next tick's confirmation look sees it changed, and the run it asks for imports it whole."""
    manifest, config = site(tmp_path, orthanc_env.url)
    assert materialize_nas(config, "ct").success
    ticker = Ticker(config)
    first_look(ticker)
    ds = pydicom.dcmread(manifest.root / manifest.paths("ok")[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a new instance: not in Orthanc yet
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole)
    data = whole.read_bytes()
    (tmp_path / "nas" / "LATE").mkdir()
    landing = tmp_path / "nas" / "LATE" / "IM0.dcm"
    landing.write_bytes(data[:-2000])  # the header and part of the pixel data; then the copy stalls

    def status() -> tuple:
        with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
            return con.execute("SELECT status, change_token FROM file_status WHERE file_path = 'LATE/IM0.dcm'"
                               ).fetchone()

    (partial,) = ticker.tick().run_requests
    assert ticker.execute(partial).success
    assert status()[0] == "failed"
    with landing.open("ab") as f:  # the copy goes on
        f.write(data[-2000:])
    (whole_file,) = ticker.tick().run_requests
    assert whole_file.run_key != partial.run_key
    assert ticker.execute(whole_file).success
    assert status() == ("imported", f"{len(data)}-{landing.stat().st_mtime_ns}")
    found = requests.post(f"{orthanc_env.url}/tools/find", auth=orthanc_env.auth, timeout=30,
                          json={"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}}).json()
    assert len(found) == 1
    assert ticker.tick().run_requests == []


def test_deleted_file_is_requested_and_recorded_with_its_history(tmp_path, orthanc_env):
    manifest, config = site(tmp_path, orthanc_env.url)
    assert materialize_nas(config, "ct").success
    ticker = Ticker(config)
    ticker.tick(), ticker.tick()
    gone = manifest.paths("ok")[0]
    (manifest.root / gone).unlink()
    requests = ticker.tick().run_requests
    assert [r.partition_key for r in requests] == [manifest.procedure_date_of[gone].isoformat()]
    key = requests[0].partition_key
    assert materialize_nas(config, "ct", first=key, last=key).success
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        last = con.execute("SELECT last_status FROM deleted_files WHERE file_path = ?", [gone]).fetchall()
        assert last == [("imported",)]
        assert con.execute("SELECT count(*) FROM file_status WHERE file_path = ?", [gone]).fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM import_history WHERE file_path = ?", [gone]).fetchall() == [(1,)]


def test_unmounted_nas_is_skipped_as_an_outage(tmp_path):
    manifest, config = site(tmp_path)
    ticker = Ticker(config)
    ticker.tick(), ticker.tick()
    shutil.rmtree(manifest.root)
    manifest.root.mkdir()
    data = ticker.tick()
    assert data.run_requests == [] and "treated as an outage" in data.skip_message


def test_first_look_at_a_big_nas_spans_ticks_without_missing_or_repeating(tmp_path):
    root = tmp_path / "nas"
    n = make_bulk_dicom_nas(root, 1500, files_per_series=50, days=10, start_date=START)
    watch = NasWatch(tmp_path / "w.sqlite", root, partitions_start=TODAY - dt.timedelta(days=20))
    reported, ticks = [], 0
    while True:
        ticks += 1
        result = watch.tick(0.0, TODAY)  # the smallest budget: one folder per tick
        reported += [p for changes in result.changes.values() for p, _ in changes]
        if result.complete:
            break
        assert ticks < 500
    assert ticks > 10
    assert len(reported) == len(set(reported)) == n


def test_unchanged_tick_stats_folders_only(tmp_path):
    root = tmp_path / "nas"
    make_bulk_dicom_nas(root, 600, files_per_series=50, days=3, start_date=START)
    watch = NasWatch(tmp_path / "w.sqlite", root, partitions_start=TODAY - dt.timedelta(days=20))
    watch.tick(60, TODAY), watch.tick(60, TODAY)
    quiet = watch.tick(60, TODAY)
    assert quiet.changes == {} and quiet.folders_listed == 0 and quiet.folders_statted > 0


def test_minimum_interval_leaves_slack_for_the_daemon_loop(tmp_path):
    # The daemon's sensor loop runs every 5 s and skips a sensor whose last tick started less than its minimum
    # interval ago: a minimum equal to the configured 5 s ticked every 10 s (benchmarks/bench_daemon.py).
    nas = [{**NAS[0], "sensor_interval_seconds": 5}]
    defs = build_definitions(load_config(write_config(tmp_path / "pacs.yaml", nas, orthanc_url="http://127.0.0.1:9")))
    assert defs.resolve_sensor_def("ct_new_files_sensor").minimum_interval_seconds == 4


def test_files_arriving_during_the_second_look_join_the_same_tick(tmp_path, monkeypatch):
    root = tmp_path / "nas"
    make_bulk_dicom_nas(root, 20, files_per_series=10, days=2, start_date=START)
    watch = NasWatch(tmp_path / "w.sqlite", root, partitions_start=START, look_again_seconds=0.2)
    while not watch.tick(60, TODAY).complete:  # the first look: no second look within it
        pass
    study = root / "NEW" / "S1"
    study.mkdir(parents=True)
    src = next(p for p in sorted(root.rglob("*")) if p.is_file())
    shutil.copy(src, study / "IM0.dcm")
    wait = time.sleep

    def a_file_lands_while_the_tick_waits(seconds):  # the export goes on during the pause
        if not (study / "IM1.dcm").exists():
            shutil.copy(src, study / "IM1.dcm")
        wait(seconds)

    monkeypatch.setattr(time, "sleep", a_file_lands_while_the_tick_waits)
    result = watch.tick(60, TODAY)
    assert sorted(p for changes in result.changes.values() for p, _ in changes) == ["NEW/S1/IM0.dcm", "NEW/S1/IM1.dcm"]
    monkeypatch.undo()
    assert watch.tick(60, TODAY).changes == {}  # the confirmation look: both unchanged
