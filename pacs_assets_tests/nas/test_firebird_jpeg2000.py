"""The firebird_jpeg2000 source against a real embedded Firebird 3 catalog and real JP2 files (no mocks)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import fdb
import pytest
from pydicom import dcmread

from pacs_assets.config import ConfigError, FirebirdCatalog
from pacs_assets.nas.base import FAILED, OK, SKIPPED, FileRecord, NoCache, ScanCache, SendAs
from pacs_assets.nas.firebird_jpeg2000.catalog import DEFAULT_MAPPING, CatalogError
from pacs_assets.nas.firebird_jpeg2000.dicom_wrap import verify_lossless
from pacs_assets.nas.firebird_jpeg2000.jpeg2000 import (
    JPEG2000_LOSSLESS,
    JPEG2000_LOSSY,
)
from pacs_assets.nas.firebird_jpeg2000.source import (
    FirebirdJpeg2000Source,
    catalog_row_path,
)
from pacs_assets.sample.firebird_nas import (
    FirebirdSampleManifest,
    make_bulk_firebird_nas,
    make_firebird_nas,
)
from pacs_assets_tests.harness import tree_fingerprint

NAS = "fb_test"

# Every file open in this process, while a test wants to know (an audit hook is forever: gate it).
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class DictCache(ScanCache):
    """A real (in-memory) scan cache: what an earlier scan produced, keyed by path and change token."""

    def __init__(self, records: list[FileRecord]):
        self.records = {r.file_path: r for r in records}

    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        return {p: self.records[p] for p, t in keys.items() if p in self.records and self.records[p].change_token == t}


def _source(m: FirebirdSampleManifest, mapping: dict | None = None, **catalog) -> FirebirdJpeg2000Source:
    return FirebirdJpeg2000Source(m.nas_id, m.root, catalog=FirebirdCatalog(database=Path(m.catalog), **catalog),
                                  mapping=mapping)


def _scan(source, cache: ScanCache | None = None, batch_size: int = 5) -> list[FileRecord]:
    return [r for batch in source.scan(cache or NoCache(), batch_size) for r in batch]


def _image_key(rec: FileRecord) -> str | None:
    return json.loads(rec.extra_json)["catalog"]["image_key"] if rec.extra_json else None


@pytest.fixture(scope="module")
def nas(tmp_path_factory) -> FirebirdSampleManifest:
    return make_firebird_nas(tmp_path_factory.mktemp("fbnas") / "share", nas_id=NAS, patients=5, seed=3)


@pytest.fixture(scope="module")
def records(nas) -> list[FileRecord]:
    return _scan(_source(nas))


def test_every_file_and_row_gets_exactly_one_record(nas, records):
    paths = Counter(r.file_path for r in records)
    assert max(paths.values()) == 1, [p for p, n in paths.items() if n > 1]
    on_disk = {str(Path(d, f).relative_to(nas.root)) for d, dirs, files in os.walk(nas.root) for f in files + [
        x for x in dirs if os.path.islink(os.path.join(d, x))]}
    assert on_disk <= set(paths)  # every file and link under the root
    by_path = {r.file_path: r for r in records}
    for path, status in nas.expected.items():
        assert by_path[path].status == status, (path, by_path[path].reason)
    keys = Counter(_image_key(r) for r in records if r.extra_json)
    assert keys == Counter(nas.rows.keys())  # every catalog row, once
    by_key = {_image_key(r): r for r in records if r.extra_json}
    for key, status in nas.rows.items():
        assert by_key[key].status == status, (key, by_key[key].reason)
    assert all(r.reason for r in records if r.status != OK)
    assert all(r.reason is None for r in records if r.status == OK)


def test_reasons(nas, records):
    by_key = {_image_key(r): r for r in records if r.extra_json}
    by_path = {r.file_path: r for r in records}
    sp = nas.special
    assert by_key[sp["missing"]].reason.endswith(f"points to {nas.row_paths[sp['missing']]}, which does not exist")
    assert "truncated" in by_key[sp["truncated"]].reason and "not a JPEG 2000 file" in by_key[sp["junk"]].reason
    for case in ("dotdot", "absolute", "symlink_out", "folder_link_out"):
        assert "refused" in by_key[sp[case]].reason, case
    assert by_key[sp["dotdot"]].file_path == catalog_row_path(sp["dotdot"])
    assert by_key[sp["symlink_out"]].file_path == nas.row_paths[sp["symlink_out"]]  # the link itself
    assert "already points to" in by_key[sp["duplicate_path"]].reason
    assert by_key[sp["no_path"]].reason.endswith("has no usable file path")
    assert by_path[nas.catalog].reason == "Firebird catalog file"
    assert by_path[sp["orphan"]].reason == "no catalog row points to this file"
    assert by_path[sp["readme"]].reason == "not referenced by the catalog"


def test_ok_records_carry_header_facts_and_catalog_attributes(nas, records):
    ok = [r for r in records if r.status == OK]
    assert len(ok) == len(nas.procedure_date_of)
    for r in ok:
        lossy = r.file_path in nas.lossy
        assert r.file_format == "JP2" and (r.rows, r.columns) == (48, 64)
        assert r.transfer_syntax_uid == (JPEG2000_LOSSY if lossy else JPEG2000_LOSSLESS)
        assert r.compression_type == ("JPEG2000 lossy" if lossy else "JPEG2000 lossless")
        assert r.patient_name == nas.patients[r.patient_id]
        assert r.change_token.startswith(f"{r.size}-{r.mtime_ns}-")
        extra = json.loads(r.extra_json)
        assert extra["j2k"]["reversible"] == (not lossy) and extra["catalog"]["study_key"]
    assert any(not r.patient_name.isascii() for r in ok)
    dates = {r.study_date for r in ok}
    assert None in dates and any(d and not d.isdigit() for d in dates)  # missing and malformed, kept as written
    windows = next(r for r in ok if _image_key(r) == nas.special["windows_path"])
    assert "\\" not in windows.file_path and "\\" in nas.row_paths[nas.special["windows_path"]]


def test_uids_deterministic_and_catalog_uids_kept(nas, records):
    again = _scan(_source(nas), batch_size=1000)
    def uids(recs):
        return {r.file_path: (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid) for r in recs}
    assert uids(records) == uids(again)
    ok = [r for r in records if r.status == OK]
    assert len({r.sop_instance_uid for r in ok}) == len(ok)
    assert all(len(u) <= 64 for r in ok for u in uids([r])[r.file_path])
    study_uids = {json.loads(r.extra_json)["catalog"]["study_key"]: r.study_instance_uid for r in ok}
    valid, invalid = nas.study_uids[1], nas.study_uids[4]  # the generator stores one valid, one invalid
    assert study_uids["1"] == valid
    assert study_uids["4"] != invalid and study_uids["4"].startswith("2.25.")
    other_nas = FirebirdJpeg2000Source("other_nas", nas.root, catalog=FirebirdCatalog(database=Path(nas.catalog)))
    assert uids(_scan(other_nas))[ok[0].file_path] != uids(records)[ok[0].file_path]  # NAS id is in the UID


def test_dicom_bytes_are_lossless_wraps_of_the_files(nas, records):
    src = _source(nas)
    for r in records:
        if r.status != OK:
            continue
        data = src.dicom_bytes(r)
        ok, why = verify_lossless(data, nas.root / r.file_path)
        assert ok, (r.file_path, why)
        ds = dcmread(io.BytesIO(data))
        assert ds.file_meta.TransferSyntaxUID == r.transfer_syntax_uid
        assert (ds.PatientID, str(ds.PatientName), ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (
            r.patient_id, r.patient_name, r.sop_instance_uid, r.study_instance_uid, r.series_instance_uid)
        assert ds.StudyDate == (r.study_date if r.study_date and r.study_date.isdigit() else "")  # malformed: empty
        assert ds.Modality == r.modality and ds.InstanceNumber == r.instance_number
        if r.file_path in nas.lossy:
            assert ds.LossyImageCompression == "01"
    with pytest.raises(ValueError):
        src.dicom_bytes(next(r for r in records if r.status == FAILED))


def test_the_wrap_carries_the_pacs_patient_identity_and_the_nas_pixels(nas, records):
    """Under an ID domain or a decision (SendAs), the DICOM written around the codestream carries the PatientID
    Orthanc keys by, the issuer and the NAS's own ID; everything else, the codestream above all, is unchanged."""
    src = _source(nas)
    r = next(r for r in records if r.status == OK and r.patient_id)
    send_as = SendAs(patient_id=f"FB-{r.patient_id}", issuer="FB_VENDOR", original_id=r.patient_id,
                     original_issuer="FB_VENDOR")
    plain = dcmread(io.BytesIO(src.dicom_bytes(r)))
    data = src.upload_body(r, send_as).read_all()
    ok, why = verify_lossless(data, nas.root / r.file_path)
    assert ok, why
    sent = dcmread(io.BytesIO(data))
    assert sent.PatientID == f"FB-{r.patient_id}" != plain.PatientID and sent.IssuerOfPatientID == "FB_VENDOR"
    (item,) = sent.OtherPatientIDsSequence
    assert (item.PatientID, item.IssuerOfPatientID) == (r.patient_id, "FB_VENDOR")
    for elem in plain:
        if elem.keyword not in {"PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence"}:
            assert sent[elem.tag].value == elem.value, elem.keyword


