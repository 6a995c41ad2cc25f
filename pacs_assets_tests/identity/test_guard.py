"""The identity guard against a real Orthanc, on `pacs sample`'s site: ct_nas plus archive_nas, an old archive
from another vendor whose patient IDs meet ct_nas's (sample/identity_cases.py).

No Orthanc patient may ever hold two different people; held files have one status and a reason; a decision
releases exactly the held files of its collision; a rerun and an index rebuild send nothing again.
"""

from __future__ import annotations

import json
from pathlib import Path

import requests
import yaml
from dagster import AssetKey, DagsterInstance

from pacs_assets.cli.main import main
from pacs_assets.cli.sample import make_sample_site, sample_start
from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
from pacs_assets.identity.collisions import ACROSS_NAS, WITHIN_NAS
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets.sample.identity_cases import REUSED_ID, make_archive_nas
from pacs_assets_tests.harness import check_results, materialize_nas, people_mixed_in_orthanc
from pacs_assets_tests.services.orthanc import OrthancServer
from pacs_assets_tests.test_privacy import event_log_text

NAS_IDS = ("ct_nas", "archive_nas")


def _site(tmp_path, orthanc, **archive_settings):
    config = make_sample_site(tmp_path / "site", orthanc_url=orthanc.url, firebird=False)
    raw = yaml.safe_load(config.read_text())
    raw["orthanc"].update(run_retries=0, retries=1)
    raw["nas"][1].update(archive_settings)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    # The same NAS devices again, for their manifests (the sample is deterministic).
    ct = make_dicom_nas(tmp_path / "ct_copy", seed=0, start_date=sample_start())
    cases = make_archive_nas(tmp_path / "archive_copy", ct, start_date=sample_start())
    return config, cases


def _index_then_upload(config: Path, instance: DagsterInstance | None = None) -> dict:
    """Index both NAS devices first, then upload both: each upload sees every record (the backfill case)."""
    results = {}
    for nas_id in NAS_IDS:
        keys = [AssetKey([nas_id, "file_inventory"]), AssetKey([nas_id, "dicom_index"])]
        results[f"{nas_id}/index"] = materialize_nas(config, nas_id, asset_selection=keys, instance=instance)
        assert results[f"{nas_id}/index"].success
    for nas_id in NAS_IDS:
        results[nas_id] = materialize_nas(config, nas_id, asset_selection=[AssetKey([nas_id, "orthanc_instances"])],
                                          instance=instance)
        assert results[nas_id].success
    return results


def _catch_up(config: Path, nas_id: str):
    defs = build_definitions(load_config(config))
    job = defs.resolve_job_def(f"{nas_id}_reconciliation_job")
    result = job.execute_in_process(instance=DagsterInstance.ephemeral(),
                                    asset_selection=[AssetKey([nas_id, "reconciliation_catch_up"])])
    assert result.success
    return result


