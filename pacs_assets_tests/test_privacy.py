"""Patient data stays out of Dagster's event log (logs, metadata, errors), and credentials appear nowhere."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import NAS, SAMPLE_START, materialize_nas, write_config


def event_log_text(instance: DagsterInstance, run_id: str) -> str:
    parts = []
    for record in instance.all_logs(run_id):
        parts.append(record.user_message or "")
        parts.append(record.message or "")
        if record.dagster_event is not None:
            parts.append(repr(record.dagster_event.event_specific_data))
    return "\n".join(parts)


def phi_terms(manifest) -> set[str]:
    terms = set()
    for patient_id, name in manifest.patients.items():
        terms.add(patient_id)
        for group in name.split("="):
            terms.update(part for part in group.replace("^", " ").split() if len(part) >= 3)
    return terms


def test_a_full_run_logs_no_patient_names_ids_or_credentials(tmp_path, orthanc_env):
    manifest = make_dicom_nas(tmp_path / "nas", patients=5, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    instance = DagsterInstance.ephemeral()
    result = materialize_nas(config, "ct", instance=instance)
    assert result.success

    text = event_log_text(instance, result.run_id)
    assert "orthanc_instances" in text  # the scan really read the run's events
    terms = phi_terms(manifest)
    assert len(terms) >= 10
    terms |= path_terms(manifest.root)
    leaked = sorted(t for t in terms if t in text)
    assert leaked == []
    assert orthanc_env.password not in text


def test_a_failing_run_does_not_leak_either(tmp_path, monkeypatch):
    manifest = make_dicom_nas(tmp_path / "nas", patients=5, start_date=SAMPLE_START)
    monkeypatch.setenv("ORTHANC_USERNAME", "pacs")
    monkeypatch.setenv("ORTHANC_PASSWORD", "s3cret-not-logged")
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url="http://127.0.0.1:9")
    instance = DagsterInstance.ephemeral()
    result = materialize_nas(config, "ct", instance=instance, raise_on_error=False)
    assert not result.success
    text = event_log_text(instance, result.run_id)
    assert "unreachable" in text
    assert sorted(t for t in phi_terms(manifest) | path_terms(manifest.root) if t in text) == []
    assert "s3cret-not-logged" not in text


def test_a_site_may_allow_file_paths_in_metadata(tmp_path, orthanc_env):
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url,
                          privacy={"log_patient_data": True})
    instance = DagsterInstance.ephemeral()
    result = materialize_nas(config, "ct", instance=instance)
    text = event_log_text(instance, result.run_id)
    assert manifest.special["truncated"] in text  # the opt-in shows failed files by path


def path_terms(root: Path) -> set[str]:
    """The NAS root, its start (what a message cut short still quotes), each of its folders, and every folder
    and file name under it (patient folders among them). Names shorter than 5 characters are left out: they
    are words of ordinary text too (the symlink 'up' is in 'upload', the root's 'tmp' in many words)."""
    terms = {str(root), str(root)[:8]} | {part for part in root.parts if len(part) >= 5}
    for _dirpath, dirnames, filenames in os.walk(root):
        terms.update(n for n in dirnames + filenames if len(n) >= 5)
    return terms


def test_upload_failures_are_counted_by_category_without_paths(tmp_path, orthanc_env):
    """Files that break between indexing and upload, in folders named after their patients: the event log
    says what went wrong in categories, and names no path, folder, patient name or ID."""
    manifest = make_dicom_nas(tmp_path / "nas", patients=5, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    instance = DagsterInstance.ephemeral()
    index_only = [AssetKey(["ct", "file_inventory"]), AssetKey(["ct", "dicom_index"])]
    assert materialize_nas(config, "ct", instance=instance, asset_selection=index_only).success
    root = manifest.root
    terms = phi_terms(manifest) | path_terms(root)  # before the files below change
    vanished, junk = manifest.special["latin1"], manifest.special["utf8"]  # 'Müller Jürgen ...' folders
    assert manifest.patients["S0-00001"].split("^")[0] in vanished
    (root / vanished).unlink()  # unreadable at upload time
    (root / junk).write_bytes(b"not DICOM any more " * 50)  # Orthanc answers HTTP 400
    result = materialize_nas(config, "ct", instance=instance, asset_selection=[AssetKey(["ct", "orthanc_instances"])])
    assert result.success

    text = "\n".join(event_log_text(instance, run.run_id) for run in instance.get_runs())
    assert "failures_by_reason" in text
    assert sorted(t for t in terms if t in text) == []
    failures = _metadata(result, "orthanc_instances")["failures_by_reason"].value
    assert "| file unreadable | 1 |" in failures and "| HTTP 400 bad file format | 1 |" in failures


def _metadata(result, asset_name: str) -> dict:
    """The metadata of the run's materialization of ct/<asset_name> (one per partition, all alike)."""
    return result.asset_materializations_for_node(f"ct__{asset_name}")[0].metadata