def test_scan_and_import_never_write_the_nas_nor_open_outside_paths(nas):
    global _OPENED
    before = tree_fingerprint(nas.root)
    outside_before = tree_fingerprint(nas.outside)
    src = _source(nas)
    _OPENED = []
    try:
        recs = _scan(src)
        for r in recs:
            if r.status == OK:
                src.dicom_bytes(r)
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert tree_fingerprint(nas.root) == before and tree_fingerprint(nas.outside) == outside_before
    outside = os.path.realpath(nas.outside)
    assert not [p for p in opened if os.path.realpath(p).startswith(outside)]
    assert any(p.endswith(".jp2") for p in opened)  # the hook does see the reads


def test_cache_skips_unchanged_headers_and_catalog_changes_renew_tokens(tmp_path):
    global _OPENED
    m = make_firebird_nas(tmp_path / "share", nas_id=NAS, patients=3, seed=5)
    first = _scan(_source(m))
    _OPENED = []
    try:
        second = _scan(_source(m), DictCache(first))
        opened = [p for p in _OPENED if p.endswith((".jp2", ".j2k"))]
    finally:
        _OPENED = None
    assert not opened  # every header came from the cache
    assert [(r.file_path, r.change_token, r.status) for r in second] == [
        (r.file_path, r.change_token, r.status) for r in first]
    # A corrected patient name (no row version changes) must reach the index.
    con = fdb.connect(dsn=str(m.root / m.catalog), user="SYSDBA", password=m.password, charset="UTF8")
    con.cursor().execute("UPDATE PATIENTS SET PAT_LASTNAME = 'Corrected' WHERE PAT_ID = 1")
    con.commit()
    con.close()
    third = _scan(_source(m), DictCache(first))
    changed = {r.file_path for r in third if r.status == OK and r.patient_name.startswith("Corrected^")}
    assert changed and all(
        r.change_token != c.change_token for r, c in zip(third, first, strict=False) if r.file_path in changed)


