"""JPEG 2000 files as DICOM, without decoding: read the headers, wrap the codestream, check it losslessly.

DICOM's JPEG 2000 transfer syntaxes carry the bare J2K codestream (it starts ``FF 4F FF 51``), which in
a JP2 file is the payload of the ``jp2c`` box. ``codestream_info`` walks the JP2 boxes and the
codestream's main header (SIZ, COD, COC) in pure Python, reading a few hundred bytes plus the last few;
``wrap_as_dicom`` puts the codestream, byte for byte, into encapsulated Pixel Data. Only
``verify_lossless`` decodes (pydicom + pylibjpeg-openjpeg for the DICOM, glymur for the JP2).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from pathlib import Path

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"  # JPEG 2000 Image Compression (Lossless Only)
JPEG2000_LOSSY = "1.2.840.10008.1.2.4.91"  # JPEG 2000 Image Compression
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
SOC_SIZ = b"\xff\x4f\xff\x51"
EOC = b"\xff\xd9"
SOT, COD, COC = 0xFF90, 0xFF52, 0xFF53
# colr box enumerated colour spaces (ISO 15444-1 I.5.3.3)
ENUM_CS = {16: "sRGB", 17: "greyscale", 18: "sYCC"}


class Jpeg2000Error(ValueError):
    """A file that is not a usable JPEG 2000 image; the message is one sentence."""


@dataclasses.dataclass(frozen=True)
class J2kInfo:
    rows: int
    columns: int
    samples_per_pixel: int
    bits_stored: int
    signed: bool
    reversible: bool  # every component uses the 5/3 reversible wavelet (no 9/7 anywhere)
    codestream_offset: int
    codestream_length: int
    container: str = "jp2"  # jp2 (boxed file) | j2k (raw codestream)
    mct: bool = False  # multiple component transform (RCT for 5/3, ICT for 9/7) on components 0-2
    levels: int = 0  # wavelet decomposition levels (resolution levels - 1)
    layers: int = 1
    colorspace: str | None = None  # from the JP2 colr box, when enumerated

    @property
    def transfer_syntax_uid(self) -> str:
        return JPEG2000_LOSSLESS if self.reversible else JPEG2000_LOSSY

    @property
    def compression_type(self) -> str:
        return "JPEG2000 lossless" if self.reversible else "JPEG2000 lossy"

    @property
    def photometric_interpretation(self) -> str:
        if self.samples_per_pixel == 1:
            return "MONOCHROME2"
        if self.mct:  # PS3.5 8.2.4: the codestream's colour transform decides
            return "YBR_RCT" if self.reversible else "YBR_ICT"
        return "YBR_FULL" if self.colorspace == "sYCC" else "RGB"

    @property
    def bits_allocated(self) -> int:
        return 8 if self.bits_stored <= 8 else 16


# -- reading the headers ----------------------------------------------------------------------------
def _boxes(f, start: int, end: int, name: str):
    """Yield (type, payload_offset, payload_length) for the boxes in [start, end)."""
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise Jpeg2000Error(f"{name} is truncated inside a JP2 box header at byte {pos}.")
        length, kind = struct.unpack(">I4s", head)
        header = 8
        if length == 1:  # 64-bit length follows
            ext = f.read(8)
            if len(ext) < 8:
                raise Jpeg2000Error(f"{name} is truncated inside a JP2 box header at byte {pos}.")
            length, header = struct.unpack(">Q", ext)[0], 16
        elif length == 0:  # box runs to the end of the file
            length = end - pos
        if length < header:
            raise Jpeg2000Error(f"{name} is corrupt: the JP2 box at byte {pos} declares an impossible length {length}.")
        if pos + length > end:
            raise Jpeg2000Error(
                f"{name} is truncated: its '{kind.decode('latin-1')}' box needs {length} bytes at byte {pos} "
                f"but the file ends after {end - pos}.")
        yield kind, pos + header, length - header
        pos += length


def _read_exact(f, n: int, name: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise Jpeg2000Error(f"{name} is truncated inside the codestream's {what}.")
    return data


def _main_header(f, offset: int, length: int, name: str) -> dict:
    """Parse SIZ, COD and COC from the codestream's main header (up to the first SOT)."""
    f.seek(offset)
    if _read_exact(f, 4, name, "start") != SOC_SIZ:
        raise Jpeg2000Error(f"{name} is corrupt: its codestream does not start with the SOC and SIZ markers.")
    lsiz = struct.unpack(">H", _read_exact(f, 2, name, "SIZ marker"))[0]
    if lsiz < 41:
        raise Jpeg2000Error(f"{name} is corrupt: its SIZ marker is too short.")
    siz = _read_exact(f, lsiz - 2, name, "SIZ marker")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">4I", siz[2:18])
    csiz = struct.unpack(">H", siz[34:36])[0]
    comps = [siz[36 + 3 * i: 39 + 3 * i] for i in range(csiz)]
    if csiz == 0 or len(comps[-1]) < 3:
        raise Jpeg2000Error(f"{name} is corrupt: its SIZ marker lists {csiz} components but does not describe them.")
    if len({c[0] for c in comps}) != 1:
        raise Jpeg2000Error(f"{name} has components of different bit depths, which DICOM cannot carry.")
    if any(c[1] != 1 or c[2] != 1 for c in comps):
        raise Jpeg2000Error(f"{name} has subsampled components, which the DICOM wrapping does not support.")
    info = {"columns": xsiz - xosiz, "rows": ysiz - yosiz, "samples_per_pixel": csiz,
            "bits_stored": (comps[0][0] & 0x7F) + 1, "signed": bool(comps[0][0] & 0x80)}
    xforms: list[int] = []
    end = offset + length
    while True:  # the remaining main-header marker segments, each <marker><length><payload>
        pos = f.tell()
        if pos + 4 > end:
            raise Jpeg2000Error(f"{name} is corrupt: its codestream main header has no tile (SOT) marker.")
        marker, seglen = struct.unpack(">HH", _read_exact(f, 4, name, "main header"))
        if marker == SOT:
            break
        if marker >> 8 != 0xFF or seglen < 2:
            raise Jpeg2000Error(f"{name} is corrupt: invalid marker 0x{marker:04X} in the codestream main header.")
        body = _read_exact(f, seglen - 2, name, "main header")
        if marker == COD and len(body) >= 10:
            info.update(layers=struct.unpack(">H", body[2:4])[0], mct=bool(body[4]), levels=body[5])
            xforms.insert(0, body[9])  # the default for all components
        elif marker == COC:
            body = body[1 if csiz < 257 else 2:]  # skip the component index
            if len(body) >= 6:
                xforms.append(body[5])
    if not xforms:
        raise Jpeg2000Error(f"{name} is corrupt: its codestream has no COD marker.")
    info["reversible"] = all(x == 1 for x in xforms)  # 1 = 5/3 reversible, 0 = 9/7 irreversible
    return info


