"""Nothing is lost by running incrementally: changes of every kind between real sensor ticks, the runs they
request executed in-process with their run config and partitions, one reconciliation; at the end the index and
Orthanc hold exactly what a full walk from scratch into a fresh index and a fresh Orthanc gives."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from pathlib import Path

import duckdb
import pydicom
import pytest
import requests
from dagster import AssetKey, DagsterInstance, build_sensor_context

from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import NAS, SAMPLE_START, TODAY, materialize_nas, write_config
from pacs_assets_tests.services.flaky_fs import FlakyShare, fault
from pacs_assets_tests.services.orthanc import OrthancServer

TABLES = {
    "inventory": "SELECT * EXCLUDE (scanned_at) FROM inventory",
    "instances": "SELECT * EXCLUDE (last_updated) FROM instances",
    "series": "SELECT * EXCLUDE (last_updated) FROM series",
    "studies": "SELECT * EXCLUDE (last_updated) FROM studies",
    "patients": "SELECT * EXCLUDE (last_updated) FROM patients",
    # Imported and duplicate both mean "Orthanc has it": a file re-sent after a rename or a rewrite is answered
    # AlreadyStored (docs/design.md, "A file rewritten on the NAS"), or found in Orthanc before any POST
    # (pipeline/already_stored.py), where a fresh Orthanc says imported; the note on how is not compared.
    "file_status": """SELECT file_path, partition_date, CASE WHEN status IN ('imported', 'duplicate') THEN 'in_orthanc'
                      ELSE status END, CASE WHEN status IN ('imported', 'duplicate') THEN NULL ELSE reason END,
                      orthanc_instance_id, change_token FROM file_status""",
}


class Site:
    """One site: its definitions, a sensor ticking on a real NAS, and the requested runs executed in-process."""

    def __init__(self, config: Path):
        self.defs = build_definitions(load_config(config))
        self.sensor = self.defs.resolve_sensor_def("ct_new_files_sensor")
        self.instance = DagsterInstance.ephemeral()
        self.cursor = None
        self.results = []

    def tick(self) -> list:
        with build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data.run_requests

    def execute(self, request, *, raise_on_error: bool = True):
        job = self.defs.resolve_job_def(request.job_name or "ct_job")
        result = job.execute_in_process(run_config=request.run_config, partition_key=request.partition_key,
                                        tags=dict(request.tags), instance=self.instance, raise_on_error=raise_on_error)
        self.results.append(result)
        return result

    def drain(self, ticks: int = 3) -> int:
        """Tick until quiet, running what each tick asks for. Returns how many runs ran."""
        runs = 0
        for _ in range(ticks):
            for request in self.tick():
                assert self.execute(request).success
                runs += 1
        return runs

    def reconcile(self):
        return self.defs.resolve_job_def("ct_reconciliation_job").execute_in_process(instance=self.instance)


def materialized(result, name: str) -> set[str]:
    key = AssetKey(["ct", name])
    return {e.event_specific_data.materialization.partition for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION" and e.event_specific_data.materialization.asset_key == key}


def inventory_metadata(result) -> dict:
    (mat,) = [e.event_specific_data.materialization for e in result.all_events
              if e.event_type_value == "ASSET_MATERIALIZATION"
              and e.event_specific_data.materialization.asset_key == AssetKey(["ct", "file_inventory"])][:1]
    return {k: v.value for k, v in mat.metadata.items()}


def snapshot(index: Path) -> dict[str, list]:
    with duckdb.connect(str(index), read_only=True) as con:
        return {name: con.execute(f"{sql} ORDER BY ALL").fetchall() for name, sql in TABLES.items()}


def orthanc_sops(server: OrthancServer) -> set[str]:
    answer = requests.post(f"{server.url}/tools/find", auth=server.auth, timeout=60,
                           json={"Level": "Instance", "Query": {}, "Expand": True}).json()
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in answer}


def unlinked_folder(manifest) -> str:
    """A series folder of ordinary files that no symbolic link points into (renaming it breaks nothing else)."""
    root = os.path.realpath(manifest.root)
    targets = {os.path.realpath(p) for p in Path(root).rglob("*") if p.is_symlink()}
    for path in manifest.paths("ok"):
        folder = os.path.join(root, os.path.dirname(path))
        if "/" in path and not any(t.startswith(folder) or folder.startswith(t) for t in targets):
            return os.path.dirname(path)
    raise AssertionError("no plain folder in the sample")


@pytest.mark.parametrize("share", ["local", "flaky"])
def test_every_kind_of_change_ends_equal_to_a_full_walk_from_scratch(tmp_path, orthanc_env, share):
    """``flaky``: the same through a slow FUSE share (services/flaky_fs.py, 1 ms per operation like an SMB round
    trip) that fails listings, stats and reads now and then, and one folder's listing for a while: the end state is
    the same."""
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    root = manifest.root  # changes are made here; the pipeline reads it directly or through the flaky share
    with contextlib.ExitStack() as stack:
        flaky = None
        if share == "flaky":
            flaky = stack.enter_context(FlakyShare(root, tmp_path / "fuse", latency=0.001))
            series = sorted({os.path.dirname(p) for p in manifest.paths("ok")})
            some = manifest.paths("ok")
            flaky.set(fault("readdir", f"/{series[0]}", "EIO", 2), fault("readdir", f"/{series[-1]}", "ESTALE", 2),
                      fault("getattr", f"/{some[1]}", "ESTALE", 2), fault("open", f"/{some[3]}", "EAGAIN", 2))
        nas = [{**NAS[0], "root": str(flaky.mountpoint)}] if flaky else NAS
        _every_kind_of_change(tmp_path, orthanc_env, manifest, root, write_config(
            tmp_path / "pacs.yaml", nas, orthanc_url=orthanc_env.url), flaky)


def _every_kind_of_change(tmp_path, orthanc_env, manifest, root: Path, config: Path, flaky: FlakyShare | None):
    site = Site(config)
    assert site.tick() == []  # first look: everything seen, nothing settled yet
    first_look = site.tick()  # the first look: one whole walk that materializes what it found
    assert [r.job_name for r in first_look] == ["ct_reconciliation_job"]
    assert site.execute(first_look[0]).success

    # 1. A new study lands; a file is added to an old folder; a file is deleted; a series folder is renamed.
    renamed = unlinked_folder(manifest)
    plain = [p for p in manifest.paths("ok") if not p.startswith(renamed + "/")
             and (root / p).read_bytes()[128:132] == b"DICM"]  # files with a Part 10 header, outside that folder
    old, deleted, another, rewritten = plain[0], plain[-1], plain[len(plain) // 3], plain[2 * len(plain) // 3]
    make_bulk_dicom_nas(root / "NEW", 6, seed=7, files_per_series=6, days=1, start_date=TODAY - dt.timedelta(days=2))
    ds = pydicom.dcmread(root / old)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(root / os.path.dirname(old) / "ADDED.dcm")
    # ... and an old archive's two different people under one new PatientID: held here as in the fresh walk.
    (root / "REUSED").mkdir()
    for n, (name, birth) in enumerate((("Fischer^Paul", "19720911"), ("Hoffmann^Lena", "19880120"))):
        ds = pydicom.dcmread(root / old)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = "REUSED-1", name, birth
        ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(root / "REUSED" / f"IM{n}.dcm")
    deleted_sop = pydicom.dcmread(root / deleted, stop_before_pixels=True).SOPInstanceUID
    (root / deleted).unlink()
    os.rename(root / renamed, root / f"{renamed}_RENAMED")
    runs_before = len(site.results)
    ran = 0
    if flaky:  # the folder that got ADDED.dcm cannot be listed for a while: the new file waits, nothing is lost
        flaky.set(fault("readdir", f"/{os.path.dirname(old)}", "EIO"))
        ran += site.drain()
        flaky.set()
    assert ran + site.drain() >= 2
    incremental = site.results[runs_before:]
    assert all(r.success for r in incremental)
    for result in incremental:  # each run walked only folders that changed, never the whole NAS
        meta = inventory_metadata(result)
        assert meta["folders_walked"] != "all" and meta["files_walked"] < len(manifest.expected)

    # 2. An outage during a run: the root is emptied after the tick asked for a run.
    ds = pydicom.dcmread(root / another)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(root / os.path.dirname(another) / "ADDED2.dcm")
    requested = site.tick()  # seen, and looked at again within the same tick (watch_settle_seconds)
    assert requested
    before = snapshot(tmp_path / "index.duckdb")
    aside = tmp_path / "nas_aside"
    os.rename(root, aside)
    root.mkdir()
    for request in requested:
        assert not site.execute(request, raise_on_error=False).success
    assert snapshot(tmp_path / "index.duckdb") == before, "an outage changed the index"
    root.rmdir()
    os.rename(aside, root)
    for request in requested:  # the same run, retried once the NAS is back
        assert site.execute(request).success

    # 3. A file rewritten in place: same size, new mtime, its folder's mtime unchanged. The sensor cannot see it.
    folder_mtime = os.stat(root / os.path.dirname(rewritten)).st_mtime_ns
    with open(root / rewritten, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert os.stat(root / os.path.dirname(rewritten)).st_mtime_ns == folder_mtime
    assert site.tick() == [] and site.tick() == []

    # 4. The reconciliation finds it, and materializes only its partition.
    result = site.reconcile()
    assert result.success
    day = manifest.procedure_date_of[rewritten].isoformat()
    assert materialized(result, "file_inventory") == {day}
    assert materialized(result, "dicom_index") == {day}
    assert materialized(result, "orthanc_instances") == {day}
    # ... and a second one, of an unchanged NAS, materializes no partition at all.
    again = site.reconcile()
    assert {name: materialized(again, name) for name in ("file_inventory", "dicom_index", "orthanc_instances")} == \
        {"file_inventory": set(), "dicom_index": set(), "orthanc_instances": set()}
    assert materialized(again, "reconciliation") == {None}

    # The same NAS from scratch: a fresh index, a fresh Orthanc, one full walk.
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    with OrthancServer(fresh_dir / "orthanc").throwaway() as fresh_orthanc, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHANC_USERNAME", fresh_orthanc.username)
        mp.setenv("ORTHANC_PASSWORD", fresh_orthanc.password)
        fresh_config = write_config(fresh_dir / "pacs.yaml", [{**NAS[0], "root": str(root)}],
                                    orthanc_url=fresh_orthanc.url)
        assert materialize_nas(fresh_config, "ct").success
        fresh_sops = orthanc_sops(fresh_orthanc)
    ours, fresh = snapshot(tmp_path / "index.duckdb"), snapshot(fresh_dir / "index.duckdb")
    for name in TABLES:
        assert ours[name] == fresh[name], name
    assert sorted(row[0] for row in ours["file_status"] if row[2] == "held") == ["REUSED/IM0.dcm", "REUSED/IM1.dcm"]
    # Orthanc: everything the fresh one has, plus the deleted file's instance (nothing is deleted from Orthanc).
    assert orthanc_sops(orthanc_env) == fresh_sops | {deleted_sop}
    assert deleted_sop not in fresh_sops
    shutil.rmtree(fresh_dir / "orthanc", ignore_errors=True)


def test_incremental_schedule_asks_for_the_changed_folders_only(tmp_path):
    """For sites without the sensor: the 15-minute schedule keeps its own watch and names only the folders
    that changed; the run config carries a reference, never a folder name (folder names name patients)."""
    from dagster import build_schedule_context

    from pacs_assets.nas.folder_lists import read_folder_list

    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url="http://127.0.0.1:9")
    defs = build_definitions(load_config(config))
    schedule = defs.resolve_schedule_def("ct_incremental_schedule")

    def tick() -> list:
        with build_schedule_context(instance=DagsterInstance.ephemeral(),
                                    repository_def=defs.get_repository_def()) as context:
            return schedule.evaluate_tick(context).run_requests or []

    tick()
    first = tick()  # the first look: one reconciliation run, not one run per folder
    assert [r.job_name for r in first] == ["ct_reconciliation_job"]
    assert tick() == []
    folder = os.path.dirname(manifest.paths("ok")[0])
    ds = pydicom.dcmread(manifest.root / manifest.paths("ok")[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(manifest.root / folder / "LATE.dcm")
    (request,) = tick()  # seen, and unchanged a second later (watch_settle_seconds)
    assert request.job_name == "ct_job" and request.partition_key
    cfg = request.run_config["ops"]["ct__file_inventory"]["config"]
    assert set(cfg) == {"folders_ref"} and folder not in str(request.run_config)
    assert read_folder_list(tmp_path / "watch", cfg["folders_ref"]) == [folder]
    assert tick() == []  # the confirmation look: unchanged