def _statuses(config: Path) -> dict[tuple[str, str], tuple[str, str]]:
    import duckdb

    with duckdb.connect(str(config.parent / "index.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT nas_id, file_path, status, reason FROM file_status").fetchall()
    return {(nas, path): (status, reason) for nas, path, status, reason in rows}


def _ledger_rows(config: Path) -> int:
    import duckdb

    with duckdb.connect(str(config.parent / "index.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*) FROM import_history WHERE attempts > 0").fetchall()[0][0]


def _pacs(capsys, config: Path, *args: str) -> tuple[int, str]:
    """Run `pacs` in-process; its standard output (what Dagster logged before is dropped)."""
    capsys.readouterr()
    code = main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    assert code == 0 or err, "a failing command says why"
    return code, out if code == 0 else err


def _orthanc_patients(orthanc) -> dict[str, int]:
    """{PatientID: instances} of what Orthanc holds."""
    out = {}
    for pid in requests.get(f"{orthanc.url}/patients", auth=orthanc.auth, timeout=30).json():
        info = requests.get(f"{orthanc.url}/patients/{pid}/statistics", auth=orthanc.auth, timeout=30).json()
        tags = requests.get(f"{orthanc.url}/patients/{pid}", auth=orthanc.auth, timeout=30).json()["MainDicomTags"]
        out[tags["PatientID"]] = int(info["CountInstances"])
    return out


def test_collisions_are_held_the_same_person_merges_and_a_decision_releases_exactly_its_files(
        tmp_path, orthanc_env, capsys):
    config, cases = _site(tmp_path, orthanc_env)
    instance = DagsterInstance.ephemeral()
    results = _index_then_upload(config, instance)

    # No Orthanc patient holds two people; the held files say why, with the kind of collision.
    assert people_mixed_in_orthanc(orthanc_env) == {}
    status = _statuses(config)
    held = {key: reason for key, (st, reason) in status.items() if st == "held"}
    archive_held = {path for nas, path in held if nas == "archive_nas"}
    assert archive_held == cases.held
    assert {path for nas, path in held if nas == "ct_nas"} == set(cases.ct_held) and cases.ct_held
    assert all(held[("archive_nas", p)].startswith(WITHIN_NAS) for p in cases.files["reused_id"])
    assert all(held[("archive_nas", p)].startswith(ACROSS_NAS) for p in cases.files["other_person"])
    # The same person on two NAS devices: one Orthanc patient, quietly; the variant is sent too (listed only).
    same_id = cases.patient_ids["same_person"]
    assert all(status[("archive_nas", p)][0] == "imported" for p in cases.files["same_person"] + cases.files["variant"])
    patients = _orthanc_patients(orthanc_env)
    assert REUSED_ID not in patients and cases.patient_ids["other_person"] not in patients
    assert patients[same_id] > len(cases.files["same_person"])  # the archive's files joined ct_nas's patient
    # Checks and metadata: an ERROR for different people, a WARN for the variant, held files counted.
    checks = check_results(results["archive_nas"])
    assert checks["no_held_files"] is False
    severity = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.severity
                for e in results["archive_nas/index"].all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    index_checks = check_results(results["archive_nas/index"])
    assert index_checks["one_person_per_patient_id"] is False and severity["one_person_per_patient_id"].value == "ERROR"
    assert index_checks["no_patient_name_variants"] is False and severity["no_patient_name_variants"].value == "WARN"
    metadata = {k: v for e in results["archive_nas"].get_asset_materialization_events()
                for k, v in e.materialization.metadata.items()}
    assert metadata["files_held"].value == len(cases.held)
    # Held files, collisions and checks are counts and kinds in Dagster's logs and metadata: no name, no ID.
    logged = "\n".join(event_log_text(instance, r.run_id) for r in results.values())
    assert "held" in logged and not [t for t in ("Weber", "Fischer", "Hoffmann", REUSED_ID) if t in logged]

    # `pacs identity` shows the evidence; `pacs search` never lists a study under another person.
    code, out = _pacs(capsys, config, "identity", "--json")
    assert code == 0
    found = json.loads(out)["collisions"]
    kinds = sorted((c["kind"], c["verdict"]) for c in found)
    assert kinds == sorted([(ACROSS_NAS, "different"), (ACROSS_NAS, "variant"), (WITHIN_NAS, "different")])
    across = next(c for c in found if c["kind"] == ACROSS_NAS and c["verdict"] == "different")
    assert {r["name"] for r in across["records"]} >= {"Weber^Klaus"}
    assert across["files_held"] == len(cases.files["other_person"]) + len(cases.ct_held)
    code, out = _pacs(capsys, config, "search", "weber", "--json")
    (weber,) = json.loads(out)["patients"]
    assert weber["names"] == ["Weber^Klaus"] and weber["other_people_with_this_id"] == 1
    assert {loc["nas_id"] for s in weber["studies"] for loc in s["locations"]} == {"archive_nas"}
    code, out = _pacs(capsys, config, "search", cases.patient_ids["other_person"], "--json")
    people = json.loads(out)["patients"]
    assert len(people) == 2 and len({tuple(p["names"]) for p in people}) == 2
    study_sets = [{s["study_instance_uid"] for s in p["studies"]} for p in people]
    assert not study_sets[0] & study_sets[1]
    # The ID reused inside the archive: two people, each with only their own study, each marked.
    code, out = _pacs(capsys, config, "search", REUSED_ID, "--json")
    people = json.loads(out)["patients"]
    assert sorted(n for p in people for n in p["names"]) == ["Fischer^Paul", "Hoffmann^Lena"]
    assert all(p["other_people_with_this_id"] == 1 and len(p["studies"]) == 1 for p in people)
    assert people[0]["studies"][0]["study_instance_uid"] != people[1]["studies"][0]["study_instance_uid"]
    code, out = _pacs(capsys, config, "search", REUSED_ID)
    assert out.count("! ID COLLISION") == 2
    # The variant: one person (the two spellings together), marked as such, no collision.
    code, out = _pacs(capsys, config, "search", cases.patient_ids["variant"], "--json")
    (variant,) = json.loads(out)["patients"]
    assert variant["name_variants"] and variant["other_people_with_this_id"] == 0 and len(variant["names"]) == 2

    # A decision: different people. The next catch-up sends exactly the held files of that collision.
    before = _ledger_rows(config)
    code, out = _pacs(capsys, config, "identity", "decide", across["id"], "--different", "--by", "Dr. Weber",
                      "--why", "different birth dates and sexes; checked in the RIS")
    assert code == 0, out
    for nas_id in NAS_IDS:
        _catch_up(config, nas_id)
    assert _ledger_rows(config) - before == len(cases.files["other_person"]) + len(cases.ct_held)
    status = _statuses(config)
    assert {path for (nas, path), (st, _) in status.items() if st == "held"} == set(cases.files["reused_id"])
    assert people_mixed_in_orthanc(orthanc_env) == {}
    patients = _orthanc_patients(orthanc_env)
    shared = cases.patient_ids["other_person"]
    assert patients[shared] == len(cases.ct_held)  # the first record keeps the ID
    assert patients[f"{shared}~archive_nas"] == len(cases.files["other_person"])
    # What was sent under the new ID says where it came from (never written to the NAS).
    oid = requests.post(f"{orthanc_env.url}/tools/lookup", auth=orthanc_env.auth, timeout=30,
                        data=f"{shared}~archive_nas").json()[0]["ID"]
    instance = requests.get(f"{orthanc_env.url}/patients/{oid}/instances", auth=orthanc_env.auth, timeout=30).json()[0]
    tags = requests.get(f"{orthanc_env.url}/instances/{instance['ID']}/simplified-tags", auth=orthanc_env.auth,
                        timeout=30).json()
    assert tags["IssuerOfPatientID"] == "archive_nas"
    assert tags["OtherPatientIDsSequence"][0]["PatientID"] == shared

    # A rerun sends nothing; so does a rebuild of the lost index, and the decision still holds.
    rows = _ledger_rows(config)
    for nas_id in NAS_IDS:
        _catch_up(config, nas_id)
        assert materialize_nas(config, nas_id).success
    assert _ledger_rows(config) == rows
    (config.parent / "index.duckdb").unlink()
    for nas_id in NAS_IDS:
        assert materialize_nas(config, nas_id).success
    assert _ledger_rows(config) == 0  # after the rebuild every file was found in Orthanc, none re-sent
    status = _statuses(config)
    assert {path for (nas, path), (st, _) in status.items() if st == "held"} == set(cases.files["reused_id"])
    assert _orthanc_patients(orthanc_env) == patients
    assert people_mixed_in_orthanc(orthanc_env) == {}


def test_an_id_domain_keeps_two_vendors_numbering_apart(tmp_path, orthanc_env):
    config, cases = _site(tmp_path, orthanc_env, id_domain={"issuer": "ARCHIVE_VENDOR", "prefix": "AR-"})
    _index_then_upload(config)
    assert people_mixed_in_orthanc(orthanc_env) == {}
    status = _statuses(config)
    held = {(nas, path) for (nas, path), (st, _) in status.items() if st == "held"}
    assert held == {("archive_nas", p) for p in cases.files["reused_id"]}  # its own reuse still collides
    patients = _orthanc_patients(orthanc_env)
    assert patients[f"AR-{cases.patient_ids['other_person']}"] == len(cases.files["other_person"])
    assert patients[f"AR-{cases.patient_ids['same_person']}"] == len(cases.files["same_person"])
    assert f"AR-{REUSED_ID}" not in patients


def test_the_guard_sees_what_orthanc_already_holds(tmp_path, orthanc_env):
    """Another machine's NAS (or a modality) sent a different person under an ID first: ours is held."""
    config, cases = _site(tmp_path, orthanc_env)
    raw = yaml.safe_load(config.read_text())
    raw["nas"] = raw["nas"][:1]  # this machine indexes ct_nas only
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    archive = tmp_path / "site" / "archive_nas"
    for rel in cases.files["other_person"]:  # as if another machine had uploaded them
        requests.post(f"{orthanc_env.url}/instances", data=(archive / rel).read_bytes(), auth=orthanc_env.auth,
                      timeout=30).raise_for_status()
    assert materialize_nas(config, "ct_nas").success
    held = {path: reason for (nas, path), (st, reason) in _statuses(config).items() if st == "held"}
    assert set(held) == set(cases.ct_held)
    assert all(r.startswith("orthanc_holds_other_person") for r in held.values())
    assert people_mixed_in_orthanc(orthanc_env) == {}


def test_separate_splits_a_patient_orthanc_already_merged(tmp_path, orthanc_env, capsys):
    """Before this version (or by a modality) two people were merged under one PatientID: `pacs identity
    separate` gives each their own Orthanc patient, instance counts unchanged, and the ledger follows."""
    config, cases = _site(tmp_path, orthanc_env)
    raw = yaml.safe_load(config.read_text())
    raw["nas"] = raw["nas"][:1]
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert materialize_nas(config, "ct_nas").success  # ct_nas's patient is in Orthanc...
    archive = tmp_path / "site" / "archive_nas"
    for rel in cases.files["other_person"]:  # ...then someone else arrives under the same ID, unguarded
        requests.post(f"{orthanc_env.url}/instances", data=(archive / rel).read_bytes(), auth=orthanc_env.auth,
                      timeout=30).raise_for_status()
    shared = cases.patient_ids["other_person"]
    assert people_mixed_in_orthanc(orthanc_env)
    count = requests.get(f"{orthanc_env.url}/statistics", auth=orthanc_env.auth, timeout=30).json()["CountInstances"]

    code, out = _pacs(capsys, config, "identity", "separate", shared, "--by", "PACS admin", "--why", "two people",
                      "--dry-run")
    assert code == 0 and "would move" in out and people_mixed_in_orthanc(orthanc_env)
    code, out = _pacs(capsys, config, "identity", "separate", shared, "--by", "PACS admin", "--why", "two people")
    assert code == 0, out

    assert people_mixed_in_orthanc(orthanc_env) == {}
    assert requests.get(f"{orthanc_env.url}/statistics", auth=orthanc_env.auth,
                        timeout=30).json()["CountInstances"] == count
    patients = _orthanc_patients(orthanc_env)
    assert patients[shared] == len(cases.ct_held) and patients[f"{shared}~2"] == len(cases.files["other_person"])
    # The check that every file the ledger calls imported is in Orthanc still passes.
    assert check_results(materialize_nas(config, "ct_nas"))["indexed_instances_in_orthanc"] is True
    code, out = _pacs(capsys, config, "identity", "decisions")
    assert code == 0 and "PACS admin" in out


def test_the_release_sensor_asks_one_catch_up_per_nas_a_decision_released(tmp_path):
    from dagster import build_sensor_context

    from pacs_assets.identity.decisions import append_decision

    config = make_sample_site(tmp_path / "site", orthanc_url="http://127.0.0.1:1", firebird=False)
    defs = build_definitions(load_config(config))
    sensor = defs.resolve_sensor_def("identity_release_sensor")
    instance = DagsterInstance.ephemeral()
    first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    assert not first.run_requests and first.skip_message
    path = config.parent / "identity_decisions.jsonl"
    append_decision(path, verdict="different", send_as={"a": "1", "b": "1~archive_nas"}, by="op", why="RIS",
                    released={"archive_nas": ["2026-11-23"], "ct_nas": ["2026-11-24"], "gone_nas": ["2026-11-24"]})
    append_decision(path, verdict="same", send_as={"c": "2", "d": "2"}, by="op", why="same person", released={})
    tick = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    assert sorted((r.job_name, tuple(k.path for k in r.asset_selection)) for r in tick.run_requests) == [
        ("archive_nas_reconciliation_job", (["archive_nas", "reconciliation_catch_up"],)),
        ("ct_nas_reconciliation_job", (["ct_nas", "reconciliation_catch_up"],))]
    assert tick.cursor == "2"
    again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor, definitions=defs))
    assert not again.run_requests