def _mapping(old: str, new: str) -> dict:
    assert old in DEFAULT_MAPPING["images"]
    return {"images": DEFAULT_MAPPING["images"].replace(old, new)}


def test_mapping_errors_are_one_clear_sentence(nas):
    cases = [
        (_mapping("i.IMG_NO AS", "i.IMG_NUMBER AS"), "column I.IMG_NUMBER does not exist"),
        (_mapping("FROM IMAGES i", "FROM IMAGE_TABLE i"), "table IMAGE_TABLE does not exist"),
        (_mapping("AS modality", "AS modalty"), "result column modalty is not one of our attribute names"),
        (_mapping("AS file_path", "AS filename"), "result column filename"),
        ({"images": "UPDATE IMAGES SET IMG_PATH = NULL"}, "must be a SELECT"),
        ({"images": "SELEC x"}, "the SQL is invalid"),
    ]
    for mapping, words in cases:
        with pytest.raises(CatalogError) as exc:
            _scan(_source(nas, mapping))
        message = str(exc.value)
        assert message.startswith(f"Firebird catalog mapping for NAS '{NAS}'") and words in message, message
        assert "\n" not in message and message.endswith(".")
    with pytest.raises(CatalogError, match="exactly one key, 'images'"):
        _source(nas, {"patients": "SELECT 1 FROM RDB$DATABASE"})


