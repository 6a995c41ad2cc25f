"""`pacs search` on a real index: two sample NAS devices materialized against a real Orthanc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pacs_assets.cli.main import main
from pacs_assets_tests.harness import running_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running_site(tmp_path_factory.mktemp("search")) as (site, _orthanc):
        yield site


def pacs(site, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(site.config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def search_json(site, capsys, *args: str) -> dict:
    code, out, err = pacs(site, capsys, "search", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def ids(doc: dict) -> set[str]:
    return {p["patient_id"] for p in doc["patients"]}


@pytest.mark.parametrize(("words", "expected"), [
    (["jurgen", "muller"], {"S0-00001", "S1-00001"}),  # Latin-1 (ISO_IR 100), reordered, no accents
    (["MÜLLER"], {"S0-00001", "S1-00001"}),
    (["mull"], {"S0-00001", "S1-00001"}),
    (["Mueller"], {"S0-00001", "S1-00001"}),  # German spelling without umlauts
    (["ελενη"], {"S0-00002", "S1-00002"}),  # UTF-8 (ISO_IR 192), no accents
    (["Παπαδοπούλου"], {"S0-00002", "S1-00002"}),
    (["山田"], {"S0-00003", "S1-00003"}),  # ISO 2022 IR 87: the ideographic group
    (["tarou", "yamada"], {"S0-00003", "S1-00003"}),
    (["やまだ", "たろう"], {"S0-00003", "S1-00003"}),  # the phonetic group
    (["schmidt"], set()),
    (["jane", "muller"], set()),  # every word must match the same patient
    (["papadopoulou"], set()),  # the folder says so, the name does not
])
def test_names_found_partially_without_accents_in_any_order(site, capsys, words, expected):
    doc = search_json(site, capsys, *words)
    assert ids(doc) == expected
    assert doc["patients_found"] == doc["patients_shown"] == len(expected)


def test_text_output_shows_the_patient_the_folder_and_orthanc(site, capsys):
    code, out, err = pacs(site, capsys, "search", "jürgen")
    assert code == 0, err
    assert "Müller^Jürgen   ID S0-00001" in out and "ID S1-00001" in out
    folder = site.manifests["ct"].root / next(p for p in site.manifests["ct"].expected if p.startswith("Müller"))
    study_folder = folder.parent.parent
    assert f"ct: {study_folder}  [DICOM]  7 files, in Orthanc 7/7" in out
    assert out.rstrip().endswith("2 patients found.")


def test_locations_are_real_folders_with_the_file_status_counts(site, capsys):
    doc = search_json(site, capsys, "--patient-id", "S")
    assert doc["patients_found"] == 13
    status = dict(((nas, uid), (files, ok)) for nas, uid, files, ok in site.query("""
        SELECT i.nas_id, i.study_instance_uid, count(*), count(*) FILTER (WHERE s.status IN ('imported', 'duplicate'))
        FROM instances i JOIN file_status s USING (nas_id, file_path) GROUP BY ALL"""))
    locations = [(s, loc) for p in doc["patients"] for s in p["studies"] for loc in s["locations"]]
    assert len(locations) == site.query("SELECT count(*) FROM studies")[0][0]
    for study, loc in locations:
        path = Path(loc["path"])
        assert path.is_dir() and path.is_relative_to(site.config.parent / f"nas_{loc['nas_id']}")
        assert (loc["files"], loc["files_in_orthanc"]) == status[(loc["nas_id"], study["study_instance_uid"])]
        assert loc["file_formats"]


def test_patient_id_modality_and_dates_filter(site, capsys):
    assert ids(search_json(site, capsys, "--patient-id", "S0-00001")) == {"S0-00001"}
    assert ids(search_json(site, capsys, "--patient-id", "s1-0000")) == {f"S1-0000{i}" for i in range(1, 6)}
    doc = search_json(site, capsys, "doe", "--modality", "MR")
    studies = [s for p in doc["patients"] for s in p["studies"]]
    assert studies and all(s["modalities"] == ["MR"] for s in studies)
    day = min(site.manifests["ct"].procedure_dates)
    doc = search_json(site, capsys, "--patient-id", "S", "--from", day.isoformat(), "--to", day.isoformat())
    studies = [s for p in doc["patients"] for s in p["studies"]]
    assert studies and all(s["date"] == day.isoformat() for s in studies)
    assert len(studies) == site.query("SELECT count(DISTINCT study_instance_uid) FROM studies WHERE partition_date = ?",
                                      [day])[0][0]


def test_limit_says_how_many_more(site, capsys):
    code, out, _ = pacs(site, capsys, "search", "--patient-id", "S", "--limit", "2")
    assert code == 0 and out.rstrip().endswith("Showing 2 of 13 patients: narrow the search or raise --limit.")
    code, out, _ = pacs(site, capsys, "search", "nobody")
    assert code == 0 and out.strip() == "No patient found."


def test_bad_input_is_one_sentence(site, capsys):
    code, _, err = pacs(site, capsys, "search")
    assert code == 2
    assert err.strip() == "pacs search: give a name, --patient-id, --modality or a date range (--from/--to)."
    with pytest.raises(SystemExit):
        main(["--config", str(site.config), "search", "x", "--from", "2024-13-01"])
    assert "'2024-13-01' is not a date: use YYYY-MM-DD" in capsys.readouterr().err


def test_the_command_runs_as_a_process_and_its_json_parses(site):
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "search", "müller", "--json"],
                          capture_output=True, text=True, env={**os.environ, "PACS_CONFIG": str(site.config)})
    assert proc.returncode == 0, proc.stderr
    assert ids(json.loads(proc.stdout)) == {"S0-00001", "S1-00001"}


def test_a_missing_index_is_one_sentence(tmp_path, capsys):
    config = tmp_path / "pacs.yaml"
    config.write_text(f"nas: [{{id: ct, kind: dicom_folder, root: nas}}]\n"
                      f"index: {{path: {tmp_path / 'none.duckdb'}}}\n")
    assert main(["--config", str(config), "search", "x"]) == 1
    assert "does not exist yet: materialize a NAS's assets first." in capsys.readouterr().err
