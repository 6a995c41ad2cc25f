"""The dicom_folder source on its own: the walk, the classification, the scan cache, the upload bytes."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import pydicom

from pacs_assets.nas.base import FileRecord, NoCache, ScanCache
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import tree_fingerprint


class DictCache(ScanCache):
    """A real in-memory cache (no mock): what a previous scan produced, keyed by path."""

    def __init__(self, records: list[FileRecord]):
        self.records = {r.file_path: r for r in records}

    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        return {p: self.records[p] for p, tok in keys.items()
                if p in self.records and self.records[p].change_token == tok}


def scan_all(source, cache=None, batch_size=2000) -> list[FileRecord]:
    return [r for batch in source.scan(cache or NoCache(), batch_size=batch_size) for r in batch]


def test_every_entry_gets_one_record_matching_the_manifest(tmp_path):
    manifest = make_dicom_nas(tmp_path / "nas")
    before = tree_fingerprint(manifest.root)
    records = scan_all(DicomFolderSource("ct", manifest.root, workers=2), batch_size=7)
    paths = [r.file_path for r in records]
    assert len(paths) == len(set(paths))
    assert set(paths) == set(manifest.expected)
    for r in records:
        want = "ok" if manifest.expected[r.file_path] == "duplicate" else manifest.expected[r.file_path]
        assert r.status == want, (r.file_path, r.status, r.reason)
        assert (r.reason is None) == (r.status == "ok")
    by_path = {r.file_path: r for r in records}
    assert by_path[manifest.special["multiframe"]].number_of_frames == 5
    assert by_path[manifest.special["headerless"]].file_format == "DICOM-headerless"
    assert by_path[manifest.special["truncated"]].reason.startswith("truncated")
    assert by_path[manifest.special["symlink_loop"]].reason.endswith("(loop), not followed")
    latin1 = by_path[manifest.special["latin1"]]
    assert latin1.patient_name == manifest.patients[latin1.patient_id]
    assert tree_fingerprint(manifest.root) == before


def test_parallel_and_serial_scans_agree(tmp_path):
    manifest = make_dicom_nas(tmp_path / "nas")
    serial = scan_all(DicomFolderSource("ct", manifest.root, workers=1))
    parallel = scan_all(DicomFolderSource("ct", manifest.root, workers=2))
    assert serial == parallel


def test_unchanged_files_come_from_the_cache_changed_ones_are_read_again(tmp_path):
    manifest = make_dicom_nas(tmp_path / "nas")
    source = DicomFolderSource("ct", manifest.root)
    first = scan_all(source)
    changed = manifest.paths("ok")[0]
    st = os.stat(manifest.root / changed)
    os.utime(manifest.root / changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    cache = DictCache(first)
    second = scan_all(source, cache)
    for old, new in zip(first, second, strict=False):
        if new.file_path == changed:
            assert new is not cache.records[changed] and new.change_token != old.change_token
        elif isinstance(new, FileRecord) and new.status == "ok":
            assert new is cache.records[new.file_path]  # not parsed again


def test_headerless_files_are_uploaded_with_a_file_meta_header(tmp_path):
    manifest = make_dicom_nas(tmp_path / "nas")
    source = DicomFolderSource("ct", manifest.root)
    record = next(r for r in scan_all(source) if r.file_path == manifest.special["headerless_no_ext"])
    data = source.dicom_bytes(record)
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPInstanceUID == record.sop_instance_uid
    assert ds.file_meta.TransferSyntaxUID == record.transfer_syntax_uid
    assert ds.pixel_array.shape == (record.rows, record.columns)
