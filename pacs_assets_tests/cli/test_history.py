"""`pacs history`: the import ledger of a real run, newest first, page by page, filtered."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from pacs_assets.cli.main import main
from pacs_assets_tests.harness import running_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running_site(tmp_path_factory.mktemp("history"), nas=[("ct", 0, 5, 12)]) as (site, _orthanc):
        yield site


def history(site, capsys, *args: str) -> dict:
    code = main(["--config", str(site.config), "history", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_pages_hold_every_attempt_once_newest_first(site, capsys):
    total = site.query("SELECT count(*) FROM import_history")[0][0]
    pages = math.ceil(total / 10)
    seen = []
    for page in range(1, pages + 1):
        doc = history(site, capsys, "--page", str(page), "--page-size", "10")
        assert (doc["total"], doc["page"], doc["pages"]) == (total, page, pages)
        seen += [a["attempt_id"] for a in doc["attempts"]]
    assert seen == sorted(seen, reverse=True)
    assert sorted(seen) == [r[0] for r in site.query("SELECT attempt_id FROM import_history ORDER BY 1")]

    assert main(["--config", str(site.config), "history", "--page", "2", "--page-size", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Import history: {total} attempts, newest first, times in UTC"
    assert out[-1] == f"page 2 of {pages}"
    assert len(out) == 1 + 1 + 10 + 1  # title, header, ten attempts, page line
    assert out[2].split()[0] == str(seen[10])

    assert main(["--config", str(site.config), "history", "--page", str(pages + 1), "--page-size", "10"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [f"(no attempts on page {pages + 1}: the last page is {pages})",
                                                       f"page {pages + 1} of {pages}"]


def test_filters(site, capsys):
    duplicates = history(site, capsys, "--status", "duplicate")
    copy = site.manifests["ct"].special["duplicate"]
    # The copy and its original are uploaded concurrently: whichever Orthanc stored second is the duplicate.
    assert duplicates["total"] == 1 and duplicates["attempts"][0]["file_path"] in {copy, copy.replace("_copy/", "/")}
    assert site.query("SELECT file_path FROM import_history WHERE status = 'duplicate'") == [
        (duplicates["attempts"][0]["file_path"],)]
    patient = history(site, capsys, "--patient-id", "S0-00002")
    assert patient["total"] == site.query("SELECT count(*) FROM import_history WHERE patient_id = 'S0-00002'")[0][0] > 0
    study = patient["attempts"][0]["study_instance_uid"]
    by_study = history(site, capsys, "--study", study)
    assert by_study["total"] > 0 and {a["study_instance_uid"] for a in by_study["attempts"]} == {study}
    today = dt.datetime.now(dt.timezone.utc).date()
    everything = site.query("SELECT count(*) FROM import_history")[0][0]
    assert history(site, capsys, "--from", today.isoformat(), "--to", today.isoformat())["total"] == everything
    assert history(site, capsys, "--to", (today - dt.timedelta(days=1)).isoformat())["total"] == 0
    assert history(site, capsys, "--nas", "mr")["total"] == 0


def test_bad_arguments(site, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(site.config), "history", "--status", "pending"])
    assert "invalid choice: 'pending'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(site.config), "history", "--page", "0"])
    assert "'0' must be a whole number from 1 to 10000" in capsys.readouterr().err
    assert main(["--config", str(site.config), "history", "--from", "2026-02-02", "--to", "2026-01-01"]) == 2
    assert capsys.readouterr().err.strip() == "pacs history: --from 2026-02-02 is after --to 2026-01-01."


def test_failed_and_skipped_list_what_the_walk_found_before_any_upload(site, capsys):
    manifest = site.manifests["ct"]
    failed = history(site, capsys, "--status", "failed")
    walk = {a["file_path"]: a for a in failed["attempts"] if a["stage"] == "walk"}
    assert manifest.special["truncated"] in walk and manifest.special["corrupt"] in walk
    assert set(walk) == {p for (p,) in site.query("SELECT file_path FROM inventory WHERE status = 'failed'")}
    ledger_failed = site.query("SELECT count(*) FROM import_history WHERE status = 'failed'")[0][0]
    assert failed["total"] == len(walk) + ledger_failed
    reasons = dict(site.query("SELECT file_path, reason FROM file_status WHERE status = 'failed'"))
    assert {p: a["error_message"] for p, a in walk.items()} == reasons and all(reasons.values())
    assert all(a["attempt_id"] is None and a["http_status"] is None for a in walk.values())

    skipped = history(site, capsys, "--status", "skipped", "--page-size", "100")
    assert {a["file_path"] for a in skipped["attempts"]} == set(manifest.paths("skipped"))
    assert {a["stage"] for a in skipped["attempts"]} == {"walk"}
    assert history(site, capsys, "--status", "skipped", "--nas", "mr")["total"] == 0

    # As radiology IT reads it: the attempt column says 'walk', the message is the walk's reason.
    assert main(["--config", str(site.config), "history", "--status", "failed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"Import history: {failed['total']} entries (status failed)")
    truncated = next(line for line in out if manifest.special["truncated"] in line)
    assert truncated.split()[0] == "walk" and reasons[manifest.special["truncated"]][:40] in truncated
    # Without a status, the ledger alone: what was uploaded, attempt by attempt.
    everything = history(site, capsys)
    assert {a["stage"] for a in everything["attempts"]} == {"upload"}
