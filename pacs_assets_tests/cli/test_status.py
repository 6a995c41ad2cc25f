"""`pacs status`: the index's counts per NAS equal file_status; Orthanc's own counts, or one line if it is down."""

from __future__ import annotations

import json

import requests

from pacs_assets.cli.main import main
from pacs_assets_tests.harness import build_site, materialize_nas
from pacs_assets_tests.services.process import free_port


def status_json(config, capsys, *args: str) -> dict:
    code = main(["--config", str(config), "status", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_counts_equal_file_status_and_orthanc_statistics(tmp_path, orthanc_env, capsys):
    site = build_site(tmp_path, orthanc_env.url, dicom_port=orthanc_env.dicom_port)

    doc = status_json(site.config, capsys)

    rows = {r["nas_id"]: r for r in doc["nas"]}
    assert list(rows) == ["ct", "mr"]
    for nas, status, n in site.query("SELECT nas_id, status, count(*) FROM file_status GROUP BY ALL"):
        assert rows[nas][status] == n, (nas, status)
    for nas, row in rows.items():
        assert row["found"] == site.query("SELECT count(*) FROM inventory WHERE nas_id = ?", [nas])[0][0]
        assert row["indexed"] == site.query("SELECT count(*) FROM instances WHERE nas_id = ?", [nas])[0][0]
        assert row["found"] == sum(row[s] for s in ("imported", "duplicate", "uid_conflict", "failed", "held",
                                                    "skipped", "pending"))
        assert row["pending"] == 0 and row["eta_seconds"] is None
        assert row["rate_per_minute"] > 0  # the imports just finished
    stats = requests.get(f"{orthanc_env.url}/statistics", auth=orthanc_env.auth, timeout=10).json()
    assert doc["orthanc"]["instances"] == stats["CountInstances"] == sum(r["imported"] for r in rows.values())
    assert doc["orthanc"]["version"] == "1.10.1"

    assert [r["nas_id"] for r in status_json(site.config, capsys, "--nas", "mr")["nas"]] == ["mr"]
    assert main(["--config", str(site.config), "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    columns = ["found", "indexed", "imported", "duplicate", "uid_conflict", "failed", "held", "skipped", "pending"]
    assert out[1].split() == ["NAS", *columns, "rate/min", "ETA"]
    ct = rows["ct"]
    assert out[2].split()[:10] == ["ct"] + [str(ct[c]) for c in columns]
    assert out[-1].startswith(f"Orthanc 1.10.1 at {orthanc_env.url}: ")
    assert f"{stats['CountInstances']} instances" in out[-1]


def test_orthanc_down_is_one_line_and_pending_files_have_no_eta(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORTHANC_USERNAME", "pacs")
    monkeypatch.setenv("ORTHANC_PASSWORD", "irrelevant")
    url = f"http://127.0.0.1:{free_port()}"
    site = build_site(tmp_path, url, nas=[("ct", 0, 4, 12)], materialize=False)
    assert not materialize_nas(site.config, "ct", raise_on_error=False).success  # indexed, import refused

    assert main(["--config", str(site.config), "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    pending = site.query("SELECT count(*) FROM file_status WHERE status = 'pending'")[0][0]
    assert pending > 0 and out[2].split()[9] == str(pending)
    assert out[2].endswith("-  no imports in the last 10 min")
    assert out[-1] == f"Orthanc at {url} is unreachable (connection refused or no route)."
    doc = status_json(site.config, capsys)
    assert doc["nas"][0]["pending"] == pending and doc["nas"][0]["rate_per_minute"] is None
    assert doc["orthanc"] == {"url": url, "error": out[-1]}

    # search says the same: nothing of it is in Orthanc yet
    assert main(["--config", str(site.config), "search", "--patient-id", "S0-00001"]) == 0
    assert ", in Orthanc 0/7" in capsys.readouterr().out


def test_unknown_nas_is_one_sentence(tmp_path, orthanc_env, capsys):
    site = build_site(tmp_path, orthanc_env.url, nas=[("ct", 0, 4, 12)])
    capsys.readouterr()  # the run's own log lines
    assert main(["--config", str(site.config), "status", "--nas", "xray"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pacs: No NAS with id 'xray' in {site.config} or in the index; known: ct.")
