"""The DICOM file around a JPEG 2000 codestream, written by hand without decoding (and its lossless check).

The codestream goes, byte for byte, into encapsulated Pixel Data (transfer syntax .90 when reversible,
.91 when lossy, as J2kInfo says). ``dicom_around_codestream`` gives the bytes before and after it, so the
upload can stream the codestream from the NAS between them.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from pacs_assets.nas.firebird_jpeg2000.jpeg2000 import SECONDARY_CAPTURE, J2kInfo

# -- DICOM ---------------------------------------------------------------------------------------------
# The DICOM file is written by hand (explicit VR little endian, PS3.5 7.1.2): building and writing a
# pydicom Dataset costs many times what copying a small file does (docs/speed.md, the wrap's row).
# The tests read every wrapped file back with pydicom.
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def _element(tag: int, vr: str, value: object) -> bytes:
    if value is None or value == "":
        raw = b""
    elif vr in _BINARY:
        values = value if isinstance(value, (list, tuple)) else [value]
        raw = struct.pack(f"<{len(values)}{_BINARY[vr]}", *values)
    elif vr == "OB":
        raw = bytes(value)
    elif vr == "SQ":  # a list of item dicts, each item of defined length
        raw = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
                       for item in (_elements(item) for item in value))
    elif vr in _LONG_VRS:
        raise ValueError(f"DICOM attribute {tag:08X} has VR {vr}, which wrap_as_dicom does not write.")
    else:  # text VRs, all UTF-8 under Specific Character Set ISO_IR 192
        items = value if isinstance(value, (list, tuple)) else [value]
        raw = "\\".join(str(v) for v in items).encode("utf-8")
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    if vr in _LONG_VRS:
        return head + struct.pack("<HI", 0, len(raw)) + raw
    if len(raw) > 0xFFFF:
        raise ValueError(f"DICOM attribute {tag:08X} ({vr}) is too long: {len(raw)} bytes.")
    return head + struct.pack("<H", len(raw)) + raw


def _elements(attributes: dict[str, object]) -> bytes:
    tagged = []
    for keyword, value in attributes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword.")
        tagged.append((tag, _element(tag, dictionary_VR(tag), value)))
    return b"".join(data for _, data in sorted(tagged))


def wrap_as_dicom(codestream: bytes, info: J2kInfo, attributes: dict[str, object]) -> bytes:
    """A DICOM Part 10 file holding ``codestream`` unchanged as encapsulated Pixel Data (no decode)."""
    head, tail = dicom_around_codestream(info, attributes)
    return head + codestream + tail


def dicom_around_codestream(info: J2kInfo, attributes: dict[str, object]) -> tuple[bytes, bytes]:
    """The bytes before and after the codestream in the DICOM file that wraps it: the upload streams the
    codestream from the NAS between them (nas/body.py), never holding it in memory.

    ``attributes`` are DICOM keyword -> value (PatientName, StudyInstanceUID, SOPInstanceUID, ...);
    None values are written empty. The SOP class defaults to Secondary Capture.
    """
    length = info.codestream_length
    ds: dict[str, object] = {"SpecificCharacterSet": "ISO_IR 192",  # UTF-8: catalog names are often not ASCII
                             "SOPClassUID": SECONDARY_CAPTURE, "ConversionType": "WSD"}
    # Type 2 attributes of the patient/study/series/image modules: present, possibly empty.
    ds.update(dict.fromkeys(("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                             "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber",
                             "InstanceNumber", "PatientOrientation")))
    # Laterality (General Series, Type 2C): required when the body part is a paired structure and no Image
    # Laterality is given. A catalog names neither body part nor side, so the wrap cannot rule a paired one out:
    # present and empty says "unknown", as the standard allows (Image Laterality "U" would claim "unpaired").
    # dciodvfy (dicom3tools) accepts it so and reports it missing otherwise.
    ds["Laterality"] = None
    ds.update(attributes)
    ds["Modality"] = ds.get("Modality") or "OT"
    ds.update(SamplesPerPixel=info.samples_per_pixel, PhotometricInterpretation=info.photometric_interpretation,
              Rows=info.rows, Columns=info.columns, BitsAllocated=info.bits_allocated,
              BitsStored=info.bits_stored, HighBit=info.bits_stored - 1, PixelRepresentation=int(info.signed))
    if info.samples_per_pixel > 1:
        ds["PlanarConfiguration"] = 0
    if info.reversible:
        ds["LossyImageCompression"] = "00"
    else:
        raw = info.rows * info.columns * info.samples_per_pixel * info.bits_allocated // 8
        ds.update(LossyImageCompression="01", LossyImageCompressionMethod="ISO_15444_1",
                  LossyImageCompressionRatio=f"{raw / max(length, 1):.2f}")
    if not ds.get("SOPInstanceUID"):
        raise ValueError("wrapping a codestream as DICOM needs a SOPInstanceUID attribute.")

    meta = b"".join(_element(tag, vr, value) for tag, vr, value in (
        (0x00020001, "OB", b"\0\1"),
        (0x00020002, "UI", ds["SOPClassUID"]),
        (0x00020003, "UI", ds["SOPInstanceUID"]),
        (0x00020010, "UI", info.transfer_syntax_uid),
        (0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID),
    ))
    pad = b"\0" if length % 2 else b""  # items have even lengths
    head = b"".join((
        b"\0" * 128, b"DICM", _element(0x00020000, "UL", len(meta)), meta, _elements(ds),
        # Pixel Data, undefined length: an empty Basic Offset Table item, one fragment, a delimiter.
        struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF),
        struct.pack("<HHI", 0xFFFE, 0xE000, 0),
        struct.pack("<HHI", 0xFFFE, 0xE000, length + len(pad)),
    ))
    return head, pad + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def verify_lossless(dicom_bytes: bytes, jp2_path: Path | str) -> tuple[bool, str]:
    """Decode the DICOM (pydicom) and the source file (glymur) and compare them pixel for pixel."""
    import glymur
    import numpy as np
    from pydicom import dcmread

    try:
        ours = dcmread(io.BytesIO(dicom_bytes)).pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the answer
        return False, f"The DICOM pixel data does not decode: {str(exc).splitlines()[0]}."
    try:
        theirs = glymur.Jp2k(str(jp2_path))[:]
    except Exception as exc:  # noqa: BLE001
        return False, f"The source file {Path(jp2_path).name} does not decode: {str(exc).splitlines()[0]}."
    if ours.shape != theirs.shape:
        return False, f"The decoded shapes differ: DICOM {ours.shape}, source {theirs.shape}."
    differing = int(np.count_nonzero(ours != theirs))
    if differing:
        diff = int(np.abs(ours.astype(np.int64) - theirs.astype(np.int64)).max())
        return False, f"{differing} of {ours.size} samples differ (largest difference {diff})."
    return True, f"All {ours.size} samples are identical ({ours.shape}, {ours.dtype})."
