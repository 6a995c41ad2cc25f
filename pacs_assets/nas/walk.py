"""The one walker of a NAS tree, and the one check that its root can be read now.

Read-only, streamed, depth first in name order. Every entry the walk meets is reported exactly once:
a regular file with its size and mtime, or a problem (a dangling link, a device...) with the status and
one-sentence reason its inventory record gets, or, for what could not be read (a folder that cannot be
listed, a stat that keeps failing), ``unread``: what the index knew there is kept, never read as deleted.
With ``follow_links``, symbolic links are followed only inside the root and each folder only once (a link to an ancestor
cannot loop); without it, links are reported as links and never followed.
"""

from __future__ import annotations

import dataclasses
import errno
import operator
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from pacs_assets.errors import ConfigError
from pacs_assets.nas import names

T = TypeVar("T")

FAILED, SKIPPED = "failed", "skipped"


@dataclasses.dataclass
class Entry:
    rel: str  # relative to the root, POSIX separators, in the index's stored form (nas/names.py)
    size: int = 0
    mtime_ns: int = 0
    status: str | None = None  # None: a regular file to read; else SKIPPED or FAILED with ``reason``
    reason: str | None = None
    link: bool = False  # a symbolic link not followed (follow_links=False)
    # Set when this entry could not be read (listing or stat failed): what its known rows are kept for.
    # "tree": a path and everything below it; "folder": a folder's own files (a walk without subfolders).
    unread: str | None = None


# Errors a network share gives now and then and not on the next try: retried with a pause (RETRY_DELAYS).
TRANSIENT = frozenset({errno.EIO, errno.ESTALE, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.EBUSY,
                       errno.ENOTCONN, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                       errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET, errno.ENOLINK, errno.ECOMM})
RETRY_DELAYS = (0.05, 0.25, 1.0)  # seconds before each retry; then the folder counts as not read


def retrying(call: Callable[[], T], delays: Sequence[float] = RETRY_DELAYS) -> T:
    """``call()``, retried after each of ``delays`` while it raises a transient OSError (the last one raises)."""
    for delay in delays:
        try:
            return call()
        except OSError as exc:
            if exc.errno not in TRANSIENT:
                raise
            time.sleep(delay)
    return call()


def is_transient(exc: OSError) -> bool:
    return exc.errno in TRANSIENT


def check_root(nas_id: str, root: os.PathLike | str) -> None:
    """Raise ConfigError unless the root is a folder that can be listed and holds something.

    An unmounted share leaves its mount point behind as an empty folder: that must never read as
    "every file was deleted" (as Orthanc's folder indexer reads it), so an empty root is refused here, before any walk.
    """
    try:
        is_dir = stat.S_ISDIR(retrying(lambda: os.stat(root)).st_mode)
    except OSError:
        is_dir = False
    if not is_dir:
        raise ConfigError(f"NAS '{nas_id}': root folder {root} does not exist or is not a folder (is the NAS "
                          "mounted?).")

    def first_entry():
        with os.scandir(root) as it:
            return next(it, None)

    try:
        first = retrying(first_entry)
    except OSError as exc:  # refused (the service user may not list it) or failing: the whole NAS is unread
        raise ConfigError(f"NAS '{nas_id}': cannot list root folder {root}: {exc.strerror}; treating it as an "
                          "outage: nothing is read and nothing is treated as deleted.") from None
    if first is None:
        raise ConfigError(f"NAS '{nas_id}': root folder {root} is empty: treating it as an outage (is the NAS "
                          "share mounted?); nothing is read and nothing is treated as deleted.")


@dataclasses.dataclass
class Folder:
    """One folder's listing: its regular files as columns (names in name order), and an ``Entry`` for every
    other name met there (a problem, a link not followed, what could not be read)."""

    rel: str  # the folder, stored form ('' is the root)
    names: list[str]  # stored names of its regular files
    sizes: list[int]
    mtimes: list[int]
    others: list[Entry]


def walk(root: os.PathLike | str, *, follow_links: bool, settle_seconds: float = 0.0,
         folders: Iterable[str] | None = None, recursive: bool = True) -> Iterator[Entry]:
    """Every entry under ``root`` (or only under ``folders``, stored relative paths), as ``Entry`` objects,
    depth first in name order (``walk_folders``, one Entry per name)."""
    for folder in walk_folders(root, follow_links=follow_links, settle_seconds=settle_seconds, folders=folders,
                               recursive=recursive):
        prefix = f"{folder.rel}/" if folder.rel else ""
        files = [Entry(prefix + n, s, m) for n, s, m in zip(folder.names, folder.sizes, folder.mtimes, strict=True)]
        yield from sorted(files + folder.others, key=_REL) if folder.others else files


_REL = operator.attrgetter("rel")
_NAME = operator.attrgetter("name")


