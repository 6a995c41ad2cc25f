"""Patient data stays out of Dagster's event log (logs, metadata, errors), and credentials appear nowhere."""

from __future__ import annotations

from dagster import DagsterInstance

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
    assert sorted(t for t in phi_terms(manifest) if t in text) == []
    assert "s3cret-not-logged" not in text


def test_a_site_may_allow_file_paths_in_metadata(tmp_path, orthanc_env):
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url,
                          privacy={"log_patient_data": True})
    instance = DagsterInstance.ephemeral()
    result = materialize_nas(config, "ct", instance=instance)
    text = event_log_text(instance, result.run_id)
    assert manifest.special["truncated"] in text  # the opt-in shows failed files by path
