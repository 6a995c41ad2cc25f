"""Reading one DICOM file's header into a FileRecord: fast, read-only, and honest about bad files.

Runs in worker processes (see dicom_folder.py), so it only takes and returns plain data.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from functools import cache, lru_cache

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from pacs_assets.nas.base import FAILED, SKIPPED, FileRecord
from pacs_assets.nas.dicom_folder.raw_header import FIRST_READ, NotPlain, decode_plain, read_raw_header
from pacs_assets.nas.names import join, open_nas
from pacs_assets.nas.walk import is_transient, retrying

_PYDICOM_LOG = logging.getLogger("pydicom")
# Appended to the change token of a file the share would not read (EIO...): no later walk finds its token in
# the scan cache, so the file is read again instead of staying failed until it changes.
UNREAD_TOKEN = "-unread"
PIXEL_DATA_TAG = (0x7FE0, 0x0010)
# VRs whose explicit-VR element header has 2 reserved bytes and a 4-byte length.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
UNDEFINED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
# A headerless file starts with a group 0008 (or 0002) element; anything else is not DICOM.
HEADERLESS_STARTS = (b"\x08\x00", b"\x02\x00", b"\x00\x08")

_STRING_FIELDS = {
    "patient_id": "PatientID",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_instance_uid": "StudyInstanceUID",
    "study_date": "StudyDate",
    "study_description": "StudyDescription",
    "accession_number": "AccessionNumber",
    "series_instance_uid": "SeriesInstanceUID",
    "series_date": "SeriesDate",
    "modality": "Modality",
    "series_description": "SeriesDescription",
    "sop_instance_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
}
_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_INT_FIELDS = {"series_number": "SeriesNumber", "instance_number": "InstanceNumber",
               "number_of_frames": "NumberOfFrames", "rows": "Rows", "columns": "Columns"}


@lru_cache(maxsize=64)
def compression_name(transfer_syntax: str | None) -> str:
    if not transfer_syntax:
        return "unknown"
    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return "unknown"
    if not uid.is_compressed:
        return "deflated" if uid.is_deflated else "uncompressed"
    return uid.name  # e.g. "JPEG 2000 Image Compression (Lossless Only)"


def _value(ds, keyword: str):
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value must not cost us the whole file
        return None
    if value is None or value == "":
        return None
    return value



@cache
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    return tag, dictionary_VR(tag)


def _fast_value(ds, keyword: str):
    """What ``_value(ds, keyword)`` returns, decoded straight from the raw bytes for the common cases.

    pydicom's attribute access converts, validates and re-stores each element (~45 us each); for a
    plain ASCII value of a known VR the bytes say all there is. Anything unusual takes the slow path.
    """
    tag, vr = _tag_vr(keyword)
    try:
        elem = ds.get_item(tag)  # the raw element, not converted
    except Exception:  # noqa: BLE001
        return _value(ds, keyword)
    if elem is None:
        return None
    if type(elem) is not RawDataElement or elem.value is None or (elem.VR is not None and elem.VR != vr):
        return _value(ds, keyword)
    try:
        return decode_plain(elem.value, vr, elem.is_little_endian)
    except NotPlain:
        return _value(ds, keyword)


@lru_cache(maxsize=64)
def _is_deflated(ts: str) -> bool:
    return UID(ts).is_deflated


def _pixel_data_problem(fp, implicit: bool, little: bool, value, file_size: int, start: int) -> str | None:
    """Check that the Pixel Data element at ``start`` is complete (``value(keyword)`` reads the dataset's
    values). Returns a reason if truncated."""
    if start >= file_size:
        return None  # no pixel data (e.g. a structured report)
    fp.seek(start)
    head = fp.read(12)
    endian = "<" if little else ">"
    if len(head) < 8 or struct.unpack(endian + "HH", head[:4]) != PIXEL_DATA_TAG:
        return None  # stopped at another pixel tag; nothing we know how to check
    # Trust the bytes over the declared encoding: some writers put implicit elements in explicit files.
    if implicit or not head[4:6].isalpha():
        length, header = struct.unpack(endian + "L", head[4:8])[0], 8
    elif head[4:6] in LONG_VRS:
        length, header = struct.unpack(endian + "L", head[8:12])[0], 12
    else:
        length, header = struct.unpack(endian + "H", head[6:8])[0], 8
    if length == UNDEFINED_LENGTH:
        return _encapsulated_problem(fp, start + header, file_size, endian)
    available = file_size - start - header
    if available < length:
        return f"truncated: Pixel Data holds {available} of {length} bytes"
    rows, cols = value("Rows"), value("Columns")
    bits, samples = value("BitsAllocated"), value("SamplesPerPixel") or 1
    try:
        frames = int(value("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if rows and cols and bits:
        expected = rows * cols * samples * frames * bits // 8
        photometric = str(value("PhotometricInterpretation") or "")
        if photometric.endswith(("_422", "_420")):
            expected = expected * 2 // 3 if photometric.endswith("422") else expected // 2
        if length < expected:
            return f"truncated: Pixel Data holds {length} bytes, the image needs {expected}"
    return None


def _encapsulated_problem(fp, pos: int, file_size: int, endian: str) -> str | None:
    """Walk the fragment items (one seek each) up to the sequence delimiter; running off the end = truncated."""
    while pos + 8 <= file_size:
        fp.seek(pos)
        group, element, length = struct.unpack(endian + "HHL", fp.read(8))
        if (group, element) == (0xFFFE, 0xE0DD):
            return None
        if (group, element) != (0xFFFE, 0xE000):
            return f"corrupt encapsulated Pixel Data: unexpected tag ({group:04X},{element:04X}) at byte {pos}"
        pos += 8 + length
    return "truncated: encapsulated Pixel Data ends before its sequence delimiter"


def read_dicom_file(nas_id: str, root: str, rel_path: str, size: int, mtime_ns: int, *,
                    pydicom_only: bool = False) -> FileRecord:
    """Classify and read one file. Never raises for a bad file: the reason goes into the record."""
    return read_dicom_files(nas_id, root, [(rel_path, size, mtime_ns)], pydicom_only=pydicom_only)[0]


def read_dicom_files(nas_id: str, root: str, items: list[tuple[str, int, int]], threads: int = 1, *,
                     pydicom_only: bool = False) -> list[FileRecord]:
    """``read_dicom_file`` of each (rel_path, size, mtime_ns), in order, ``threads`` at a time. On a network
    share each file costs a few round trips (open, reads): overlapping them hides that latency (docs/speed.md,
    slow shares); the threads wait in the kernel, not on the GIL. ``pydicom_only`` skips the raw reader
    (raw_header.py): the reference its verdicts are tested against."""
    # pydicom warns (and logs) about every odd value; the record's reason is where problems go. Warning filters
    # are process-wide, so they are set once here, never per thread.
    if _PYDICOM_LOG.level != logging.ERROR:
        _PYDICOM_LOG.setLevel(logging.ERROR)

    def read(part: list[tuple[str, int, int]]) -> list[FileRecord]:
        return [_read_one(nas_id, root, *item, pydicom_only) for item in part]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if threads < 2 or len(items) < 2:
            return read(items)
        from concurrent.futures import ThreadPoolExecutor

        # One run of files per thread, not one task per file: a task costs as much as reading a small file.
        step = -(-len(items) // min(threads, len(items)))
        with ThreadPoolExecutor(min(threads, len(items))) as pool:
            return [rec for part in pool.map(read, [items[i:i + step] for i in range(0, len(items), step)])
                    for rec in part]


def _read_one(nas_id: str, root: str, rel_path: str, size: int, mtime_ns: int, pydicom_only: bool) -> FileRecord:
    try:
        return retrying(lambda: _read(nas_id, root, rel_path, size, mtime_ns, pydicom_only))
    except OSError as exc:  # a network share kept failing: say so, and read it again on the next walk
        return FileRecord(nas_id=nas_id, file_path=rel_path, size=size, mtime_ns=mtime_ns,
                          change_token=f"{size}-{mtime_ns}{UNREAD_TOKEN}", status=FAILED,
                          reason=f"cannot read the file: {exc.strerror or exc} (the share kept failing)")
    except Exception as exc:  # noqa: BLE001 - an awkward file must never stop the run
        return FileRecord(nas_id=nas_id, file_path=rel_path, size=size, mtime_ns=mtime_ns,
                          change_token=f"{size}-{mtime_ns}", status=FAILED,
                          reason=f"unreadable DICOM header: {type(exc).__name__}: {str(exc)[:200]}")


def _read(nas_id: str, root: str, rel_path: str, size: int, mtime_ns: int, pydicom_only: bool) -> FileRecord:
    rec = FileRecord(nas_id=nas_id, file_path=rel_path, size=size, mtime_ns=mtime_ns,
                     change_token=f"{size}-{mtime_ns}")
    if size == 0:
        rec.status, rec.reason = SKIPPED, "empty file (0 bytes)"
        return rec
    try:
        with open_nas(join(root, rel_path)) as fp:
            asked = max(132, min(size, FIRST_READ))
            head = fp.read(asked)
            has_preamble = head[128:132] == b"DICM"
            if not has_preamble and not head.startswith(HEADERLESS_STARTS):
                rec.status, rec.reason = SKIPPED, "not a DICOM file (no DICM marker and no DICOM header)"
                return rec
            if not (has_preamble and not pydicom_only and _read_plain(fp, head, asked, rec)):
                fp.seek(0)
                _read_pydicom(fp, rec, has_preamble)
    except PermissionError:
        rec.status, rec.reason = FAILED, "permission denied: cannot read the file"
    except OSError as exc:
        if is_transient(exc):
            raise  # read_dicom_file retries it
        rec.status, rec.reason = FAILED, f"cannot read the file: {exc.strerror or exc}"
    return rec


def _read_plain(fp, head: bytes, asked: int, rec: FileRecord) -> bool:
    """Fill ``rec`` through the raw reader; False (``rec`` untouched) when the file is for pydicom to judge."""
    try:
        raw = read_raw_header(fp, head, asked)
    except NotPlain:
        return False
    fast, slow = raw.values.get, raw.values.get
    if raw.unplain:  # pydicom converts the elements we need (and only those), as it would in the whole file
        ds = read_dataset(io.BytesIO(b"".join(raw.elements)), raw.implicit, True)
        if ds.original_encoding[0] != raw.implicit:
            return False
        fast, slow = (lambda keyword: _fast_value(ds, keyword)), (lambda keyword: _value(ds, keyword))
    if not all(fast(k) for k in _UIDS):
        return False  # pydicom says what such a file is (DICOMDIR, not an image...)
    _fill(rec, "DICOM", raw.transfer_syntax, fast)
    if not _is_deflated(raw.transfer_syntax):
        problem = _pixel_data_problem(fp, raw.implicit, True, slow, rec.size, raw.pixel_start)
        if problem:
            rec.status, rec.reason = FAILED, problem
    return True


def _read_pydicom(fp, rec: FileRecord, has_preamble: bool) -> None:
    try:
        ds = dcmread(fp, stop_before_pixels=True, force=not has_preamble)
        pixel_start = fp.tell()
    except (InvalidDicomError, EOFError, ValueError, struct.error, OverflowError, KeyError, TypeError) as exc:
        rec.status = FAILED if has_preamble else SKIPPED
        rec.reason = (f"corrupt DICOM: {str(exc)[:200]}" if has_preamble
                      else "not a DICOM file (unreadable header)")
        return
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
    if ts is None:  # headerless: pydicom guessed the encoding
        implicit, little = ds.original_encoding
        ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    _fill(rec, "DICOM" if has_preamble else "DICOM-headerless", ts, lambda keyword: _fast_value(ds, keyword))
    missing = [k for k in _UIDS if not _fast_value(ds, k)]
    if missing:
        if not has_preamble:
            rec.status, rec.reason = SKIPPED, "not a DICOM file (no DICOM UIDs)"
        elif _value(ds, "DirectoryRecordSequence") is not None:
            rec.status, rec.reason = SKIPPED, "DICOMDIR media directory, not an image"
        else:
            rec.status, rec.reason = FAILED, f"DICOM file without {', '.join(missing)}"
        return
    if not _is_deflated(ts):  # a deflated dataset was read through a decompressor: no offsets
        problem = _pixel_data_problem(fp, *ds.original_encoding, lambda keyword: _value(ds, keyword), rec.size,
                                      pixel_start)
        if problem:
            rec.status, rec.reason = FAILED, problem


def _fill(rec: FileRecord, file_format: str, ts: str, value) -> None:
    """The record's header fields from ``value(keyword)`` (None when absent or empty)."""
    rec.file_format = file_format
    rec.transfer_syntax_uid = ts
    rec.compression_type = compression_name(ts)
    for field, keyword in _STRING_FIELDS.items():
        found = value(keyword)
        setattr(rec, field, str(found).strip() if found is not None else None)
    name = value("PatientName")
    rec.patient_name = str(name) if name is not None else None
    for field, keyword in _INT_FIELDS.items():
        found = value(keyword)
        try:
            setattr(rec, field, int(found) if found is not None else None)
        except (TypeError, ValueError):
            setattr(rec, field, None)
