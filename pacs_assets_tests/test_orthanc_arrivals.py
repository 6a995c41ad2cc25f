"""Modality arrivals: instances sent to a real private Orthanc by C-STORE (dcmtk storescu) are requested by the
/changes sensor and recorded in orthanc_arrivals by the orthanc/arrivals asset."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pydicom
import pytest
import requests
from dagster import AssetKey, DagsterInstance, DefaultSensorStatus, build_sensor_context

from pacs_assets.config import ConfigError, load_config
from pacs_assets.defs.arrivals import (
    ARRIVALS_JOB,
    ARRIVALS_KEY,
    SENSOR_NAME,
    arrivals_run_config,
    read_changes,
)
from pacs_assets.defs.site import build_definitions
from pacs_assets.index import arrivals as arrivals_sql
from pacs_assets.orthanc.client import OrthancClient, OrthancUnavailable
from pacs_assets.orthanc.ids import orthanc_instance_id
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import materialize_nas, write_config
from pacs_assets_tests.services.process import free_port

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (storescu) is not installed")

TODAY = dt.date.today()
START = TODAY - dt.timedelta(days=12)
NAS = [{"id": "ct", "kind": "dicom_folder", "root": "nas",
        "partitions_start": (TODAY - dt.timedelta(days=20)).isoformat()}]


class Site:
    """A configured site (one NAS) plus a 'modality' holding other patients' files, never on any NAS."""

    def __init__(self, tmp_path: Path, orthanc_url: str, orthanc=None):
        self.tmp_path, self.orthanc = tmp_path, orthanc
        self.nas = make_dicom_nas(tmp_path / "nas", patients=4, start_date=START)
        self.modality = make_dicom_nas(tmp_path / "modality", patients=4, seed=7, start_date=START)
        self.config_path = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_url)
        self.index = tmp_path / "index.duckdb"
        self.defs = build_definitions(load_config(self.config_path))
        self.sensor = self.defs.resolve_sensor_def(SENSOR_NAME)
        self.instance = DagsterInstance.ephemeral()
        self.cursor = None

    def modality_files(self, n: int) -> list[Path]:
        # Plain CT/MR slices ('ok', none of the sample's special cases): what a scanner sends.
        paths = [p for p in self.modality.paths("ok") if p not in self.modality.special.values()]
        return [self.modality.root / p for p in paths[:n]]

    def store(self, files: list[Path]) -> None:
        """C-STORE the files to Orthanc's DICOM port, as a modality does."""
        proc = subprocess.run(
            ["storescu", "-aet", "MODALITY", "-aec", self.orthanc.aet, "127.0.0.1", str(self.orthanc.dicom_port),
             *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]

    def tick(self):
        # The resources, as Dagster's code server hands them to a sensor (credentials resolved from EnvVar).
        with build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs,
                                  resources=self.defs.resources) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data

    def run(self, run_config: dict):
        job = self.defs.resolve_job_def(ARRIVALS_JOB)
        return job.execute_in_process(run_config=run_config, instance=self.instance)

    def rows(self, sql: str = "SELECT * FROM orthanc_arrivals ORDER BY orthanc_instance_id") -> list[dict]:
        with duckdb.connect(str(self.index), read_only=True) as con:
            cursor = con.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=False)) for row in cursor.fetchall()]

    def last_seq(self) -> int:
        return requests.get(f"{self.orthanc.url}/changes", params={"last": ""}, auth=self.orthanc.auth,
                            timeout=10).json()["Last"]


