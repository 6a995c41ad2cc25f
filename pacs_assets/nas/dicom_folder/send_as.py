"""A DICOM file sent under another patient identity (an ID domain's prefix, or an operator's decision).

The upload must carry the PatientID Orthanc keys the patient by, the Issuer of Patient ID and the NAS's own
ID in Other Patient IDs Sequence, without touching the file on the NAS and without holding its pixels in
memory. So the header (everything before Pixel Data) is read, changed and written again by pydicom in the
file's own encoding, and the Pixel Data element and whatever follows it are streamed from the NAS file
unchanged (nas/body.py). A deflated file (its whole dataset is compressed) is the one exception: it is
rebuilt in memory, which is fine for the small files that use that transfer syntax.
"""

from __future__ import annotations

import os

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from pacs_assets.errors import UploadBodyError
from pacs_assets.nas.base import FileRecord, SendAs
from pacs_assets.nas.body import UploadBody
from pacs_assets.nas.names import open_nas, stat_nas

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def apply_identity(ds: Dataset, send_as: SendAs) -> None:
    """Set the patient identity of ``send_as`` on a dataset (the header of the copy we send)."""
    ds.PatientID = send_as.patient_id
    ds.IssuerOfPatientID = send_as.issuer
    item = Dataset()
    item.PatientID = send_as.original_id
    item.IssuerOfPatientID = send_as.original_issuer
    item.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [item]
    if 0x00100000 in ds:  # a retired group length would now be wrong
        del ds[0x00100000]


def _meta_for(record: FileRecord, ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    old = getattr(ds, "file_meta", None)
    meta.MediaStorageSOPClassUID = getattr(old, "MediaStorageSOPClassUID", None) or record.sop_class_uid
    meta.MediaStorageSOPInstanceUID = getattr(old, "MediaStorageSOPInstanceUID", None) or record.sop_instance_uid
    meta.TransferSyntaxUID = getattr(old, "TransferSyntaxUID", None) or record.transfer_syntax_uid
    return meta


def _encoding(ds: Dataset, meta: FileMetaDataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) as the dataset's bytes really are: a file whose meta says explicit VR but
    whose elements are implicit (pydicom reads it with a warning) must be written back implicit, or its head
    would not match the Pixel Data streamed after it."""
    for elem in ds.elements():
        if isinstance(elem, RawDataElement):
            return elem.is_implicit_VR, elem.is_little_endian
    if ds.original_encoding[0] is not None:
        return ds.original_encoding
    syntax = UID(meta.TransferSyntaxUID)
    return syntax.is_implicit_VR, syntax.is_little_endian


def body_with_identity(path: str | os.PathLike, record: FileRecord, send_as: SendAs) -> UploadBody:
    """The file at ``path`` as an upload body whose header carries ``send_as``; Pixel Data streamed from the NAS."""
    size = stat_nas(path).st_size
    try:
        with open_nas(path) as fh:
            headerless = record.file_format == "DICOM-headerless"
            ds = dcmread(fh, stop_before_pixels=True, force=headerless)
            tail_at = fh.tell()  # pydicom stops *before* the Pixel Data element: it is where the tail begins
    except Exception as exc:  # noqa: BLE001 - a file that changed since indexing: the attempt says so
        raise UploadBodyError(f"cannot read the DICOM header to send it under its PACS patient ID: {exc}") from None
    meta = _meta_for(record, ds)
    if UID(meta.TransferSyntaxUID) == DeflatedExplicitVRLittleEndian:
        with open_nas(path) as fh:
            full = dcmread(fh)
        apply_identity(full, send_as)
        full.file_meta = meta
        buf = DicomBytesIO()
        full.save_as(buf, enforce_file_format=True)
        return UploadBody([buf.getvalue()])
    implicit, little = _encoding(ds, meta)
    apply_identity(ds, send_as)
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    buf.is_implicit_VR, buf.is_little_endian = implicit, little
    write_dataset(buf, ds)
    return UploadBody([buf.getvalue(), (path, tail_at, size - tail_at)])