def test_a_study_uid_carrying_two_people_holds_only_that_study(tmp_path, orthanc_env):
    import pydicom

    from pacs_assets_tests.harness import NAS, SAMPLE_START, write_config

    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    root = tmp_path / "nas"
    first = next(p for p in manifest.paths("ok") if (root / p).read_bytes()[128:132] == b"DICM")
    ds = pydicom.dcmread(root / first)
    (root / "MISFILED").mkdir()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "OTHER-9", "Roe^Richard", "19400101", "M"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # the same study and series UIDs, another person
    ds.save_as(root / "MISFILED" / "IM1.dcm")
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct").success
    status = _statuses(config)
    held = {path: reason for (nas, path), (st, reason) in status.items() if st == "held"}
    study = pydicom.dcmread(root / first, stop_before_pixels=True).StudyInstanceUID
    same_study = {p for p in manifest.paths("ok")
                  if pydicom.dcmread(root / p, stop_before_pixels=True, force=True).get("StudyInstanceUID") == study}
    assert set(held) == same_study | {"MISFILED/IM1.dcm"}
    assert {r.split(":")[0] for r in held.values()} <= {"study_uid_under_two_patients", "series_uid_under_two_patients"}
    assert sum(1 for (_, st, _r) in [(k, *v) for k, v in status.items()] if st == "imported") > 10  # the rest flows
    assert people_mixed_in_orthanc(orthanc_env) == {}


