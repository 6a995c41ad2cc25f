"""The header values the index needs, read straight from the bytes of a file in the plain shape.

pydicom builds a Dataset of every element before Pixel Data (~0.4 ms for a small CT file, twice the plain
read loop once the values are decoded). The index needs ~20 top-level values and where Pixel Data starts.
For a file in the plain shape (Part 10 preamble; explicit-VR little-endian meta group; an implicit- or
explicit-VR little-endian dataset, not deflated; known VRs; every element inside the file; ascending tags)
one pass over the bytes finds them and decodes plain ASCII values; the few elements it needs that are not
plain are handed to pydicom's own reader on their own (``RawHeader.elements``). A file in any other shape
raises ``NotPlain`` and is read with pydicom whole, so every file's verdict stays the one pydicom gives (the
tests compare both readers on the sample NAS and on pydicom's own test files).
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from struct import Struct

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, PrivateTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

# The first read: a small file whole, a big one's header (the rest is read only if the header goes on).
FIRST_READ = 16 * 1024
# A header (everything before Pixel Data) longer than this goes to pydicom: the walk holds what it read in memory.
MAX_HEADER = 16 * 1024 * 1024
KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
            "StudyDescription", "AccessionNumber", "SeriesInstanceUID", "SeriesDate", "Modality",
            "SeriesDescription", "SOPInstanceUID", "SOPClassUID", "SeriesNumber", "InstanceNumber",
            "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_WANTED = {tag_for_keyword(k): (k, dictionary_VR(tag_for_keyword(k))) for k in KEYWORDS}
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # where pydicom's stop_before_pixels stops
_VRS = frozenset(v.encode() for v in VR)
_LONG = frozenset(v.encode() for v in EXPLICIT_VR_LENGTH_32)
UNDEFINED = 0xFFFFFFFF
CHARSET = 0x00080005
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG_LENGTH = Struct("<HHL")  # implicit element header, item and delimiter headers
_EXPLICIT = Struct("<HH2sH")
_LONG_LENGTH = Struct("<L")

_ASCII_VRS = {"UI", "CS", "DA", "AS", "TM", "DT"}
_TEXT_VRS = {"LO", "SH", "PN"}
_IS_RE = re.compile(rb"^ *[+-]?[0-9]+ *$")


class NotPlain(Exception):
    """The file (or a value) is not in the plain shape: read it with pydicom."""


def decode_plain(raw: bytes, vr: str, little: bool = True):
    """The value of a plain element of dictionary VR ``vr`` (None when empty); NotPlain when pydicom's own
    conversion is needed (multi-valued, non-ASCII, escape sequences, odd lengths or padding)."""
    if not raw:
        return None
    if vr == "US":
        if len(raw) != 2:
            raise NotPlain
        return int.from_bytes(raw, "little" if little else "big")
    if b"\\" in raw or b"\x1b" in raw or not raw.isascii():
        raise NotPlain
    if vr == "IS":
        if not _IS_RE.match(raw.rstrip(b"\x00")):
            raise NotPlain
        return int(raw.rstrip(b"\x00"))
    if vr in _ASCII_VRS or vr in _TEXT_VRS:
        text = raw.decode("ascii").rstrip("\x00 ")
        if not text or text != text.strip() or "\x00" in text:
            raise NotPlain
        return text
    raise NotPlain


@dataclasses.dataclass(slots=True)
class RawHeader:
    transfer_syntax: str
    implicit: bool
    values: dict  # keyword -> decoded value (None when empty), for the KEYWORDS present at the top level
    pixel_start: int  # offset of the Pixel Data element, or of the end of the file when there is none
    # The encoded elements of KEYWORDS and the Specific Character Set, in file order, and whether a value in them
    # needs pydicom's conversion (non-ASCII text in the file's character set, several values, another VR).
    elements: list = dataclasses.field(default_factory=list)
    unplain: bool = False


class _Bytes:
    """The file's bytes from offset 0, read further only when the walk needs more."""

    __slots__ = ("fp", "data", "eof")

    def __init__(self, fp, head: bytes, asked: int):
        self.fp, self.data, self.eof = fp, head, len(head) < asked

    def grow(self, end: int) -> bytes:
        while len(self.data) < end:
            if self.eof or end > MAX_HEADER:
                raise NotPlain  # past the end of the file (pydicom decides what that means), or too long a header
            asked = max(end - len(self.data), len(self.data))
            more = self.fp.read(asked)
            self.eof = len(more) < asked
            self.data += more
        return self.data

    def ends_at(self, pos: int) -> bool:
        """True when the file ends exactly at ``pos`` (called with ``pos`` at most the bytes read)."""
        if pos == len(self.data) and not self.eof:
            more = self.fp.read(FIRST_READ)
            self.eof = len(more) < FIRST_READ
            self.data += more
        return pos == len(self.data) and self.eof


