"""A file sent under its PACS patient identity (an ID domain, a decision): the header carries the new PatientID,
the issuer and the original ID; everything else, Pixel Data above all, is what the NAS file holds. On the
sample's files and on pydicom's own awkward ones (big endian, implicit VR, deflated, encapsulated, no meta)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from pacs_assets.nas.base import NoCache, SendAs
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets_tests.harness import SAMPLE_START, tree_fingerprint

SEND_AS = SendAs(patient_id="AR-12345", issuer="ARCHIVE_VENDOR", original_id="12345", original_issuer="ARCHIVE_VENDOR")


def _records(root: Path):
    source = DicomFolderSource("nas", root, workers=1)
    return source, [r for batch in source.scan(NoCache()) for r in batch if r.status == "ok"]


def _same_except_identity(original: pydicom.Dataset, sent: pydicom.Dataset) -> None:
    assert sent.PatientID == "AR-12345" and sent.IssuerOfPatientID == "ARCHIVE_VENDOR"
    (item,) = sent.OtherPatientIDsSequence
    assert (item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID) == ("12345", "ARCHIVE_VENDOR", "TEXT")
    changed = {"PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence"}
    for elem in original:
        if elem.keyword in changed or elem.tag.element == 0:  # pydicom drops retired group lengths on write
            continue
        assert elem.tag in sent, elem
        assert sent[elem.tag].value == elem.value, elem.keyword or elem.tag


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "nas"
    shutil.copytree(Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent, root, symlinks=True)
    return root


def test_sample_files_keep_every_element_but_the_identity(tmp_path):
    make_dicom_nas(tmp_path / "nas", patients=4, start_date=SAMPLE_START)
    before = tree_fingerprint(tmp_path / "nas")
    source, records = _records(tmp_path / "nas")
    formats = set()
    for rec in records:
        body = source.upload_body(rec, SEND_AS)
        sent = pydicom.dcmread(io.BytesIO(body.read_all()))
        _same_except_identity(pydicom.dcmread(tmp_path / "nas" / rec.file_path, force=True), sent)
        assert body.length == len(body.read_all())
        formats.add(rec.file_format)
    assert formats == {"DICOM", "DICOM-headerless"}
    assert tree_fingerprint(tmp_path / "nas") == before  # the NAS is never written


def test_pydicom_corpus_every_readable_file_keeps_its_pixels(corpus):
    source, records = _records(corpus)
    checked = 0
    syntaxes = set()
    for rec in records:
        original = pydicom.dcmread(corpus / rec.file_path, force=True)
        try:
            sent = pydicom.dcmread(io.BytesIO(source.dicom_bytes(rec, SEND_AS)))
        except Exception as exc:  # noqa: BLE001 - a file whose header pydicom cannot even re-read is named
            pytest.fail(f"{rec.file_path}: {exc}")
        _same_except_identity(original, sent)
        if "PixelData" in original:
            assert sent.PixelData == original.PixelData, rec.file_path
        syntaxes.add(sent.file_meta.TransferSyntaxUID)
        checked += 1
    assert checked > 50
    # Big endian, implicit VR, deflated and encapsulated (JPEG, RLE) files were all among them.
    assert {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5"} <= syntaxes
