"""The one walker of a NAS tree, and the one check that its root can be read now.

Read-only, streamed, depth first in name order. Every entry the walk meets is reported exactly once:
a regular file with its size and mtime, or a problem (a folder that cannot be listed, a dangling link,
a device...) with the status and one-sentence reason its inventory record gets. With ``follow_links``,
symbolic links are followed only inside the root and each folder only once (a link to an ancestor
cannot loop); without it, links are reported as links and never followed.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Iterable, Iterator

from pacs_assets.errors import ConfigError

FAILED, SKIPPED = "failed", "skipped"


@dataclasses.dataclass
class Entry:
    rel: str  # relative to the root, POSIX separators
    size: int = 0
    mtime_ns: int = 0
    status: str | None = None  # None: a regular file to read; else SKIPPED or FAILED with ``reason``
    reason: str | None = None
    link: bool = False  # a symbolic link not followed (follow_links=False)


def check_root(nas_id: str, root: os.PathLike | str) -> None:
    """Raise ConfigError unless the root is a folder that can be listed and holds something.

    An unmounted share leaves its mount point behind as an empty folder: that must never read as
    "every file was deleted" (as Orthanc's folder indexer reads it), so an empty root is refused here, before any walk.
    """
    if not os.path.isdir(root):
        raise ConfigError(f"NAS '{nas_id}': root folder {root} does not exist or is not a folder (is the NAS mounted?).")
    try:
        with os.scandir(root) as it:
            first = next(it, None)
    except OSError as exc:
        raise ConfigError(f"NAS '{nas_id}': cannot list root folder {root}: {exc.strerror}.") from None
    if first is None:
        raise ConfigError(f"NAS '{nas_id}': root folder {root} is empty: treating it as an outage (is the NAS "
                          "share mounted?); nothing is read and nothing is treated as deleted.")


def walk(root: os.PathLike | str, *, follow_links: bool, settle_seconds: float = 0.0,
         folders: Iterable[str] | None = None, recursive: bool = True) -> Iterator[Entry]:
    """Every entry under ``root`` (or only under ``folders``, relative paths), as ``Entry`` objects.

    ``recursive=False`` lists only the given folders themselves (an incremental walk of the folders that
    changed; their new subfolders are named too). A named folder that no longer exists yields nothing.
    """
    real_root = os.path.realpath(root)
    root_stat = os.stat(real_root)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack = sorted(set(folders), reverse=True) if folders is not None else [""]
    settle_ns = int(settle_seconds * 1e9)
    now_ns = time.time_ns()
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(real_root, rel_dir)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if folders is not None and isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                continue  # a folder asked for by name that is gone (deleted or renamed): nothing in it any more
            yield Entry(rel_dir or ".", status=FAILED, reason=f"cannot list folder: {exc.strerror}")
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_symlink():
                    if not follow_links:
                        st = entry.stat(follow_symlinks=False)
                        yield Entry(rel, st.st_size, st.st_mtime_ns, link=True)
                        continue
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(target):
                        yield Entry(rel, status=SKIPPED, reason="dangling symbolic link")
                        continue
                    if os.path.commonpath([real_root, target]) != real_root:
                        yield Entry(rel, status=SKIPPED, reason="symbolic link to outside the NAS root, not followed")
                        continue
                st = entry.stat(follow_symlinks=follow_links)
            except OSError as exc:
                yield Entry(rel, status=FAILED, reason=f"cannot stat: {exc.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    yield Entry(rel, status=SKIPPED,
                                reason="symbolic link to a folder already walked (loop), not followed")
                else:
                    visited.add(key)
                    subdirs.append(rel)
            elif stat.S_ISREG(st.st_mode):
                if settle_ns and now_ns - st.st_mtime_ns < settle_ns:
                    yield Entry(rel, st.st_size, st.st_mtime_ns, SKIPPED,
                                "still being written (modified too recently); next run")
                else:
                    yield Entry(rel, st.st_size, st.st_mtime_ns)
            else:
                yield Entry(rel, st.st_size, st.st_mtime_ns, SKIPPED, "not a regular file (device, socket or pipe)")
        if recursive:
            stack.extend(reversed(subdirs))  # depth first, in name order
