"""Statting many known folders of a slow share at once: the watch's sweep (nas/watch.py).

On SMB or NFS each stat is a round trip (~0.5-2 ms), and on a share that caches no lookups a stat by path asks
the server once per path component: six calls for a folder five levels down. So siblings are statted by name
in their parent, opened once (one call each), and several groups of siblings are in flight at once, which
hides the round trips the way the header reads do (nas/dicom_folder/headers.py). Only the stats run in
threads; the caller records the outcomes in its own thread, in the order given.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from pacs_assets.nas import names
from pacs_assets.nas.walk import retrying

STATS_IN_FLIGHT = 8  # groups of siblings statted at once (threads; a stat waits on the network, not the CPU)
GROUP = 16  # siblings per group at most: a folder with thousands of subfolders still spreads over the threads

Outcome = int | OSError  # the folder's st_mtime_ns, or why it could not be statted (after the retries)


def stat_folders(root: str | os.PathLike, rels: list[str], deadline: float) -> Iterator[tuple[str, Outcome]]:
    """(rel, outcome) for the folders ``rels`` (stored form, relative to ``root``; '' is the root), in their
    order, until ``deadline`` (time.monotonic()) passes; at least the first group is always statted. Folders
    of one parent should be adjacent in ``rels``: each run of siblings opens the parent once."""
    groups = _groups(rels)
    if not groups:
        return
    with ThreadPoolExecutor(min(STATS_IN_FLIGHT, len(groups))) as pool:
        pending: deque = deque()
        for i, group in enumerate(groups):
            if i and time.monotonic() > deadline:
                break
            pending.append(pool.submit(_stat_group, str(root), group))
            if len(pending) >= STATS_IN_FLIGHT:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _groups(rels: list[str]) -> list[tuple[str, list[str]]]:
    """(parent, [rel, ...]) runs of adjacent siblings, at most GROUP each; the root is a group of its own."""
    out: list[tuple[str, list[str]]] = []
    for rel in rels:
        parent = rel.rpartition("/")[0] if rel else None
        if out and parent is not None and out[-1][0] == parent and len(out[-1][1]) < GROUP:
            out[-1][1].append(rel)
        else:
            out.append((parent, [rel]))
    return out


def _stat_group(root: str, group: tuple[str | None, list[str]]) -> list[tuple[str, Outcome]]:
    parent, rels = group
    fd = None
    if parent is not None:
        try:
            fd = retrying(lambda: names.open_dir(names.join(root, parent)))
        except OSError:
            pass  # each folder is then statted by path, and fails (or not) on its own
    try:
        return [(rel, _stat(root, rel, fd)) for rel in rels]
    finally:
        if fd is not None:
            os.close(fd)


def _stat(root: str, rel: str, parent_fd: int | None) -> Outcome:
    if parent_fd is None:
        def stat() -> os.stat_result:
            return names.stat_nas(names.join(root, rel))
    else:
        name = names.fs_bytes(rel.rpartition("/")[2])

        def stat() -> os.stat_result:
            return os.stat(name, dir_fd=parent_fd)
    try:
        return retrying(stat).st_mtime_ns
    except OSError as exc:
        return exc
