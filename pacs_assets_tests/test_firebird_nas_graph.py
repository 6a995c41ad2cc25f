"""A Firebird + JPEG 2000 NAS through the same asset graph: catalog -> index -> Orthanc, lossless, rendered."""

from __future__ import annotations

import duckdb
import requests

from pacs_assets.sample.firebird_nas import make_firebird_nas
from pacs_assets_tests.harness import (
    NAS,
    SAMPLE_START,
    check_results,
    materialize_nas,
    tree_fingerprint,
    write_config,
)


def test_firebird_nas_is_imported_losslessly_rendered_and_not_twice(tmp_path, orthanc_env, monkeypatch):
    monkeypatch.setenv("FIREBIRD_PASSWORD", "sample-only")
    manifest = make_firebird_nas(tmp_path / "nas", nas_id="endo", start_date=SAMPLE_START, password="sample-only")
    before = tree_fingerprint(manifest.root)
    config = write_config(tmp_path / "pacs.yaml", [{
        "id": "endo", "kind": "firebird_jpeg2000", "root": "nas", "partitions_start": NAS[0]["partitions_start"],
        "firebird": {"database": manifest.catalog, "password_env": "FIREBIRD_PASSWORD"},
        "lossless_check_sample": 0}], orthanc_url=orthanc_env.url)

    result = materialize_nas(config, "endo")

    assert result.success
    checks = check_results(result)
    assert checks == {"every_folder_read": True, "every_file_accounted_for": True, "no_sop_instance_conflicts": True,
                      "no_uid_conflicts": True, "indexed_instances_in_orthanc": True, "one_person_per_patient_id": True,
                      "no_patient_name_variants": True, "no_held_files": True, "lossless_in_orthanc": True}
    index = tmp_path / "index.duckdb"
    with duckdb.connect(str(index), read_only=True) as con:
        rows = con.execute("SELECT s.file_path, s.status, s.reason, s.orthanc_instance_id, f.compression_type "
                           "FROM file_status s JOIN inventory f USING (nas_id, file_path)").fetchall()
    in_orthanc = {r[0] for r in rows if r[1] in ("imported", "duplicate")}
    assert in_orthanc == {p for p, s in manifest.expected.items() if s == "ok"}
    assert all(r[2] for r in rows if r[1] in ("failed", "skipped"))
    lossy = {r[0] for r in rows if r[4] and "lossy" in r[4].lower()}
    assert lossy == manifest.lossy
    session = requests.Session()
    session.auth = orthanc_env.auth
    for path, status, _, orthanc_id, _ in rows:
        if status in ("imported", "duplicate"):
            preview = session.get(f"{orthanc_env.url}/instances/{orthanc_id}/preview", timeout=30)
            assert preview.status_code == 200 and preview.content[:4] == b"\x89PNG", path
    evaluation = next(e.asset_check_evaluation_data for e in result.all_events
                      if e.event_type_value == "ASSET_CHECK_EVALUATION"
                      and e.asset_check_evaluation_data.check_name == "lossless_in_orthanc")
    assert evaluation.metadata["compared"].value == len(in_orthanc - manifest.lossy)

    with duckdb.connect(str(index), read_only=True) as con:
        attempts = con.execute("SELECT count(*) FROM import_history").fetchall()
    assert materialize_nas(config, "endo").success
    with duckdb.connect(str(index), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM import_history").fetchall() == attempts
    assert tree_fingerprint(manifest.root) == before