def test_minimal_custom_mapping(nas):
    mapping = {"images": "SELECT IMG_ID AS image_key, IMG_PATH AS file_path FROM IMAGES"}
    recs = _scan(_source(nas, mapping))
    ok = [r for r in recs if r.status == OK]
    assert len(ok) == len(nas.procedure_date_of) and all(r.sop_instance_uid.startswith("2.25.") for r in ok)
    assert ok[0].patient_id is None


def test_not_firebird3_catalogs_are_refused_in_one_sentence(nas, tmp_path):
    root = tmp_path / "share"
    shutil.copytree(nas.root, root, symlinks=True)
    catalog = root / nas.catalog
    # A Firebird 2.5 file differs from ours in the header page's ODS field (11 instead of 12);
    # the real Firebird 3 engine refuses such a file, which is what the early check spares us.
    data = bytearray(catalog.read_bytes())
    data[18:20] = (0x800B).to_bytes(2, "little")
    catalog.write_bytes(bytes(data))
    with pytest.raises(fdb.DatabaseError, match="unsupported on-disk structure"):
        fdb.connect(dsn=str(catalog), user="SYSDBA", password="x")
    src = FirebirdJpeg2000Source(NAS, root, catalog=FirebirdCatalog(database=Path(nas.catalog)))
    with pytest.raises(ConfigError) as exc:
        src.check_available()
    message = str(exc.value)
    assert "ODS 11" in message and "Firebird 2" in message and "gbak" in message and message.count(". ") == 0
    with pytest.raises(ConfigError, match="ODS 11"):
        _scan(src)
    catalog.write_text("not a database\n")
    with pytest.raises(ConfigError, match="is not a Firebird database file"):
        src.check_available()


def test_check_available(nas, tmp_path):
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        FirebirdJpeg2000Source(NAS, tmp_path / "unmounted",
                               catalog=FirebirdCatalog(database=Path("x.fdb"))).check_available()
    with pytest.raises(ConfigError, match="catalog .* does not exist"):
        FirebirdJpeg2000Source(NAS, nas.root, catalog=FirebirdCatalog(database=Path("nope.fdb"))).check_available()
    with pytest.raises(ConfigError, match="inside the NAS root"):
        _source(nas, snapshot_dir=nas.root / "tmp").check_available()
    _source(nas, snapshot_dir=tmp_path).check_available()
    assert len(_scan(_source(nas, snapshot_dir=tmp_path))) > 0 and not list(tmp_path.iterdir())  # snapshot removed


def test_files_still_being_written_wait(nas, records):
    src = FirebirdJpeg2000Source(nas.nas_id, nas.root, catalog=FirebirdCatalog(database=Path(nas.catalog)),
                                 settle_seconds=10 * 365 * 86400)  # every sample file is "too recent"
    waiting = {r.file_path: r for r in _scan(src)}
    for r in records:
        if r.status == OK:
            assert waiting[r.file_path].status == SKIPPED and "still being written" in waiting[r.file_path].reason


def test_most_files_missing_is_an_outage(tmp_path):
    m = make_bulk_firebird_nas(tmp_path / "share", 30, nas_id=NAS, images_per_series=10)
    shutil.rmtree(m.root / "IMAGES")
    with pytest.raises(ConfigError, match="outage"):
        _scan(_source(m))


def test_server_mode(nas, records, tmp_path, monkeypatch):
    server_module = pytest.importorskip("pacs_assets_tests.services.firebird")
    if not server_module.SERVER_BINARY.exists():
        pytest.skip("Firebird server not installed")
    with server_module.FirebirdServer(tmp_path / "fbserver") as server:
        # The server opens (and writes the header of) what it attaches: give it a copy, never the NAS file.
        copy = server.data_dir / "pacsdb.fdb"
        shutil.copyfile(nas.root / nas.catalog, copy)
        monkeypatch.setenv("PACS_TEST_FB_PASSWORD", server.password)
        catalog = dict(mode="server", database=copy, host=server.host, port=server.port, user=server.user,
                       password_env="PACS_TEST_FB_PASSWORD")
        src = FirebirdJpeg2000Source(NAS, nas.root, catalog=FirebirdCatalog(**catalog))
        src.check_available()
        served = _scan(src)
        def key(r):
            return (r.file_path, r.status, r.sop_instance_uid, r.patient_name, r.change_token)
        # The NAS's own .fdb is now just a file the catalog does not name.
        assert sorted(map(key, served)) == sorted(
            key(r) if r.file_path != nas.catalog else (r.file_path, SKIPPED, None, None, r.change_token)
            for r in records)
        assert next(r for r in served if r.file_path == nas.catalog).reason == "not referenced by the catalog"

        monkeypatch.setenv("PACS_TEST_FB_PASSWORD", "wrong")
        with pytest.raises(ConfigError) as exc:
            src.check_available()
        assert "cannot open the Firebird catalog" in str(exc.value) and "\n" not in str(exc.value)
        monkeypatch.delenv("PACS_TEST_FB_PASSWORD")
        with pytest.raises(ConfigError, match="PACS_TEST_FB_PASSWORD .* is not set"):
            src.check_available()


