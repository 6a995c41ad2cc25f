"""Streamed uploads: a file goes from the NAS to Orthanc in bounded chunks, whatever its size, including
the File Meta group added to a headerless file and the DICOM wrapped around a JPEG 2000 codestream."""

from __future__ import annotations

import io
import os
import tracemalloc

import numpy as np
import pydicom
import pydicom.dataset
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pacs_assets.errors import UploadBodyError
from pacs_assets.nas.base import FileRecord
from pacs_assets.nas.body import CHUNK_SIZE, UploadBody
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.nas.firebird_jpeg2000.dicom_wrap import (
    dicom_around_codestream,
    wrap_as_dicom,
)
from pacs_assets.nas.firebird_jpeg2000.jpeg2000 import codestream_info, read_codestream
from pacs_assets.orthanc.client import OrthancClient

CT = "1.2.840.10008.5.1.4.1.1.2"


def ct_dataset(rows: int = 64, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "STREAM1", "Test^Stream", "CT"
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (frames, rows, rows), dtype=np.uint16).tobytes()
    return ds


def test_a_body_is_read_in_bounded_chunks_and_again_for_a_retry(tmp_path):
    blob = tmp_path / "blob"
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    blob.write_bytes(data)
    body = UploadBody([b"abc", (blob, 10, len(data) - 20), b"", b"xyz"])
    assert body.length == len(data) - 20 + 6
    chunks = list(body.chunks())
    assert all(len(c) == CHUNK_SIZE for c in chunks[:-1]) and 0 < len(chunks[-1]) <= CHUNK_SIZE
    assert b"".join(chunks) == b"abc" + data[10:-10] + b"xyz" == body.read_all()  # re-readable
    assert len(list(UploadBody([b"\0" * 132, (blob, 0, 5000), b"end"]).chunks())) == 1  # a small file: one send
    blob.write_bytes(data[:100000])  # the file shrank after indexing
    with pytest.raises(UploadBodyError, match="changed since indexing"):
        body.read_all()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_a_headerless_file_gets_its_file_meta_and_is_otherwise_sent_unchanged(tmp_path, syntax):
    ds = ct_dataset()
    path = tmp_path / "nas" / "headerless.dcm"
    path.parent.mkdir()
    ds.save_as(path, enforce_file_format=False, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM"
    record = FileRecord(nas_id="ct", file_path="headerless.dcm", file_format="DICOM-headerless",
                        transfer_syntax_uid=syntax, sop_class_uid=CT, sop_instance_uid=ds.SOPInstanceUID)
    data = DicomFolderSource("ct", tmp_path / "nas").upload_body(record).read_all()
    assert data.endswith(raw) and data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))  # a proper Part 10 file, no force
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back == pydicom.dcmread(path, force=True)


def test_the_jpeg2000_wrapper_streams_the_same_bytes_as_the_in_memory_wrap(tmp_path):
    import glymur

    for rows in (64, 65):  # an even and (likely) an odd codestream length
        path = tmp_path / f"img{rows}.j2k"
        glymur.Jp2k(str(path), data=np.random.default_rng(rows).integers(0, 4096, (rows, rows), dtype=np.uint16))
        info = codestream_info(path)
        attrs = {"SOPInstanceUID": generate_uid(), "StudyInstanceUID": generate_uid(),
                 "SeriesInstanceUID": generate_uid(), "PatientID": "J2K", "PatientName": "Test^Wrap"}
        head, tail = dicom_around_codestream(info, attrs)
        streamed = UploadBody([head, (path, info.codestream_offset, info.codestream_length), tail]).read_all()
        assert streamed == wrap_as_dicom(read_codestream(path, info), info, attrs)


def test_uploading_a_big_file_holds_one_chunk_not_the_file(tmp_path, orthanc):
    ds = ct_dataset(rows=512, frames=128)  # 64 MiB of pixel data
    path = tmp_path / "multiframe.dcm"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    size = path.stat().st_size
    del ds
    assert size > 60 * 2**20
    client = OrthancClient(orthanc.url, orthanc.username, orthanc.password, timeout=120)
    client.system()
    tracemalloc.start()
    try:
        result = client.upload(UploadBody.of_file(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "imported", result
    assert peak < 4 * CHUNK_SIZE, f"the upload held {peak / 2**20:.1f} MiB of Python memory for a {size >> 20} MiB file"
    stored = client.instance_file(result.orthanc_instance_id)
    assert len(stored) == size and stored == path.read_bytes()
    import hashlib

    assert result.file_hash == hashlib.sha1(stored).hexdigest()
