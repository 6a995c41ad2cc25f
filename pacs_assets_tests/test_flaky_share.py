"""A slow, flaky share (a FUSE pass-through with latency and injected EIO/ESTALE, services/flaky_fs.py): a
listing or stat that fails now and then is retried and changes nothing; one that keeps failing keeps the
folder's rows as they were, the run says so (folders_not_read) and its check fails; nothing is deleted."""

from __future__ import annotations

import datetime as dt

import duckdb
from dagster import AssetKey

from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.harness import check_results, materialize_nas, write_config
from pacs_assets_tests.services.flaky_fs import FlakyShare, fault

DAY = dt.date.today() - dt.timedelta(days=2)


def _state(index) -> tuple[dict, int]:
    with duckdb.connect(str(index), read_only=True) as con:
        rows = dict(con.execute("SELECT file_path, status FROM file_status").fetchall())
        return rows, con.execute("SELECT count(*) FROM deleted_files").fetchall()[0][0]


def _inventory_metadata(result) -> dict:
    (mat,) = [e.event_specific_data.materialization for e in result.all_events
              if e.event_type_value == "ASSET_MATERIALIZATION"
              and e.event_specific_data.materialization.asset_key.path[-1] == "file_inventory"][:1]
    return {k: v.value for k, v in mat.metadata.items()}


def test_transient_errors_are_retried_and_lasting_ones_keep_the_rows(tmp_path, orthanc_env):
    src = tmp_path / "share"
    make_bulk_dicom_nas(src, 30, files_per_series=10, start_date=DAY, days=1)
    series = sorted(str(p.relative_to(src)) for p in src.glob("*/*/S001"))
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*.dcm"))
    with FlakyShare(src, tmp_path / "fuse", latency=0.0005) as share:
        config = write_config(tmp_path / "pacs.yaml", [{"id": "smb", "kind": "dicom_folder",
                                                        "root": str(share.mountpoint),
                                                        "partitions_start": (DAY - dt.timedelta(days=5)).isoformat()}],
                              orthanc_url=orthanc_env.url)
        # Now and then: a listing, a stat and a read fail twice each, then work (within the walk's retries).
        share.set(fault("readdir", f"/{series[0]}", "EIO", 2), fault("getattr", f"/{files[5]}", "ESTALE", 2),
                  fault("open", f"/{files[12]}", "EAGAIN", 2), fault("readdir", "/", "EIO", 1))
        first = materialize_nas(config, "smb")
        assert first.success and all(check_results(first).values()), check_results(first)
        assert _inventory_metadata(first)["folders_not_read"] == 0
        rows, deleted = _state(tmp_path / "index.duckdb")
        assert set(rows) == set(files) and set(rows.values()) == {"imported"} and deleted == 0

        # A folder that keeps failing, and a file whose stat keeps failing: their rows stay as they were.
        share.set(fault("readdir", f"/{series[1]}", "EIO"), fault("getattr", f"/{files[25]}", "ESTALE"))
        second = materialize_nas(config, "smb", raise_on_error=False)
        assert check_results(second)["every_folder_read"] is False
        assert _inventory_metadata(second)["folders_not_read"] == 2
        assert _state(tmp_path / "index.duckdb") == (rows, 0)  # nothing deleted, nothing changed

        # A new file whose read keeps failing is failed for now, and read again once the share gives it.
        make_bulk_dicom_nas(src / "NEW", 1, seed=3, start_date=DAY)
        (new,) = [str(p.relative_to(src)) for p in (src / "NEW").rglob("*.dcm")]
        share.set(fault("open", f"/{new}", "EIO"))
        materialize_nas(config, "smb", raise_on_error=False)
        assert _state(tmp_path / "index.duckdb")[0][new] == "failed"
        share.set()
        third = materialize_nas(config, "smb")
        assert third.success and all(check_results(third).values()), check_results(third)
        assert _state(tmp_path / "index.duckdb") == ({**rows, new: "imported"}, 0)

        # Indexed, then the share fails every read of it during the upload: failed (the file's fault, not
        # Orthanc's), and sent by the next run.
        make_bulk_dicom_nas(src / "LATER", 1, seed=4, start_date=DAY)
        (later,) = [str(p.relative_to(src)) for p in (src / "LATER").rglob("*.dcm")]
        assert materialize_nas(config, "smb", asset_selection=[AssetKey(["smb", "file_inventory"]),
                                                               AssetKey(["smb", "dicom_index"])]).success
        share.set(fault("read", f"/{later}", "EIO"))
        materialize_nas(config, "smb", asset_selection=[AssetKey(["smb", "orthanc_instances"])], raise_on_error=False)
        with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
            assert con.execute("SELECT status, reason FROM file_status WHERE file_path = ?", [later]).fetchall() == [
                ("failed", "cannot read the file for upload: Input/output error")]
        share.set()
        assert materialize_nas(config, "smb").success
        assert _state(tmp_path / "index.duckdb")[0][later] == "imported"
