"""An index lost or rebuilt: the rerun asks Orthanc in bulk which instances it holds and records those files
without sending them again (each re-sent file would cost Orthanc a full write and delete)."""

from __future__ import annotations

import requests

from pacs_assets.pipeline.already_stored import FOUND
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import NAS, SAMPLE_START, materialize_nas, write_config


def _orthanc_changes(orthanc) -> int:
    return requests.get(f"{orthanc.url}/changes", params={"limit": 1}, auth=orthanc.auth, timeout=10).json()["Last"]


def test_a_rebuilt_index_records_what_orthanc_holds_without_sending_it(tmp_path, orthanc_env):
    import duckdb

    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct").success
    index = tmp_path / "index.duckdb"
    with duckdb.connect(str(index), read_only=True) as con:
        before = dict(con.execute("SELECT file_path, status FROM file_status").fetchall())
    in_orthanc = {p for p, s in before.items() if s in ("imported", "duplicate")}
    assert in_orthanc
    changes = _orthanc_changes(orthanc_env)

    for leftover in tmp_path.glob("index.duckdb*"):
        leftover.unlink()  # the index is lost
    assert materialize_nas(config, "ct").success

    assert _orthanc_changes(orthanc_env) == changes  # Orthanc received nothing: no POST reached it
    with duckdb.connect(str(index), read_only=True) as con:
        after = dict(con.execute("SELECT file_path, status FROM file_status").fetchall())
        sent = con.execute("SELECT count(*) FROM import_history WHERE attempts > 0").fetchall()[0][0]
        found = dict(con.execute("SELECT status, count(*) FROM import_history WHERE error_message = ? GROUP BY ALL",
                                 [FOUND]).fetchall())
    assert {p for p, s in after.items() if s in ("imported", "duplicate")} == in_orthanc
    assert sent == 0 and sum(found.values()) == len(in_orthanc)
    # What was pending or failed before is what is left (nothing the NAS holds is dropped).
    assert {p: s for p, s in after.items() if p not in in_orthanc} == {p: s for p, s in before.items()
                                                                        if p not in in_orthanc}
    assert len(after) == len(before) and manifest.root.is_dir()