def test_orthanc_stores_and_renders_the_wrapped_files(nas, records, orthanc):
    """The real consumer: Orthanc 1.10 stores every wrapped file as sent and renders it (gdcm plugin)."""
    import requests

    src = _source(nas)
    session = requests.Session()
    session.auth = orthanc.auth
    for r in records:
        if r.status != OK:
            continue
        answer = session.post(f"{orthanc.url}/instances", data=src.dicom_bytes(r),
                              headers={"Content-Type": "application/dicom"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["Status"] == "Success", (r.file_path, answer.text)
        instance = answer.json()["ID"]
        tags = session.get(f"{orthanc.url}/instances/{instance}/simplified-tags", timeout=30).json()
        assert (tags["PatientName"], tags["SOPInstanceUID"]) == (r.patient_name, r.sop_instance_uid)
        meta = session.get(f"{orthanc.url}/instances/{instance}/metadata/TransferSyntax", timeout=30).text
        assert meta == r.transfer_syntax_uid
        preview = session.get(f"{orthanc.url}/instances/{instance}/preview", timeout=30)
        if json.loads(r.extra_json)["j2k"]["photometric_interpretation"] == "YBR_RCT":
            # PS3.5 8.2.4 requires YBR_RCT for a codestream with the reversible colour transform; the
            # gdcm plugin 1.5 of Orthanc 1.10.1 stores it but cannot render it ("Unsupported output
            # photometric interpretation"). Labelled RGB it would render, with GDCM warning it is wrong.
            assert preview.status_code == 415, r.file_path
        else:
            assert preview.status_code == 200 and preview.content[:4] == b"\x89PNG", r.file_path


def _dciodvfy_errors(path: Path) -> list[str]:
    """The lines dciodvfy (dicom3tools: the IOD checker of PS3.3) calls errors; warnings are advice."""
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is missing: bash scripts/install_system_packages.sh installs dicom3tools.")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=60)
    lines = (done.stdout + done.stderr).decode("utf-8", "replace").splitlines()
    return [line for line in lines if line.startswith("Error")]


def test_wrapped_files_pass_dciodvfy(nas, records, tmp_path):
    """Every wrapped file of the sample is a valid Secondary Capture IOD for dicom3tools; the plain-DICOM
    sample's ordinary files are the control that passes, its file without a Study Date the one that fails."""
    from pacs_assets.sample.dicom_nas import make_dicom_nas

    src = _source(nas)
    wrapped = [r for r in records if r.status == OK]
    assert {r.transfer_syntax_uid for r in wrapped} == {JPEG2000_LOSSLESS, JPEG2000_LOSSY}  # both kinds checked
    for r in wrapped:
        path = tmp_path / "wrapped.dcm"
        path.write_bytes(src.dicom_bytes(r))
        assert _dciodvfy_errors(path) == [], r.file_path
    plain = make_dicom_nas(tmp_path / "plain")
    special = set(plain.special.values())
    ordinary = [p for p in plain.paths(OK) if p not in special]
    assert len(ordinary) > 10
    for rel in ordinary + [plain.special[c] for c in ("latin1", "utf8", "japanese", "headerless", "multiframe")]:
        assert _dciodvfy_errors(plain.root / rel) == [], rel
    assert any("<StudyDate>" in line for line in _dciodvfy_errors(plain.root / plain.special["missing_date"]))
