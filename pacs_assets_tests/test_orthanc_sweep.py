"""The nightly whole-NAS Orthanc check: after a clean full sweep it reads only what changed, and an instance
deleted from Orthanc is noticed the next night whatever else happened meanwhile."""

from __future__ import annotations

import datetime as dt

import duckdb
import pydicom
import requests
from pydicom.uid import generate_uid

from pacs_assets.index.orthanc_sweeps import current_cycle, last_mark
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.pipeline import orthanc_sweep, reconciliation
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import NAS, SAMPLE_START, materialize_nas, write_config


def test_nightly_sweep_reads_what_changed_and_notices_every_deletion(tmp_path, orthanc_env, monkeypatch):
    manifest = make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    config = write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url)
    assert materialize_nas(config, "ct").success
    index = tmp_path / "index.duckdb"
    client = OrthancClient(orthanc_env.url, orthanc_env.username, orthanc_env.password)
    session = requests.Session()
    session.auth = orthanc_env.auth
    listings, real_list = [], OrthancClient.instance_ids
    monkeypatch.setattr(OrthancClient, "instance_ids", lambda self, page=10_000: listings.append(1) or
                        real_list(self, page))

    def night(**kw) -> dict:
        listings.clear()
        out = orthanc_sweep.nightly_sweep(index, "ct", client, **kw)
        assert (out["sweep"] == "full") == bool(listings)
        return out

    def imported() -> list[str]:
        with duckdb.connect(str(index), read_only=True) as con:
            return [r[0] for r in con.execute("SELECT orthanc_instance_id FROM file_status WHERE status = "
                                              "'imported' ORDER BY 1").fetchall()]

    def foreign_instance() -> bytes:  # a modality's instance, sent straight to Orthanc
        ds = pydicom.dcmread(manifest.root / manifest.paths("ok")[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path)
        return path.read_bytes()

    ids = imported()
    first = night()
    assert first == {"checked": len(ids), "missing_in_orthanc": 0, "sweep": "full"}
    assert night() == {"checked": 0, "missing_in_orthanc": 0, "sweep": "changes", "listed": -(-len(ids) // 7)}
    session.post(f"{orthanc_env.url}/instances", data=foreign_instance()).raise_for_status()
    assert night() == {"checked": 0, "missing_in_orthanc": 0, "sweep": "changes", "listed": -(-len(ids) // 7)}

    # One of ours deleted while a modality's instance arrives: the count alone would not change.
    session.delete(f"{orthanc_env.url}/instances/{ids[0]}").raise_for_status()
    session.post(f"{orthanc_env.url}/instances", data=foreign_instance()).raise_for_status()
    assert night() == {"checked": len(ids), "missing_in_orthanc": 1, "sweep": "full"}
    assert night()["sweep"] == "full"  # still missing: no mark to lean on
    session.post(f"{orthanc_env.url}/instances",
                 data=(manifest.root / _path_of(index, ids[0])).read_bytes()).raise_for_status()
    assert night() == {"checked": len(ids), "missing_in_orthanc": 0, "sweep": "full"}

    # A file imported after the mark, then deleted from Orthanc before the night: Orthanc's count and changes
    # look untouched (its NewInstance change went with it), so the ledger's new entry is looked up.
    new = manifest.root / manifest.paths("ok")[0]
    ds = pydicom.dcmread(new)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(new.with_name("new_one.dcm"))
    assert materialize_nas(config, "ct").success
    (added,) = set(imported()) - set(ids)
    session.delete(f"{orthanc_env.url}/instances/{added}").raise_for_status()
    assert night() == {"checked": 1, "missing_in_orthanc": 1, "sweep": "changes", "listed": 0}
    assert night()["sweep"] == "full"
    # A cycle that stalled: a full sweep after twice FULL_EVERY, whatever the changes say.
    session.post(f"{orthanc_env.url}/instances", data=new.with_name("new_one.dcm").read_bytes()).raise_for_status()
    assert night()["sweep"] == "full" and night()["sweep"] == "changes"
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + 2 * orthanc_sweep.FULL_EVERY
    assert night(now=later)["sweep"] == "full"

    # Orthanc far bigger than the NAS: no cycle (listing Orthanc costs more than finding ours); the full sweep
    # looks every entry up by UID instead, every FULL_EVERY; Orthanc unchanged all along, it leaves a mark too.
    monkeypatch.setattr(orthanc_sweep, "LIST_FACTOR", 0)
    assert night(now=later + dt.timedelta(days=1))["listed"] == 0
    monkeypatch.setattr(reconciliation, "LIST_FACTOR", 0)
    later += orthanc_sweep.FULL_EVERY
    listings.clear()
    assert orthanc_sweep.nightly_sweep(index, "ct", client, now=later) == {
        "checked": len(ids) + 1, "missing_in_orthanc": 0, "sweep": "full"} and not listings
    session.delete(f"{orthanc_env.url}/instances/{ids[1]}").raise_for_status()
    assert orthanc_sweep.nightly_sweep(index, "ct", client, now=later)["missing_in_orthanc"] == 1


def test_a_full_sweep_spread_over_nights_lists_every_instance_and_notices_a_wrong_entry(tmp_path, orthanc_env):
    """Each night reads a slice of Orthanc's list; by the cycle's last night every ledger entry from before it
    must have been listed. A ledger entry whose instance Orthanc never had passes the changes proof (nothing
    went), but not the cycle: its last night runs a full sweep, which reports it."""
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    assert materialize_nas(write_config(tmp_path / "pacs.yaml", NAS, orthanc_url=orthanc_env.url), "ct").success
    index = tmp_path / "index.duckdb"
    client = OrthancClient(orthanc_env.url, orthanc_env.username, orthanc_env.password)
    start = dt.datetime(2026, 1, 1, 2)
    assert orthanc_sweep.nightly_sweep(index, "ct", client, now=start)["sweep"] == "full"
    count = client.listing_mark()[0]

    def nights(first: int, n: int) -> list[dict]:
        return [orthanc_sweep.nightly_sweep(index, "ct", client, now=start + dt.timedelta(days=d, minutes=d))
                for d in range(first, first + n)]

    cycle = nights(1, 7)
    assert [n["sweep"] for n in cycle] == ["changes"] * 7 and sum(n["listed"] for n in cycle) == count
    assert not any(n["missing_in_orthanc"] for n in cycle)
    mark = last_mark(index, "ct")
    assert mark.full_at == start + dt.timedelta(days=1, minutes=1) and current_cycle(index, "ct") is None

    # Nights missed: the cycle's last night (six days after its first) reads all that is left.
    first = nights(8, 1)[0]["listed"]
    assert first == -(-count // 7) and nights(14, 1)[0]["listed"] == count - first
    assert current_cycle(index, "ct") is None

    with duckdb.connect(str(index)) as con:  # a ledger entry naming an instance Orthanc never had
        con.execute("UPDATE import_history SET orthanc_instance_id = 'not-in-orthanc' WHERE attempt_id = "
                    "(SELECT min(attempt_id) FROM import_history WHERE status = 'imported')")
    cycle = nights(15, 7)
    assert [n["sweep"] for n in cycle] == ["changes"] * 6 + ["full"]
    assert [n["missing_in_orthanc"] for n in cycle] == [0] * 6 + [1]
    assert nights(22, 1)[0]["sweep"] == "full"  # no clean mark until the entry is right again


def _path_of(index, orthanc_id: str) -> str:
    with duckdb.connect(str(index), read_only=True) as con:
        query = "SELECT file_path FROM file_status WHERE orthanc_instance_id = ?"
        return con.execute(query, [orthanc_id]).fetchall()[0][0]


def test_a_find_answer_cut_by_the_sites_limit_reports_no_instance_missing_that_is_there(tmp_path):
    """The check looks up ledger entries 100 to a /tools/find. With LimitFindInstances 2 Orthanc answers three of
    the five it holds: the two left out are asked for by their IDs, and only the entry Orthanc lacks is missing."""
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
    from pacs_assets_tests.services.orthanc import OrthancServer

    make_bulk_dicom_nas(tmp_path / "nas", 5, files_per_series=5)
    with OrthancServer(tmp_path / "orthanc", settings={"LimitFindInstances": 2}).throwaway() as orthanc:
        client = OrthancClient(orthanc.url, orthanc.username, orthanc.password)
        entries = []
        for path in sorted((tmp_path / "nas").rglob("*.dcm")):
            answer = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), auth=orthanc.auth, timeout=30)
            entries.append((pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID, answer.json()["ID"]))
        assert len(client.find_instance_ids([sop for sop, _ in entries])) < 5  # cut short: the test bites
        absent = ("1.2.3.4.5", "00000000-00000000-00000000-00000000-00000000")
        assert reconciliation.missing_of(client, [entries + [absent]]) == 1
