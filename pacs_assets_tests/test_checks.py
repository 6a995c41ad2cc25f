"""The asset checks pass on a consistent site and catch planted inconsistencies."""

from __future__ import annotations

import shutil

import duckdb
import pydicom
import requests
from dagster import AssetKey

from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import (
    NAS,
    SAMPLE_START,
    check_results,
    materialize_nas,
    write_config,
)


def test_checks_pass_then_catch_planted_inconsistencies(tmp_path, orthanc_env):
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    first = materialize_nas(config, "ct")
    assert check_results(first) == {"every_folder_read": True, "every_file_accounted_for": True,
                                    "no_sop_instance_conflicts": True, "no_uid_conflicts": True,
                                    "indexed_instances_in_orthanc": True, "one_person_per_patient_id": True,
                                    "no_patient_name_variants": True, "no_held_files": True}

    # Plant: an instance vanishes from Orthanc behind our back.
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        (orthanc_id,) = con.execute(
            "SELECT orthanc_instance_id FROM file_status WHERE status = 'imported' LIMIT 1").fetchall()[0]
    assert requests.delete(f"{orthanc_env.url}/instances/{orthanc_id}", auth=orthanc_env.auth).status_code == 200
    assert check_results(materialize_nas(config, "ct"))["indexed_instances_in_orthanc"] is False


def test_blocking_check_stops_the_import_when_a_file_is_unaccounted_for(tmp_path, orthanc_env):
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct", asset_selection=[AssetKey(["ct", "file_inventory"])]).success
    # Plant: a skipped file loses its reason. Rebuilding the index does not touch the inventory.
    with duckdb.connect(str(tmp_path / "index.duckdb")) as con:
        con.execute("UPDATE inventory SET reason = NULL WHERE file_path = "
                    "(SELECT min(file_path) FROM inventory WHERE status = 'skipped')")

    result = materialize_nas(config, "ct", raise_on_error=False,
                             asset_selection=[AssetKey(["ct", "dicom_index"]), AssetKey(["ct", "orthanc_instances"])])

    assert check_results(result)["every_file_accounted_for"] is False
    imported = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
                and e.asset_key == AssetKey(["ct", "orthanc_instances"])]
    assert imported == []
    assert requests.get(f"{orthanc_env.url}/statistics", auth=orthanc_env.auth).json()["CountInstances"] == 0


def test_the_same_instance_with_another_patient_on_two_nas_is_a_conflict(tmp_path, orthanc_env):
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    other = tmp_path / "nas2"
    other.mkdir()
    src = manifest.root / manifest.paths("ok")[0]
    ds = pydicom.dcmread(src)
    ds.PatientID = "SOMEONE-ELSE"  # same SOP Instance UID, another patient: a mix-up waiting to happen
    ds.save_as(other / "copy.dcm")
    shutil.copystat(src, other / "copy.dcm")
    config = write_config(tmp_path / "pacs.yaml", NAS + [{**NAS[0], "id": "ct2", "root": "nas2"}],
                          orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct").success
    result = materialize_nas(config, "ct2")
    assert check_results(result)["no_sop_instance_conflicts"] is False
    evaluation = next(e.asset_check_evaluation_data for e in result.all_events
                      if e.event_type_value == "ASSET_CHECK_EVALUATION"
                      and e.asset_check_evaluation_data.check_name == "no_sop_instance_conflicts")
    assert evaluation.metadata["conflicting_instances"].value == 1
    assert "SOMEONE-ELSE" not in str(evaluation.metadata)


def test_the_sweep_counts_the_same_by_listing_orthanc_and_by_finding_each_uid(tmp_path, orthanc_env, monkeypatch):
    from pacs_assets.orthanc.client import OrthancClient
    from pacs_assets.pipeline import reconciliation

    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct").success
    index = tmp_path / "index.duckdb"
    with duckdb.connect(str(index), read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT orthanc_instance_id FROM file_status WHERE status = 'imported' "
                                         "ORDER BY 1").fetchall()]

    def delete(orthanc_id: str) -> None:
        assert requests.delete(f"{orthanc_env.url}/instances/{orthanc_id}", auth=orthanc_env.auth).status_code == 200

    for orthanc_id in ids[:2]:
        delete(orthanc_id)
    client = OrthancClient(orthanc_env.url, orthanc_env.username, orthanc_env.password)
    finds, real_find = [], OrthancClient.find_instance_ids
    monkeypatch.setattr(OrthancClient, "find_instance_ids",
                        lambda self, uids, **kw: finds.append(1) or real_find(self, uids, **kw))
    deletions, real_list = [0], OrthancClient.instance_ids

    def listing(self, page=0):  # pages of 3, so the paging is exercised
        for n, ids_page in enumerate(real_list(self, page=3)):
            yield ids_page
            if n == 0 and deletions[0]:  # an instance just listed is deleted: the next pages shift by one
                deletions[0] -= 1
                delete(ids_page[0])

    monkeypatch.setattr(OrthancClient, "instance_ids", listing)
    by_list = reconciliation.orthanc_sweep(index, "ct", client)
    assert by_list["missing_in_orthanc"] == 2 and by_list["checked"] > 2 and not finds  # an exact list: no lookup
    monkeypatch.setattr(reconciliation, "LIST_FACTOR", 0)  # Orthanc "too big": find every UID
    by_find = reconciliation.orthanc_sweep(index, "ct", client)
    assert by_list == by_find and finds

    # A deletion while the list is read hides another instance from it: that read is not exact and the list
    # is read again (exact: no lookup), which no longer holds the deleted one.
    monkeypatch.setattr(reconciliation, "LIST_FACTOR", 50)
    finds.clear()
    deletions[0] = 1
    assert reconciliation.orthanc_sweep(index, "ct", client)["missing_in_orthanc"] == 3 and not finds
    # A deletion during each of the three reads: never exact, so what the last read missed is looked up, and a
    # present instance hidden by the shift is found, not counted. The instance deleted after it was listed
    # counts at the next sweep.
    deletions[0] = 3
    assert reconciliation.orthanc_sweep(index, "ct", client)["missing_in_orthanc"] == 5 and finds
    assert deletions == [0] and reconciliation.orthanc_sweep(index, "ct", client)["missing_in_orthanc"] == 6
