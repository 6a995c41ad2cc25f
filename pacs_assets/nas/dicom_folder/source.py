"""The ``dicom_folder`` NAS kind: a folder tree of plain DICOM files (with or without the Part 10 header).

The walk (nas/walk.py) is streamed and read-only and follows symbolic links inside the root, each folder
once; everything it meets gets exactly one record.
Header parsing runs on all cores; files whose size and mtime are unchanged come from the scan cache.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pydicom.dataset import FileMetaDataset

from pacs_assets.nas.base import FileRecord, NasSource, ScanCache, SendAs
from pacs_assets.nas.body import UploadBody
from pacs_assets.nas.dicom_folder.headers import read_dicom_files
from pacs_assets.nas.dicom_folder.send_as import body_with_identity
from pacs_assets.nas.names import join, stat_nas
from pacs_assets.nas.walk import Entry, check_root, walk, walk_folders

# Below this many files to parse, a process pool costs more than it saves.
POOL_THRESHOLD = 256
# Walked files offered to a bulk cache at once (one insert of four columns each).
OFFER_BATCH = 20_000
# Header reads in flight per process: on a network share each file is a few round trips of ~1 ms, which
# overlapping reads hide (benchmarks/bench_slow_share.py); on local disk they cost nothing.
IO_THREADS = 8


def _parse_chunk(args: tuple[str, str, list[tuple[str, int, int]], int]) -> list[FileRecord]:
    nas_id, root, items, threads = args
    return read_dicom_files(nas_id, root, items, threads)


class DicomFolderSource(NasSource):
    kind = "dicom_folder"

    def __init__(self, nas_id: str, root: Path, *, settle_seconds: float = 0.0, workers: int | None = None,
                 io_threads: int = IO_THREADS):
        super().__init__(nas_id, root)
        self.settle_seconds = settle_seconds
        self.workers = workers or min(os.cpu_count() or 1, 8)
        self.io_threads = io_threads

    def check_available(self) -> None:
        check_root(self.nas_id, self.root)

    def walk(self, folders: Sequence[str] | None = None) -> Iterator[tuple[str, int, int] | FileRecord]:
        """Yield (rel_path, size, mtime_ns) for each regular file, or a finished record for what is not one.
        What could not be read is also listed in ``self.unread`` (its known rows are kept, not deleted)."""
        self.unread = []
        for entry in walk(self.root, follow_links=True, settle_seconds=self.settle_seconds, folders=folders,
                          recursive=folders is None):
            if entry.status is None:
                yield (entry.rel, entry.size, entry.mtime_ns)
            elif (record := self._other(entry)) is not None:
                yield record

    def _other(self, entry: Entry) -> FileRecord | None:
        """The record of what the walk met that is not a regular file to read; None for what could not be read,
        which goes to ``self.unread`` instead."""
        if entry.unread:
            # No row of its own (a folder is not a file, and its parent's merge would later read the row's
            # end as a deletion): the run's metadata and its every_folder_read check report it.
            self.unread.append((entry.rel if entry.rel != "." else "", entry.unread))
            return None
        return FileRecord(nas_id=self.nas_id, file_path=entry.rel, size=entry.size, mtime_ns=entry.mtime_ns,
                          change_token=f"{entry.size}-{entry.mtime_ns}", status=entry.status, reason=entry.reason)

    # -- the scan -----------------------------------------------------------------------------------
    def scan(self, cache: ScanCache, batch_size: int = 2000,
             folders: Sequence[str] | None = None) -> Iterator[list[FileRecord]]:
        self.check_available()
        if cache.bulk:
            yield from self._scan_bulk(cache, batch_size, folders)
            return
        pool = None
        try:
            batch: list = []
            for item in self.walk(folders):
                batch.append(item)
                if len(batch) >= batch_size:
                    pool = pool or self._pool_if(batch)
                    yield self._resolve(batch, cache, pool)
                    batch = []
            if batch:
                pool = pool or self._pool_if(batch)
                yield self._resolve(batch, cache, pool)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _scan_bulk(self, cache: ScanCache, batch_size: int,
                   folders: Sequence[str] | None) -> Iterator[list[FileRecord]]:
        """Walk first, offering every file to the cache in bulk; then parse only the files it does not hold.
        Yields the records of what is not a regular file and of the files parsed, never the cached ones."""
        self.unread = []
        problems: list[FileRecord] = []
        # Columns, not an object per file: (folder, name, size, mtime) of the regular files walked so far.
        offered: tuple[list[str], list[str], list[int], list[int]] = ([], [], [], [])
        for folder in walk_folders(self.root, follow_links=True, settle_seconds=self.settle_seconds, folders=folders,
                                   recursive=folders is None):
            problems.extend(r for entry in folder.others if (r := self._other(entry)) is not None)
            if len(problems) >= batch_size:
                yield problems
                problems = []
            offered[0].extend([folder.rel] * len(folder.names))
            offered[1].extend(folder.names)
            offered[2].extend(folder.sizes)
            offered[3].extend(folder.mtimes)
            if len(offered[1]) >= OFFER_BATCH:
                cache.offer(*offered)
                offered = ([], [], [], [])
        if offered[1]:
            cache.offer(*offered)
        if problems:
            yield problems
        pool, parsing = None, None
        try:
            for todo in cache.unmatched(batch_size):
                pool = pool or self._pool_if(todo)
                # The workers parse the next batch while the caller stages this one.
                parsing, ready = self._parse_soon(todo, pool), parsing
                if ready is not None:
                    yield ready()
            if parsing is not None:
                yield parsing()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _parse_soon(self, todo: list[tuple[str, int, int]],
                    pool: ProcessPoolExecutor | None) -> Callable[[], list[FileRecord]]:
        """The records of ``todo``, parsed from now on by the pool (or, without one, when asked)."""
        if pool is None or len(todo) < POOL_THRESHOLD:
            return lambda: list(self._parse(todo, None).values())
        results = pool.map(_parse_chunk, self._chunks(todo))
        return lambda: list({r.file_path: r for records in results for r in records}.values())  # as _parse

    def _chunks(self, todo: list[tuple[str, int, int]]) -> list[tuple[str, str, list[tuple[str, int, int]], int]]:
        step = max(16, len(todo) // (self.workers * 4))
        return [(self.nas_id, str(self.root), todo[i:i + step], self.io_threads) for i in range(0, len(todo), step)]

    def _pool_if(self, batch: list) -> ProcessPoolExecutor | None:
        if self.workers < 2 or len(batch) < POOL_THRESHOLD:
            return None
        # forkserver: the run worker has threads, and forking a threaded process can deadlock.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pacs_assets.nas.dicom_folder.headers"])
        return ProcessPoolExecutor(self.workers, mp_context=ctx)

    def _parse(self, todo: list[tuple[str, int, int]], pool: ProcessPoolExecutor | None) -> dict[str, FileRecord]:
        parsed: dict[str, FileRecord] = {}
        root = str(self.root)
        if pool is not None and len(todo) >= POOL_THRESHOLD:
            for records in pool.map(_parse_chunk, self._chunks(todo)):
                parsed.update((r.file_path, r) for r in records)
        else:
            parsed.update((r.file_path, r) for r in _parse_chunk((self.nas_id, root, todo, self.io_threads)))
        return parsed

    def _resolve(self, batch: list, cache: ScanCache, pool: ProcessPoolExecutor | None) -> list[FileRecord]:
        files = [item for item in batch if isinstance(item, tuple)]
        cached = cache.lookup({rel: f"{size}-{mtime}" for rel, size, mtime in files})
        parsed = self._parse([item for item in files if item[0] not in cached], pool)
        out = []
        for item in batch:
            if isinstance(item, FileRecord):
                out.append(item)
            else:
                out.append(cached.get(item[0]) or parsed[item[0]])
        return out

    # -- import ---------------------------------------------------------------------------------------
    def upload_body(self, record: FileRecord, send_as: SendAs | None = None) -> UploadBody:
        path = join(self.root, record.file_path)  # the stored path back to the file's exact bytes
        if send_as is not None:
            return body_with_identity(path, record, send_as)
        if record.file_format != "DICOM-headerless":
            return UploadBody.of_file(path)
        # Orthanc would store a headerless file as is, without file meta: send a preamble and File Meta group
        # first, then the file's bytes unchanged (they are already in the transfer syntax the meta names).
        meta = file_meta_bytes(record.transfer_syntax_uid, record.sop_class_uid, record.sop_instance_uid)
        return UploadBody([meta, (path, 0, stat_nas(path).st_size)])


def file_meta_bytes(transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """128-byte preamble + ``DICM`` + a File Meta group (group length included), written by pydicom."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # adds version, implementation UID, group length
    return buf.getvalue()