def codestream_info(path: Path | str) -> J2kInfo:
    """Header facts of a JP2 file or raw J2K codestream; raise Jpeg2000Error (one sentence) if unusable."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        head = f.read(12)
        colorspace = None
        if head[:4] == SOC_SIZ:
            container, offset, length = "j2k", 0, size
        elif head == JP2_SIGNATURE:
            container, offset, length = "jp2", None, 0
            for kind, start, n in _boxes(f, 0, size, name):
                if kind == b"jp2h":
                    for sub, s_start, s_n in _boxes(f, start, start + n, name):
                        if sub == b"pclr":
                            raise Jpeg2000Error(f"{name} uses a colour palette, which the DICOM wrapping "
                                                "does not support.")
                        if sub == b"colr" and s_n >= 7:
                            f.seek(s_start)
                            colr = f.read(7)
                            if colr[0] == 1:
                                colorspace = ENUM_CS.get(struct.unpack(">I", colr[3:7])[0])
                elif kind == b"jp2c":
                    offset, length = start, n
                    break  # boxes after the codestream (xml, uuid) do not matter
            if offset is None:
                raise Jpeg2000Error(f"{name} is corrupt: it has JP2 boxes but no codestream (jp2c) box.")
        elif not head:
            raise Jpeg2000Error(f"{name} is empty.")
        else:
            raise Jpeg2000Error(f"{name} is not a JPEG 2000 file (no JP2 signature and no codestream start marker).")
        header = _main_header(f, offset, length, name)
        f.seek(max(offset, offset + length - 8))
        tail = f.read(8)
        # Zero padding after EOC happens (codestreams cut out of DICOM fragments are padded to even length).
        if not tail.rstrip(b"\0").endswith(EOC):
            raise Jpeg2000Error(f"{name} is truncated: its codestream does not end with the EOC marker (FFD9).")
        length -= len(tail) - len(tail.rstrip(b"\0"))
    return J2kInfo(codestream_offset=offset, codestream_length=length, container=container,
                   colorspace=colorspace, **header)


def read_codestream(path: Path | str, info: J2kInfo | None = None) -> bytes:
    """The bare J2K codestream of a JP2 (the jp2c payload) or .j2k file, checked as ``codestream_info`` does."""
    info = info or codestream_info(path)
    with open(path, "rb") as f:
        f.seek(info.codestream_offset)
        data = f.read(info.codestream_length)
    if len(data) != info.codestream_length or not data.endswith(EOC):
        raise Jpeg2000Error(f"{Path(path).name} changed while it was being read.")
    return data
