"""UID conflicts: a different file reusing the UIDs of one Orthanc already holds ends ``uid_conflict`` (naming the
file Orthanc kept), a byte-identical copy ends ``duplicate``; the check, `pacs status` and `pacs history` say so.

The NAS is pydicom's shipped test corpus, which holds real groups of files with one SOP Instance UID and different
bytes (MR_small in eight encodings, rtdose, SC_rgb_rle, ...) and one byte-identical pair (SC_jpeg_no_color_transform_2
and SC_rgb_jpeg_app14_dcmd).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import duckdb
import pydicom
import pytest
import requests

from pacs_assets.cli.main import main
from pacs_assets.index.connection import session
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.pipeline.ledger_writer import NOT_FROM_A_NAS, LedgerWriter
from pacs_assets_tests.harness import (
    NAS,
    Site,
    check_results,
    materialize_nas,
    write_config,
)
from pacs_assets_tests.services.orthanc import OrthancServer

CORPUS = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
FOREIGN = "waveform_ecg.dcm"  # Orthanc gets another version of it first, straight over REST (as from a modality)


def kept(where: str) -> str:
    return f"same UIDs as another file, different bytes; Orthanc kept {where}"


def _altered(path: Path) -> bytes:
    """The same file with one attribute changed: same UIDs, other bytes."""
    ds = pydicom.dcmread(path)
    ds.InstitutionName = "Somewhere Else"
    out = path.with_suffix(".altered")
    ds.save_as(out)
    data = out.read_bytes()
    out.unlink()
    return data


@pytest.fixture(scope="module")
def corpus_site(tmp_path_factory):
    """NAS 'ct': the whole corpus plus a byte copy of CT_small.dcm; NAS 'ct2': an altered CT_small.dcm. Orthanc
    already holds an altered rtstruct.dcm. Both NAS materialized, 'ct' first."""
    work = tmp_path_factory.mktemp("uidc")
    shutil.copytree(CORPUS, work / "nas", symlinks=True)
    (work / "nas" / "copies").mkdir()
    shutil.copy2(CORPUS / "CT_small.dcm", work / "nas" / "copies" / "CT_small.dcm")
    (work / "nas2").mkdir()
    (work / "nas2" / "CT_small_altered.dcm").write_bytes(_altered(CORPUS / "CT_small.dcm"))
    with OrthancServer(work / "orthanc").throwaway() as orthanc, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHANC_USERNAME", orthanc.username)
        mp.setenv("ORTHANC_PASSWORD", orthanc.password)
        posted = requests.post(f"{orthanc.url}/instances", data=_altered(CORPUS / FOREIGN), auth=orthanc.auth,
                               headers={"Content-Type": "application/dicom"}, timeout=10)
        assert posted.json()["Status"] == "Success"
        config = write_config(work / "pacs.yaml", NAS + [{**NAS[0], "id": "ct2", "root": "nas2"}],
                              orthanc_url=orthanc.url)
        site = Site(config=config, index=work / "index.duckdb", manifests={})
        runs = {nas: materialize_nas(config, nas) for nas in ("ct", "ct2")}
        assert all(r.success for r in runs.values())
        yield site, runs, orthanc


def _check(result, name: str) -> dict:
    data = next(e.asset_check_evaluation_data for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.asset_check_evaluation_data.check_name == name)
    return {"passed": data.passed, "severity": data.severity.value,
            **{k: v.value for k, v in data.metadata.items()}}


def _cli(site: Site, capsys, *args: str) -> dict:
    assert main(["--config", str(site.config), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_orthanc_keeps_the_md5_of_the_uploaded_bytes_and_the_client_tells_copies_from_conflicts(orthanc):
    client = OrthancClient(orthanc.url, orthanc.username, orthanc.password, retries=0)
    data = (CORPUS / "MR_small.dcm").read_bytes()
    fresh = client.upload(data)
    assert fresh.status == "imported"
    assert client.stored_md5(fresh.orthanc_instance_id) == hashlib.md5(data).hexdigest()
    assert client.upload(data).status == "duplicate"
    other = client.upload((CORPUS / "MR_small_implicit.dcm").read_bytes())  # same UIDs, another encoding
    assert (other.status, other.orthanc_instance_id, other.retryable) == ("uid_conflict", fresh.orthanc_instance_id,
                                                                          False)


def test_same_uids_with_other_bytes_end_as_uid_conflict_naming_the_file_orthanc_kept(corpus_site, capsys):
    site, runs, _orthanc = corpus_site
    # Orthanc's own instance IDs (the ledger's), not the index's computed ones: Orthanc keeps the trailing space
    # of rtdose_rle's PatientID 'id11111 ', which pydicom strips, so it files them as another instance.
    rows = site.query("""SELECT s.file_path, s.status, s.reason, s.orthanc_instance_id, i.sop_instance_uid
                         FROM file_status s JOIN instances i USING (nas_id, file_path) WHERE s.nas_id = 'ct'""")
    status = {p: (st, reason) for p, st, reason, _, _ in rows}
    by_orthanc_id = defaultdict(list)
    for path, st, _, orthanc_id, _ in rows:
        if st not in ("failed", "held"):  # held: its patient identity collides (pacs identity), never sent
            by_orthanc_id[orthanc_id].append(path)
    md5 = {p: hashlib.md5((site.config.parent / "nas" / p).read_bytes()).hexdigest() for p, *_ in rows}
    for paths in by_orthanc_id.values():
        if FOREIGN in paths:
            continue
        imported = [p for p in paths if status[p][0] == "imported"]
        assert len(imported) == 1, paths  # Orthanc kept exactly one file of every group
        for p in set(paths) - set(imported):
            if md5[p] == md5[imported[0]]:
                assert status[p] == ("duplicate", None), p
            else:
                assert status[p] == ("uid_conflict", kept(f"NAS 'ct', {imported[0]}")), p
    mr = [p for p in status if p.startswith("MR_small")]
    assert len(mr) == 8 and sorted(status[p][0] for p in mr) == ["imported"] + ["uid_conflict"] * 7
    assert sorted(status[p][0] for p in ("SC_rgb_jpeg_app14_dcmd.dcm", "SC_jpeg_no_color_transform_2.dcm")) == [
        "duplicate", "imported"]  # shipped as a byte-identical pair
    assert sorted([status["CT_small.dcm"][0], status["copies/CT_small.dcm"][0]]) == ["duplicate", "imported"]
    assert status[FOREIGN] == ("uid_conflict", kept(NOT_FROM_A_NAS))
    assert site.query("SELECT status, reason FROM file_status WHERE nas_id = 'ct2'") == [
        ("uid_conflict", kept("NAS 'ct', CT_small.dcm"))]
    conflicts = [p for p, (st, _) in status.items() if st == "uid_conflict"]
    assert len(conflicts) >= 20

    # The check (a warning) counts groups of one SOP Instance UID with different bytes, per NAS and across.
    files_of_sop = defaultdict(list)
    for path, st, _, _, sop in rows:
        if st != "held":  # never sent, so the upload never hashed it
            files_of_sop[sop].append(path)
    mixed = [paths for paths in files_of_sop.values() if len({md5[p] for p in paths}) > 1]
    assert len(mixed) >= 10
    assert _check(runs["ct"], "no_uid_conflicts") == {  # ct ran first: nothing on ct2 yet
        "passed": False, "severity": "WARN", "uid_conflict_files": len(conflicts), "groups_within_nas": len(mixed),
        "files_in_groups_within_nas": sum(map(len, mixed)), "groups_across_nas": 0, "across_nas": "none"}
    ct2_check = _check(runs["ct2"], "no_uid_conflicts")
    counts = (ct2_check["uid_conflict_files"], ct2_check["groups_within_nas"], ct2_check["groups_across_nas"])
    assert counts == (1, 0, 1)
    assert "| ct | 1 |" in ct2_check["across_nas"] and ".dcm" not in str(ct2_check)  # counts, never paths
    # The cross-NAS check on dicom_index runs before ct2's upload hashes its bytes: only this one sees it now.
    assert check_results(runs["ct2"])["no_sop_instance_conflicts"] is True

    # pacs status and pacs history show them; the history names the kept file.
    nas_rows = {r["nas_id"]: r for r in _cli(site, capsys, "status")["nas"]}
    assert (nas_rows["ct"]["uid_conflict"], nas_rows["ct2"]["uid_conflict"]) == (len(conflicts), 1)
    assert nas_rows["ct"]["found"] == sum(nas_rows["ct"][s] for s in ("imported", "duplicate", "uid_conflict",
                                                                       "failed", "held", "skipped", "pending"))
    doc = _cli(site, capsys, "history", "--status", "uid_conflict", "--page-size", "100")
    assert doc["total"] == len(conflicts) + 1
    assert {(a["nas_id"], a["file_path"]): a["error_message"] for a in doc["attempts"]} == {
        **{("ct", p): status[p][1] for p in conflicts},
        ("ct2", "CT_small_altered.dcm"): kept("NAS 'ct', CT_small.dcm")}
    assert main(["--config", str(site.config), "history", "--status", "uid_conflict", "--nas", "ct2"]) == 0
    out = capsys.readouterr().out
    assert "CT_small_altered.dcm" in out and "Orthanc kept NAS 'ct', CT_small.dcm" in out and "retried" not in out


def test_rematerializing_uploads_no_uid_conflict_again(corpus_site):
    site, _runs, orthanc = corpus_site
    before = site.query("SELECT nas_id, file_path, status, attempt_id FROM import_history ORDER BY ALL")
    stats = requests.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=10).json()

    again = materialize_nas(site.config, "ct")

    assert again.success
    assert site.query("SELECT nas_id, file_path, status, attempt_id FROM import_history ORDER BY ALL") == before
    assert requests.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=10).json() == stats
    check = _check(again, "no_uid_conflicts")
    assert not check["passed"]
    assert check["uid_conflict_files"] == len([r for r in before if r[:3:2] == ("ct", "uid_conflict")])
    assert check["groups_across_nas"] == 1 and "| ct2 | 1 |" in check["across_nas"]
    assert check_results(again)["no_sop_instance_conflicts"] is False  # now both sides' bytes are known


def test_a_conflict_whose_kept_file_is_still_in_flight_waits_for_it(tmp_path):
    index = tmp_path / "index.duckdb"
    with session(index):
        pass  # the schema

    def row(path: str, status: str) -> dict:
        return {"nas_id": "ct", "file_path": path, "change_token": "t", "orthanc_instance_id": "o-1", "status": status,
                "error_message": None, "retryable": False, "partition_date": "2024-01-01"}

    namer = LedgerWriter(index)
    namer([row("b.dcm", "uid_conflict")])  # Orthanc answered B before our thread collected A's answer
    with duckdb.connect(str(index), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM import_history").fetchall() == [(0,)]
    namer([row("a.dcm", "imported"), {**row("c.dcm", "uid_conflict"), "orthanc_instance_id": "o-2"}])
    namer.close()
    with duckdb.connect(str(index), read_only=True) as con:
        got = dict(con.execute("SELECT file_path, error_message FROM import_history").fetchall())
    assert got == {"a.dcm": None, "b.dcm": kept("NAS 'ct', a.dcm"), "c.dcm": kept(NOT_FROM_A_NAS)}
