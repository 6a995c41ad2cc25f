"""The sample NAS generators, checked against what pydicom reads back from disk (no mocks)."""

from __future__ import annotations

import collections
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ImplicitVRLittleEndian

from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets.sample.dicom_nas import SampleManifest, make_dicom_nas

START = dt.date(2024, 3, 1)
KEY_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


@pytest.fixture(scope="module")
def nas(tmp_path_factory) -> SampleManifest:
    return make_dicom_nas(tmp_path_factory.mktemp("nas") / "share", seed=7, start_date=START, days=5)


def _has_dicm(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _read(m: SampleManifest, rel: str, **kw):
    path = m.root / rel
    if _has_dicm(path):
        return dcmread(path, **kw)
    ds = dcmread(path, force=True, **kw)
    # A headerless file is implicit VR little endian by definition, but pydicom will not decode its
    # pixels until the file meta says so (the importer's normalisation does the same).
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _pixel_bytes_expected(ds) -> int:
    return ds.Rows * ds.Columns * ds.BitsAllocated // 8 * ds.SamplesPerPixel * int(ds.get("NumberOfFrames", 1))


def test_manifest_lists_every_file_and_link(nas):
    found = set()
    for dirpath, dirnames, filenames in os.walk(nas.root):  # does not follow links
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.add(Path(dirpath, name).relative_to(nas.root).as_posix())
    assert found == set(nas.expected)
    assert set(nas.special.values()) <= set(nas.expected)
    assert set(nas.expected.values()) == {"ok", "duplicate", "skipped", "failed"}
    names = {"multiframe", "headerless", "corrupt", "truncated", "empty", "missing_date", "malformed_date",
             "future_date", "latin1", "utf8", "japanese", "duplicate", "symlink_loop", "dangling_symlink",
             "no_permission"}
    assert names <= set(nas.special)


def test_ok_files_parse_with_key_uids_and_full_pixel_data(nas):
    uids, patients = [], {}
    for rel in nas.paths("ok"):
        ds = _read(nas, rel)
        assert all(ds.get(k) for k in KEY_UIDS), rel
        assert len(ds.PixelData) == _pixel_bytes_expected(ds), rel
        assert ds.pixel_array.size == ds.Rows * ds.Columns * int(ds.get("NumberOfFrames", 1))
        uids.append(ds.SOPInstanceUID)
        patients[ds.PatientID] = str(ds.PatientName)
    assert len(uids) == len(set(uids)) and set(uids) == nas.sop_instance_uids
    assert patients == nas.patients


def test_duplicate_is_a_byte_copy_of_an_ok_file(nas):
    dup = nas.special["duplicate"]
    assert nas.paths("duplicate") == [dup]
    uid = _read(nas, dup).SOPInstanceUID
    originals = [p for p in nas.paths("ok") if _read(nas, p, stop_before_pixels=True).SOPInstanceUID == uid]
    assert len(originals) == 1 and originals[0] < dup
    assert (nas.root / originals[0]).read_bytes() == (nas.root / dup).read_bytes()


def test_headerless_files(nas):
    for case in ("headerless", "headerless_no_ext"):
        path = nas.root / nas.special[case]
        assert nas.expected[nas.special[case]] == "ok"
        assert not _has_dicm(path)
        with pytest.raises(InvalidDicomError):
            dcmread(path)  # without force pydicom refuses it: an indexer must try harder
        ds = dcmread(path, force=True)
        assert not ds.file_meta and ds.SOPInstanceUID in nas.sop_instance_uids
    assert nas.special["headerless"].endswith(".dcm") and "." not in nas.special["headerless_no_ext"].rsplit("/")[-1]


def test_ct_attributes_are_realistic(nas):
    ds = _read(nas, nas.special["headerless"])
    assert (ds.Modality, ds.SOPClassUID) == ("CT", "1.2.840.10008.5.1.4.1.1.2")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.RescaleType) == (1.0, -1024.0, "HU")
    assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
    assert float(ds.SliceThickness) > 0 and len(ds.PixelSpacing) == 2
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() < -900 and 0 < hu.mean() + 1000 and hu.max() > 500  # air, tissue, bone


def test_multiframe(nas):
    ds = _read(nas, nas.special["multiframe"])
    assert ds.NumberOfFrames == 5 and ds.pixel_array.shape == (5, ds.Rows, ds.Columns)
    assert len(ds.PerFrameFunctionalGroupsSequence) == 5


def test_failed_files(nas):
    assert set(nas.paths("failed")) == {nas.special["truncated"], nas.special["corrupt"]}
    ds = _read(nas, nas.special["truncated"])  # the header still reads: only the pixels are short
    assert ds.SOPInstanceUID not in nas.sop_instance_uids
    assert len(ds.PixelData) < _pixel_bytes_expected(ds)

    corrupt = nas.root / nas.special["corrupt"]
    assert _has_dicm(corrupt) and corrupt.stat().st_size > 132
    try:
        ds = dcmread(corrupt)
    except Exception:  # noqa: BLE001 - garbage may fail anywhere in pydicom; either outcome is fine
        return
    assert not all(ds.get(k) for k in KEY_UIDS)