def sop_uids(files: list[Path]) -> set[str]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def test_modality_arrivals_are_requested_once_and_recorded_exactly(tmp_path, orthanc_env):
    site = Site(tmp_path, orthanc_env.url, orthanc_env)
    files = site.modality_files(4)
    site.store(files)

    data = site.tick()
    until = site.last_seq()
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.run_key == f"orthanc:0:{until}"
    assert request.run_config == arrivals_run_config(0, until) == {
        "ops": {"orthanc__arrivals": {"config": {"since": 0, "until": until}}}}
    assert data.cursor == str(until)

    result = site.run(request.run_config)
    assert result.success
    rows = site.rows()
    assert {r["sop_instance_uid"] for r in rows} == sop_uids(files) and len(rows) == len(files)
    for row in rows:
        ds = next(pydicom.dcmread(f, stop_before_pixels=True) for f in files
                  if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == row["sop_instance_uid"])
        assert row["orthanc_instance_id"] == orthanc_instance_id(ds.PatientID, ds.StudyInstanceUID,
                                                                 ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert (row["patient_id"], row["patient_name"], row["patient_birth_date"], row["patient_sex"]) == (
            ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex)
        assert (row["study_instance_uid"], row["study_date"], row["accession_number"], row["series_instance_uid"],
                row["modality"], row["sop_class_uid"]) == (
            ds.StudyInstanceUID, ds.StudyDate, ds.AccessionNumber, ds.SeriesInstanceUID, ds.Modality, ds.SOPClassUID)
        assert row["study_description"] == ds.StudyDescription
        assert (row["source"], row["origin"], row["remote_aet"], row["from_nas"]) == (
            "orthanc", "DicomProtocol", "MODALITY", False)
        assert 0 < row["seq"] <= until
        assert abs(row["received_at"] - dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)) < dt.timedelta(minutes=5)

    # Counts only in Dagster's metadata and logs: no patient name, ID or birth date.
    materialization = result.asset_materializations_for_node("orthanc__arrivals")[0]
    meta = materialization.metadata
    assert meta["instances_recorded"].value == len(files) and meta["not_from_nas"].value == len(files)
    logged = " ".join(str(v.value) for v in meta.values()) + " ".join(
        str(e.message) for e in result.all_events if e.message)
    for row in rows:
        for value in (row["patient_id"], row["patient_name"], row["patient_birth_date"]):
            assert value not in logged

    # The same change never asks twice.
    quiet = site.tick()
    assert quiet.run_requests == [] and "No new instance" in quiet.skip_message and quiet.cursor == str(until)

    # Idempotent: rerunning the same Seq range gives the same rows.
    assert site.run(request.run_config).success
    again = site.rows()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "last_updated"} for r in rs]  # noqa: E731
    assert strip(again) == strip(rows)

    # A later arrival gets its own range, starting where the cursor stopped.
    later = site.modality_files(6)[4:]
    site.store(later)
    data = site.tick()
    (request,) = data.run_requests
    assert request.run_key == f"orthanc:{until}:{site.last_seq()}"
    assert site.run(request.run_config).success
    assert {r["sop_instance_uid"] for r in site.rows()} == sop_uids(files + later)


def test_nas_imports_are_recorded_and_flagged_from_nas(tmp_path, orthanc_env):
    site = Site(tmp_path, orthanc_env.url, orthanc_env)
    assert materialize_nas(site.config_path, "ct").success  # REST uploads of every 'ok' NAS file
    files = site.modality_files(3)
    site.store(files)
    # A modality re-sending an instance Orthanc already holds adds no change (AlreadyStored).
    site.store([site.nas.root / site.nas.paths("ok")[0]])

    (request,) = site.tick().run_requests
    assert site.run(request.run_config).success
    rows = site.rows()
    assert len(rows) == len({r["orthanc_instance_id"] for r in rows})
    from_nas = {r["sop_instance_uid"] for r in rows if r["from_nas"]}
    assert from_nas == site.nas.sop_instance_uids
    assert {r["origin"] for r in rows if r["from_nas"]} == {"RestApi"}
    assert {r["sop_instance_uid"] for r in rows if not r["from_nas"]} == sop_uids(files)