def walk_folders(root: os.PathLike | str, *, follow_links: bool, settle_seconds: float = 0.0,
                 folders: Iterable[str] | None = None, recursive: bool = True) -> Iterator[Folder]:
    """The walk, folder by folder: what ``walk`` yields, without an object per regular file.

    ``recursive=False`` lists only the given folders themselves (an incremental walk of the folders that
    changed; their new subfolders are named too). A named folder that no longer exists yields nothing.
    A listing or stat that fails with a transient error (EIO, ESTALE...) is retried (RETRY_DELAYS); if it
    still fails, or is refused, the entry says so (``unread``): the caller keeps what it knew there.
    """
    real_root = os.path.realpath(root)
    root_stat = os.stat(real_root)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack = sorted(set(folders), reverse=True) if folders is not None else [""]
    settle_ns = int(settle_seconds * 1e9)
    now_ns = time.time_ns()
    while stack:
        rel_dir = stack.pop()
        dir_path = names.join(real_root, rel_dir)
        try:
            fd, entries = retrying(lambda dir_path=dir_path: _listing(dir_path))  # called at once
        except OSError as exc:
            if folders is not None and isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                continue  # a folder asked for by name that is gone (deleted or renamed): nothing in it any more
            yield Folder(rel_dir, [], [], [], [Entry(rel_dir or ".", status=FAILED, reason=f"cannot list folder: "
                                                     f"{exc.strerror}", unread="tree" if recursive else "folder")])
            continue
        subdirs: list[str] = []
        listed = Folder(rel_dir, [], [], [], [])
        try:
            _list_folder(listed, entries, fd, dir_path, real_root, follow_links, visited, subdirs, settle_ns, now_ns)
        finally:
            os.close(fd)
        yield listed
        if recursive:
            stack.extend(reversed(subdirs))  # depth first, in name order


def _list_folder(listed: Folder, entries: list[os.DirEntry], fd: int, dir_path: str, real_root: str,
                 follow_links: bool, visited: set, subdirs: list[str], settle_ns: int, now_ns: int) -> None:
    """Fill ``listed`` from a folder's entries. A regular file costs one stat and three appends: the walk of a
    big NAS is mostly this loop. Anything else (a link, a folder, a failing stat) takes ``_entry``'s way."""
    add_name, add_size, add_mtime = listed.names.append, listed.sizes.append, listed.mtimes.append
    slow = []
    for entry in entries:
        try:
            # A link's own type is in the listing (d_type); an unknown type costs an lstat here, as in _entry.
            st = None if entry.is_symlink() else entry.stat()  # fstatat(fd, name): the listing's descriptor
        except OSError:
            st = None  # _entry retries and reports it
        if st is not None and st.st_mode & _FORMAT == _REGULAR and not (settle_ns and now_ns - st.st_mtime_ns
                                                                          < settle_ns):
            add_name(entry.name)
            add_size(st.st_size)
            add_mtime(st.st_mtime_ns)
        else:
            slow.append(entry)
    if not _plain(listed.names):
        listed.names[:] = [names.stored(n) for n in listed.names]
    for entry in slow:
        for found in _entry(entry, fd, dir_path, listed.rel, real_root, follow_links, visited, subdirs, settle_ns,
                            now_ns):
            if found.status is None and not found.link:  # a regular file after all (a stat that needed a retry)
                add_name(names.stored(entry.name))
                add_size(found.size)
                add_mtime(found.mtime_ns)
            else:
                listed.others.append(found)


_FORMAT, _REGULAR = 0o170000, stat.S_IFREG


def _plain(file_names: list[str]) -> bool:
    """Whether every name is already in its stored form (valid UTF-8, no backslash: almost always), checked
    for a whole folder at once (a name holds no '/')."""
    joined = "/".join(file_names)
    if _BACKSLASH in joined:
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_BACKSLASH = "\\"


def _listing(dir_path: str) -> tuple[int, list[os.DirEntry]]:
    """A folder's descriptor (kept open to stat its entries) and its entries in name order. Through a
    descriptor, folders deeper than PATH_MAX list too."""
    fd = names.open_dir(dir_path)
    try:
        with os.scandir(fd) as it:
            return fd, sorted(it, key=_NAME)
    except BaseException:
        os.close(fd)
        raise


def _entry(entry: os.DirEntry, fd: int, dir_path: str, rel_dir: str, real_root: str, follow_links: bool,
           visited: set, subdirs: list[str], settle_ns: int, now_ns: int) -> Iterator[Entry]:
    """The Entry of one listed name (and its folder pushed on ``subdirs``)."""
    # stored(a + "/" + b) == stored(a) + "/" + stored(b): the stored form composes like the path.
    rel = f"{rel_dir}/{names.stored(entry.name)}" if rel_dir else names.stored(entry.name)
    try:
        if retrying(entry.is_symlink):  # stats the entry itself when the listing gave no type (FUSE, some NFS)
            if not follow_links:
                st = retrying(lambda: os.stat(entry.name, dir_fd=fd, follow_symlinks=False))
                yield Entry(rel, st.st_size, st.st_mtime_ns, link=True)
                return
            target = os.path.realpath(os.path.join(dir_path, entry.name))
            if not os.path.exists(target):
                yield Entry(rel, status=SKIPPED, reason="dangling symbolic link")
                return
            if os.path.commonpath([real_root, target]) != real_root:
                yield Entry(rel, status=SKIPPED, reason="symbolic link to outside the NAS root, not followed")
                return
        st = retrying(lambda: os.stat(entry.name, dir_fd=fd, follow_symlinks=follow_links))
    except OSError as exc:
        # Kept failing: a file or a whole folder (its type is unknown), so what is known at or below it stays.
        yield Entry(rel, status=FAILED, reason=f"cannot stat: {exc.strerror}",
                    unread="tree" if is_transient(exc) else None)
        return
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in visited:
            yield Entry(rel, status=SKIPPED, reason="symbolic link to a folder already walked (loop), not followed")
        else:
            visited.add(key)
            subdirs.append(rel)
    elif stat.S_ISREG(st.st_mode):
        if settle_ns and now_ns - st.st_mtime_ns < settle_ns:
            yield Entry(rel, st.st_size, st.st_mtime_ns, SKIPPED, "still being written (modified too recently); "
                                                                  "next run")
        else:
            yield Entry(rel, st.st_size, st.st_mtime_ns)
    else:
        yield Entry(rel, st.st_size, st.st_mtime_ns, SKIPPED, "not a regular file (device, socket or pipe)")