def test_the_guard_sees_what_orthanc_holds_when_its_find_answers_are_cut(tmp_path, monkeypatch):
    """Orthanc already holds two studies of ct_nas's own people, then another person under a ct_nas ID; its
    LimitFindResults would let one /tools/find of all the IDs list only the first two studies. The guard asks
    per patient, so the other person is seen and ct_nas's files of that ID are held."""
    import pydicom

    # LimitFindResults 1 cuts /tools/find answers short, C-FIND's and REST's alike.
    with OrthancServer(tmp_path / "orthanc", settings={"LimitFindResults": 1}).throwaway() as orthanc:
        monkeypatch.setenv("ORTHANC_USERNAME", orthanc.username)
        monkeypatch.setenv("ORTHANC_PASSWORD", orthanc.password)
        config, cases = _site(tmp_path, orthanc)
        raw = yaml.safe_load(config.read_text())
        raw["nas"] = raw["nas"][:1]  # ct_nas only
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        site = tmp_path / "site"
        shared = cases.patient_ids["other_person"]
        first_of_study = {}
        for path in sorted((site / "ct_nas").rglob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, pydicom.errors.InvalidDicomError):  # the sample's broken files
                continue
            if ds.get("PatientID") not in (None, "", shared):
                first_of_study.setdefault(ds.StudyInstanceUID, path)
        earlier = list(first_of_study.values())[:2] + [site / "archive_nas" / r for r in cases.files["other_person"]]
        for path in earlier:  # in this order: Orthanc lists by arrival
            requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), auth=orthanc.auth,
                          timeout=30).raise_for_status()
        assert materialize_nas(config, "ct_nas").success
        held = {path for (nas, path), (st, _) in _statuses(config).items() if st == "held"}
        assert held == set(cases.ct_held)
        assert people_mixed_in_orthanc(orthanc) == {}