def read_raw_header(fp, head: bytes, asked: int) -> RawHeader:
    """Walk the file whose first bytes ``head`` were read by ``fp.read(asked)``. Raises NotPlain."""
    buf = _Bytes(fp, head, asked)
    if head[128:132] != b"DICM":
        raise NotPlain
    pos, ts_raw = 132, None
    if buf.grow(144)[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise NotPlain  # no group length first: pydicom may retry the meta as implicit VR
    while True:  # the File Meta group: explicit VR little endian
        data = buf.grow(pos + 8)
        group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
        if group != 2:
            break
        pos, length = _explicit_length(buf, pos, vr, length)
        if length == UNDEFINED:
            raise NotPlain
        data = buf.grow(pos + length)
        if elem == 0x0010:
            ts_raw = data[pos:pos + length]
        pos += length
    if ts_raw is None or group == 0:  # no transfer syntax, or a command set
        raise NotPlain
    ts = ts_raw.rstrip(b"\x00 ")
    if not ts.isascii() or b"\\" in ts:
        raise NotPlain
    implicit = _implicit(ts.decode("ascii"))
    first = data[pos + 4:pos + 6]
    if implicit == (0x40 < first[0] < 0x5B and 0x40 < first[1] < 0x5B):
        raise NotPlain  # pydicom would switch to the other VR encoding for this dataset
    header = RawHeader(ts.decode("ascii"), implicit, {}, 0)
    header.pixel_start = _top_level(buf, pos, header)
    return header


@lru_cache(maxsize=64)
def _implicit(ts: str) -> bool:
    """Implicit VR or not, for a little-endian, not deflated transfer syntax pydicom reads without guessing."""
    if ts == ImplicitVRLittleEndian:
        return True
    if ts == ExplicitVRLittleEndian:
        return False
    uid = UID(ts)
    if ts in PrivateTransferSyntaxes or not uid.is_transfer_syntax or not uid.is_compressed or uid.is_deflated:
        raise NotPlain
    return False  # an encapsulated syntax: explicit VR little endian


def _explicit_length(buf: _Bytes, pos: int, vr: bytes, short: int) -> tuple[int, int]:
    """(offset of the value, its length) of the explicit-VR element at ``pos``."""
    if vr not in _VRS:
        raise NotPlain
    if vr in _LONG:
        return pos + 12, _LONG_LENGTH.unpack_from(buf.grow(pos + 12), pos + 8)[0]
    return pos + 8, short


def _element(buf: _Bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, offset of the value, length) of the element at ``pos``."""
    data = buf.grow(pos + 8)
    if implicit:
        group, elem, length = _TAG_LENGTH.unpack_from(data, pos)
        return group << 16 | elem, None, pos + 8, length
    group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
    if group == 0xFFFE:
        return group << 16 | elem, None, pos + 8, _TAG_LENGTH.unpack_from(data, pos)[2]
    start, length = _explicit_length(buf, pos, vr, length)
    return group << 16 | elem, vr, start, length


def _top_level(buf: _Bytes, pos: int, header: RawHeader) -> int:
    """Offset of Pixel Data (or of the end of the file), filling ``header``'s values on the way. The hot loop of
    indexing: elements whose header lies in the bytes read are unpacked inline, the rest through ``_element``."""
    implicit, values, elements = header.implicit, header.values, header.elements
    data, last = buf.data, -1
    explicit, tag_length, long_length, wanted_get = (_EXPLICIT.unpack_from, _TAG_LENGTH.unpack_from,
                                                     _LONG_LENGTH.unpack_from, _WANTED.get)
    while True:
        if pos + 12 <= len(data):
            if implicit:
                group, elem, length = tag_length(data, pos)
                vr, start = None, pos + 8
            else:
                group, elem, vr, length = explicit(data, pos)
                if vr in _LONG:
                    length, start = long_length(data, pos + 8)[0], pos + 12
                elif vr in _VRS:
                    start = pos + 8
                else:
                    raise NotPlain  # an unknown VR, or a delimiter where an element belongs
            tag = group << 16 | elem
        else:
            if pos + 8 > len(data) and buf.ends_at(pos):
                return pos
            tag, vr, start, length = _element(buf, pos, implicit)
            data = buf.data
        if tag <= last or tag >= 0xFFFE0000:
            raise NotPlain  # out of order or duplicated (pydicom keeps the last), or a stray delimiter
        last = tag
        if tag in PIXEL_TAGS:
            return pos
        if length == UNDEFINED:
            if tag in _WANTED or tag == CHARSET:
                raise NotPlain
            pos = _undefined_length(buf, tag, vr, start, implicit)
            data = buf.data
            continue
        at, pos = pos, start + length
        if pos > len(data):
            data = buf.grow(pos)
        wanted = wanted_get(tag)
        if wanted is not None:
            elements.append(data[at:pos])
            keyword, dict_vr = wanted
            try:
                if vr is not None and vr.decode() != dict_vr:
                    raise NotPlain
                values[keyword] = decode_plain(data[start:pos], dict_vr)
            except NotPlain:
                header.unplain = True
        elif tag == CHARSET:
            elements.append(data[at:pos])


def _undefined_length(buf: _Bytes, tag: int, vr: bytes | None, start: int, implicit: bool) -> int:
    """End of an undefined-length element, which must be a sequence (pydicom parses those as it reads)."""
    if vr is None:
        try:
            is_sequence = dictionary_VR(tag) == "SQ"
        except KeyError:
            is_sequence = False
    else:
        is_sequence = vr == b"SQ"
    if not is_sequence:
        raise NotPlain
    return _sequence(buf, start, implicit)


def _sequence(buf: _Bytes, pos: int, implicit: bool) -> int:
    while True:
        group, elem, length = _TAG_LENGTH.unpack_from(buf.grow(pos + 8), pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise NotPlain
        pos = _item(buf, pos, implicit, None if length == UNDEFINED else pos + length)


def _item(buf: _Bytes, pos: int, implicit: bool, end: int | None) -> int:
    """End of the item whose elements start at ``pos`` (``end`` for a defined length, else its delimiter)."""
    while True:
        if end is not None and pos >= end:
            if pos != end:
                raise NotPlain  # elements overrun their item: pydicom reads on from where they end
            return pos
        tag, vr, start, length = _element(buf, pos, implicit)
        if tag == ITEM_END and end is None:
            return start
        if tag >> 16 == 0xFFFE:
            raise NotPlain
        if length == UNDEFINED:
            pos = _undefined_length(buf, tag, vr, start, implicit)
        else:
            pos = start + length
            buf.grow(pos)