def test_skipped_files(nas):
    skipped = nas.paths("skipped")
    assert nas.special["empty"] in skipped and (nas.root / nas.special["empty"]).stat().st_size == 0
    names = {p.rsplit("/", 1)[-1] for p in skipped}
    assert {"Thumbs.db", ".DS_Store", "README.txt"} <= names and any(n.endswith(".jpg") for n in names)
    for rel in skipped:
        path = nas.root / rel
        if path.is_symlink() or path.stat().st_size == 0:
            continue
        assert not _has_dicm(path)
        with pytest.raises(InvalidDicomError):
            dcmread(path)

    loop = nas.root / nas.special["symlink_loop"]
    assert loop.is_symlink() and loop.is_dir() and loop.parent.resolve().is_relative_to(loop.resolve())
    dangling = nas.root / nas.special["dangling_symlink"]
    assert dangling.is_symlink() and not dangling.exists()


def test_charsets_decode_to_intended_names(nas):
    cases = {
        "latin1": ("ISO_IR 100", "Müller^Jürgen", "Müller".encode("latin-1")),
        "utf8": ("ISO_IR 192", "Παπαδοπούλου^Ελένη", "Παπαδοπούλου".encode()),
        "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", b"\x1b$B"),
    }
    for case, (charset, name, raw) in cases.items():
        rel = nas.special[case]
        ds = _read(nas, rel)
        assert ds.SpecificCharacterSet == charset and str(ds.PatientName) == name
        assert raw in (nas.root / rel).read_bytes()
        assert nas.patients[ds.PatientID] == name
    assert _read(nas, nas.special["japanese"]).PatientName.ideographic == "山田^太郎"
    path = nas.special["non_ascii_path"]
    assert " " in path and not path.isascii() and " " in path.rsplit("/")[-1] and not path.rsplit("/")[-1].isascii()


def test_dates(nas):
    days = {START + dt.timedelta(days=i) for i in range(5)}
    assert nas.procedure_dates == days
    assert set(nas.procedure_date_of) == set(nas.paths("ok") + nas.paths("duplicate"))
    for rel, day in nas.procedure_date_of.items():  # the mtime is the last-resort date an indexer uses
        assert dt.date.fromtimestamp((nas.root / rel).stat().st_mtime) == day
    missing = _read(nas, nas.special["missing_date"])
    assert "StudyDate" not in missing and "SeriesDate" not in missing
    malformed = _read(nas, nas.special["malformed_date"])
    assert malformed.StudyDate == "20241345"
    series_date = dt.datetime.strptime(malformed.SeriesDate, "%Y%m%d").date()
    assert series_date == nas.procedure_date_of[nas.special["malformed_date"]]
    assert _read(nas, nas.special["future_date"]).StudyDate == "21990101"
    ok_dates = {_read(nas, p, stop_before_pixels=True).get("StudyDate") for p in nas.paths("ok")}
    assert {d.strftime("%Y%m%d") for d in days} <= ok_dates


def test_no_permission_folder(nas):
    rel = nas.special["no_permission"]
    assert stat.S_IMODE((nas.root / rel).parent.stat().st_mode) == 0
    if os.geteuid() == 0:  # root reads through mode 000
        assert nas.expected[rel] == "ok" and _read(nas, rel).SOPInstanceUID in nas.sop_instance_uids


def _regular_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_deterministic_for_a_seed(nas, tmp_path):
    again = make_dicom_nas(tmp_path / "a", seed=7, start_date=START, days=5)
    assert again.expected == nas.expected and again.special == nas.special
    assert again.sop_instance_uids == nas.sop_instance_uids and again.patients == nas.patients
    assert _regular_files(tmp_path / "a") == _regular_files(nas.root)
    other = make_dicom_nas(tmp_path / "b", seed=8, start_date=START, days=5)
    assert not other.sop_instance_uids & nas.sop_instance_uids


def test_bulk_generator(tmp_path):
    n, per_series, days = 510, 20, 5
    assert make_bulk_dicom_nas(tmp_path / "bulk", n, seed=3, files_per_series=per_series, days=days) == n
    files = sorted((tmp_path / "bulk").rglob("*.dcm"))
    assert len(files) == n
    sops, dates, series = set(), collections.Counter(), collections.defaultdict(list)
    for path in files:
        ds = dcmread(path)  # a proper Part 10 file: no force needed
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert len(ds.PixelData) == 64 * 64 * 2 and 8_000 < path.stat().st_size < 10_000
        assert ds.SeriesDate == ds.StudyDate and float(ds.ImagePositionPatient[2]) == float(ds.SliceLocation)
        sops.add(ds.SOPInstanceUID)
        dates[ds.StudyDate] += 1
        series[(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)].append(ds.InstanceNumber)
    assert dcmread(files[0]).pixel_array.shape == (64, 64)
    assert len(sops) == n
    n_series = -(-n // per_series)
    assert len(series) == n_series and len({s[1] for s in series}) == len({s[2] for s in series}) == n_series
    assert sorted(len(v) for v in series.values()) == [n % per_series] + [per_series] * (n_series - 1)
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in series.values())
    expected = collections.Counter()
    for k in range(n_series):
        expected[(START + dt.timedelta(days=k % days)).strftime("%Y%m%d")] += min(per_series, n - k * per_series)
    assert dates == expected

    make_bulk_dicom_nas(tmp_path / "again", n, seed=3, files_per_series=per_series, days=days)
    assert _regular_files(tmp_path / "again") == _regular_files(tmp_path / "bulk")