def test_a_re_sent_instance_keeps_its_latest_arrival_whatever_the_run_order(tmp_path, orthanc_env):
    site = Site(tmp_path, orthanc_env.url, orthanc_env)
    files = site.modality_files(1)
    site.store(files)
    (first,) = site.tick().run_requests
    assert site.run(first.run_config).success
    (row,) = site.rows()
    requests.delete(f"{orthanc_env.url}/instances/{row['orthanc_instance_id']}", auth=orthanc_env.auth,
                    timeout=10).raise_for_status()
    site.store(files)  # the modality sends it again
    (second,) = site.tick().run_requests
    assert site.run(second.run_config).success
    (newer,) = site.rows()
    assert newer["orthanc_instance_id"] == row["orthanc_instance_id"] and newer["seq"] > row["seq"]
    # Orthanc 1.10.1 erases a deleted instance's NewInstance change: the old range now holds none.
    result = site.run(first.run_config)
    assert result.success and site.rows() == [newer]
    meta = result.asset_materializations_for_node("orthanc__arrivals")[0].metadata
    assert meta["new_instance_changes"].value == 0
    # Should an older arrival of it be written anyway, the latest one stays.
    older = {k: v for k, v in row.items() if k in arrivals_sql.ARRIVAL_COLUMNS}
    assert arrivals_sql.replace_arrivals(site.index, [older]) == {"written": 0, "from_nas": 0, "kept_newer": 1}
    assert site.rows() == [newer]


def test_changes_are_read_in_pieces_without_missing_or_repeating(tmp_path, orthanc_env):
    site = Site(tmp_path, orthanc_env.url, orthanc_env)
    site.store(site.modality_files(5))
    client = OrthancClient(orthanc_env.url, *orthanc_env.auth)
    whole = read_changes(client, 0)
    assert whole.done and len(whole.new_instances) == 5 and whole.position == site.last_seq()
    seen, position = [], 0
    for _ in range(20):
        part = read_changes(client, position, max_new=2, page=3)
        seen += part.new_instances
        position = part.position
        if part.done:
            break
    assert seen == whole.new_instances and position == whole.position
    # An explicit range stops at `until`, inclusive.
    cut = whole.new_instances[2][0]
    assert read_changes(client, 0, cut).new_instances == whole.new_instances[:3]


def test_a_replaced_orthanc_database_is_read_from_the_start(tmp_path, orthanc_env):
    site = Site(tmp_path, orthanc_env.url, orthanc_env)
    site.store(site.modality_files(2))
    site.cursor = "100000"  # a cursor from an earlier Orthanc database
    (request,) = site.tick().run_requests
    assert request.run_key == f"orthanc:0:{site.last_seq()}"


def test_orthanc_down_is_a_skip_with_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHANC_USERNAME", "pacs")  # the sensor's resource resolves them (EnvVar) before any call
    monkeypatch.setenv("ORTHANC_PASSWORD", "irrelevant")
    url = f"http://127.0.0.1:{free_port()}"
    site = Site(tmp_path, url)
    site.cursor = "42"
    data = site.tick()
    with pytest.raises(OrthancUnavailable) as expected:
        OrthancClient(url, None, None).system()
    assert data.run_requests == [] and data.skip_message == str(expected.value)
    assert "unreachable" in data.skip_message
    assert site.cursor == "42"  # nothing seen, nothing skipped


def test_registered_as_documented(tmp_path):
    site = Site(tmp_path, "http://127.0.0.1:9")
    node = site.defs.resolve_asset_graph().get(ARRIVALS_KEY)
    assert ARRIVALS_KEY == AssetKey(["orthanc", "arrivals"])
    assert node.group_name == "orthanc" and node.owners == ["team:radiology-it"] and node.description
    assert node.partitions_def is None
    assert site.sensor.default_status == DefaultSensorStatus.STOPPED
    assert site.sensor.minimum_interval_seconds == 30
    assert site.defs.resolve_job_def(ARRIVALS_JOB) is not None
    # A NAS may not take the group's name: its job would select Orthanc's asset too.
    bad = write_config(tmp_path / "bad.yaml", [{**NAS[0], "id": "orthanc"}], orthanc_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="reserved"):
        build_definitions(load_config(bad))
