"""`pacs sample`: the demo's four NAS devices, and all of them import into a real Orthanc (but for the files
the identity guard holds: archive_nas shares patient IDs with ct_nas, sample/identity_cases.py)."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import yaml

from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
from pacs_assets_tests.harness import materialize_nas


def test_sample_site_has_four_nas_graphs_that_all_import(tmp_path, orthanc_env, monkeypatch):
    monkeypatch.delenv("FIREBIRD_PASSWORD", raising=False)
    out = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "sample", "--out", str(out),
                           "--orthanc-url", orthanc_env.url, "--patients", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config_path = out / "pacs.yaml"
    password = (out / "firebird.env").read_text().strip().split("=", 1)[1]
    monkeypatch.setenv("FIREBIRD_PASSWORD", password)
    assert oct((out / "firebird.env").stat().st_mode & 0o777) == "0o600"
    raw = yaml.safe_load(config_path.read_text())
    raw["orthanc"]["run_retries"] = 0
    config_path.write_text(yaml.safe_dump(raw))

    defs = build_definitions(load_config(config_path))
    groups = {node.group_name for node in defs.resolve_asset_graph().asset_nodes}
    assert groups == {"ct_nas", "endo_nas", "derm_nas", "archive_nas", "orthanc", "ct_nas_reconciliation",
                      "endo_nas_reconciliation", "derm_nas_reconciliation", "archive_nas_reconciliation"}

    for nas_id in ("ct_nas", "endo_nas", "derm_nas", "archive_nas"):
        assert materialize_nas(config_path, nas_id).success, nas_id
    with duckdb.connect(str(out / "index.duckdb"), read_only=True) as con:
        by_nas = dict(con.execute("SELECT nas_id, count(*) FROM file_status WHERE status IN ('imported', 'duplicate') "
                                  "GROUP BY nas_id").fetchall())
        pending = con.execute("SELECT count(*) FROM file_status WHERE status = 'pending'").fetchall()[0][0]
        held = dict(con.execute(
            "SELECT nas_id, count(*) FROM file_status WHERE status = 'held' GROUP BY ALL").fetchall())
    assert set(by_nas) == {"ct_nas", "endo_nas", "derm_nas", "archive_nas"}
    assert all(n > 5 for nas, n in by_nas.items() if nas != "archive_nas")
    assert pending == 0
    assert set(held) == {"archive_nas"}  # ct_nas went first: its patient was in Orthanc before the archive came
