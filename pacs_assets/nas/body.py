"""What a NAS source hands the upload for one file: a body of known length made of parts, read in chunks.

Parts are bytes (a preamble and File Meta group added to a headerless file, the DICOM header written
around a JPEG 2000 codestream) and byte ranges of files on the NAS. The body is read in bounded chunks
(1 MiB), so uploading a file of several GB holds one chunk per upload thread, never the file, and it can
be read again from the start for a retry. Opening a range opens the NAS file read-only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from pacs_assets.errors import UploadBodyError
from pacs_assets.nas.names import open_nas, stat_nas

CHUNK_SIZE = 1 << 20  # the most one upload thread holds of a file at a time


def _read(fh, size: int) -> bytes:
    """A read from the NAS; its failure (EIO on a flaky share) is the file's, never Orthanc's connection's."""
    try:
        return fh.read(size)
    except OSError as exc:
        raise UploadBodyError(f"cannot read the file for upload: {exc.strerror or exc}") from None


class UploadBody:
    """Bytes parts and (path, offset, length) file ranges, in order; ``length`` is the total."""

    def __init__(self, parts: list, chunk_size: int = CHUNK_SIZE):
        self.parts: list[bytes | tuple[str, int, int]] = []
        for part in parts:
            if isinstance(part, (bytes, bytearray, memoryview)):
                if len(part):
                    self.parts.append(bytes(part))
            else:
                path, offset, length = part
                if int(offset) < 0 or int(length) < 0:
                    raise ValueError(f"bad file range {part!r}")
                if length:
                    self.parts.append((os.fspath(path), int(offset), int(length)))
        self.length = sum(len(p) if isinstance(p, bytes) else p[2] for p in self.parts)
        self.chunk_size = chunk_size

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> UploadBody:
        return cls([(path, 0, stat_nas(path).st_size)])

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"UploadBody(length={self.length}, parts={len(self.parts)})"

    def chunks(self) -> Iterator[bytes]:
        """The body from the start in chunks of at most ``chunk_size`` bytes; small parts are coalesced, so a
        small file goes out as one chunk. Raises UploadBodyError rather than yield fewer than ``length`` bytes
        (the receiver would wait for the rest)."""
        size, pending, filled = self.chunk_size, [], 0
        for part in self.parts:
            if isinstance(part, bytes):
                view = memoryview(part)
                while view:
                    take = view[: size - filled]
                    pending.append(bytes(take))
                    filled += len(take)
                    view = view[len(take):]
                    if filled == size:
                        yield b"".join(pending)
                        pending, filled = [], 0
                continue
            path, offset, length = part
            try:
                fh = open_nas(path, buffering=0)  # whole chunks: a buffer would only copy them
            except OSError as exc:
                raise UploadBodyError(f"cannot read the file for upload: {exc.strerror}") from None
            with fh:
                fh.seek(offset)
                left = length
                while left:
                    want = min(left, size - filled)
                    data = _read(fh, want)
                    while data is not None and len(data) < want:  # unbuffered reads are short only at EOF
                        more = _read(fh, want - len(data))
                        if not more:
                            raise UploadBodyError(f"the file ended at byte {offset + length - left + len(data)}, "
                                                  f"the upload needs {offset + length} (changed since indexing)")
                        data += more
                    pending.append(data)
                    filled += want
                    left -= want
                    if filled == size:
                        yield b"".join(pending) if len(pending) > 1 else pending[0]
                        pending, filled = [], 0
        if pending:
            yield b"".join(pending)

    def read_all(self) -> bytes:
        """The whole body in memory: for tests and small bodies only."""
        return b"".join(self.chunks())

    def md5(self) -> str:
        digest = hashlib.md5()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()
