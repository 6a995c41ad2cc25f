"""File names as the index stores them: any byte string, losslessly, as readable text.

A NAS path is bytes (old Windows-era shares hold Latin-1/CP1252 names that are not UTF-8). Python lists
such a name as a str with surrogate escapes; DuckDB refuses those. The stored form (``stored``):

- a path that is valid UTF-8 and holds no backslash is stored as it is (almost every path: unchanged);
- any other path is stored with each byte that is not part of valid UTF-8 written ``\\xHH`` (two lower-case
  hex digits) and each literal backslash doubled.

The two cases cannot collide: the second always contains a backslash, the first never does. (Doubling
backslashes only in names that needed escaping would be ambiguous: the valid name ``a\\xff`` and the byte
name ``a<0xff>`` would both be stored as ``a\\xff``; SMB shares forbid backslashes in names, so the
rule costs nothing there.) ``fs_bytes`` maps a stored path back to its exact bytes; ``fs_path`` gives the
str the ``os`` functions take. ``shown`` is for people: the stored form with control characters (a newline
in a name) escaped too, and quoted when it has leading or trailing spaces.

Paths longer than the kernel's PATH_MAX (4 KB) cannot be opened by name: ``open_nas`` and ``stat_nas``
then go folder by folder through directory file descriptors.
"""

from __future__ import annotations

import os
import re

_BACKSLASH = "\\"
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_NAMES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# Below this many bytes a path is opened by name in one call (PATH_MAX is 4096 with the final NUL).
_SHORT_PATH = 4000


def stored(name: str | bytes) -> str:
    """The index form of a path: ``name`` as bytes, or as ``os`` functions return it (surrogate escapes)."""
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    if _BACKSLASH not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    out = []
    for ch in text:
        if ch == _BACKSLASH:
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte, as surrogateescape carries it
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif "\ud800" <= ch <= "\udfff":  # a lone surrogate can only come from a str not made by os functions
            raise ValueError(f"not a file name: {text!r}")
        else:
            out.append(ch)
    return "".join(out)


def fs_bytes(path: str) -> bytes:
    """The exact bytes of a stored path (the inverse of ``stored``)."""
    if _BACKSLASH not in path:
        return path.encode("utf-8")
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(path):
        if _BACKSLASH in path[pos:match.start()]:
            raise ValueError(f"not a stored path (stray backslash): {path!r}")
        out += path[pos:match.start()].encode("utf-8")
        token = match.group(1)
        out += b"\\" if token == _BACKSLASH else bytes([int(token[1:], 16)])
        pos = match.end()
    if _BACKSLASH in path[pos:]:
        raise ValueError(f"not a stored path (stray backslash): {path!r}")
    out += path[pos:].encode("utf-8")
    return bytes(out)


def fs_path(path: str) -> str:
    """The str form of a stored path that ``os`` functions and ``open`` take (surrogate escapes for odd bytes)."""
    return os.fsdecode(fs_bytes(path)) if _BACKSLASH in path else path


def shown(path: str) -> str:
    """A stored path for people (CLI, UI, logs): control characters escaped, edge spaces made visible."""
    text = _CONTROL.sub(lambda m: _CONTROL_NAMES.get(m.group(), f"\\x{ord(m.group()):02x}"), path)
    return f'"{text}"' if text != text.strip(" ") else text


def join(root: str | os.PathLike, rel: str) -> str:
    """The ``os`` path of stored relative path ``rel`` under ``root`` ('' is the root itself)."""
    return os.path.join(os.fspath(root), fs_path(rel)) if rel else os.fspath(root)


def _open_long(path: bytes, flags: int) -> int:
    """Open a path longer than PATH_MAX one folder at a time (directory descriptors)."""
    parts = [p for p in path.split(b"/") if p]
    fd = os.open(b"/" if path.startswith(b"/") else b".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def open_fd(path: str | bytes, flags: int = os.O_RDONLY) -> int:
    """``os.open`` for a NAS path of any length (read-only by default)."""
    raw = os.fsencode(path)
    if len(raw) < _SHORT_PATH:
        return os.open(raw, flags)
    return _open_long(raw, flags)


def open_nas(path: str | bytes, buffering: int = -1):
    """A NAS file opened for reading, whatever its path's length. Buffered by default: a header parse makes
    hundreds of small reads, each a system call (and on a network share maybe a round trip) unbuffered."""
    return os.fdopen(open_fd(path), "rb", buffering=buffering)


def stat_nas(path: str | bytes, *, follow_symlinks: bool = True) -> os.stat_result:
    """``os.stat`` for a path of any length."""
    raw = os.fsencode(path)
    if len(raw) < _SHORT_PATH:
        return os.stat(raw, follow_symlinks=follow_symlinks)
    head, _, name = raw.rstrip(b"/").rpartition(b"/")
    fd = _open_long(head or b"/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=follow_symlinks)
    finally:
        os.close(fd)


def open_dir(path: str | bytes) -> int:
    """A directory descriptor for listing (``os.scandir(fd)``) a folder of any path length."""
    return open_fd(path, os.O_RDONLY | os.O_DIRECTORY)

