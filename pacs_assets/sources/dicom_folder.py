"""The ``dicom_folder`` NAS kind: a folder tree of plain DICOM files (with or without the Part 10 header).

The walk is streamed and read-only. Symbolic links are followed only inside the root and only once
(so a link to an ancestor folder cannot loop); everything the walk meets gets exactly one record.
Header parsing runs on all cores; files whose size and mtime are unchanged come from the scan cache.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset

from pacs_assets.config import ConfigError
from pacs_assets.sources.base import FAILED, SKIPPED, FileRecord, NasSource, ScanCache
from pacs_assets.sources.dicom_headers import read_dicom_file

# Below this many files to parse, a process pool costs more than it saves.
POOL_THRESHOLD = 256


def _parse_chunk(args: tuple[str, str, list[tuple[str, int, int]]]) -> list[FileRecord]:
    nas_id, root, items = args
    return [read_dicom_file(nas_id, root, rel, size, mtime) for rel, size, mtime in items]


class DicomFolderSource(NasSource):
    kind = "dicom_folder"

    def __init__(self, nas_id: str, root: Path, *, settle_seconds: float = 0.0, workers: int | None = None):
        super().__init__(nas_id, root)
        self.settle_seconds = settle_seconds
        self.workers = workers or min(os.cpu_count() or 1, 8)

    def check_available(self) -> None:
        if not self.root.is_dir():
            raise ConfigError(f"NAS '{self.nas_id}': root folder {self.root} does not exist or is not a folder (is the NAS mounted?).")
        try:
            next(os.scandir(self.root), None)
        except OSError as exc:
            raise ConfigError(f"NAS '{self.nas_id}': cannot list root folder {self.root}: {exc.strerror}.") from None

    # -- the walk -----------------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[str, int, int] | FileRecord]:
        """Yield (rel_path, size, mtime_ns) for each regular file, or a finished record for what is not one."""
        root = os.path.realpath(self.root)
        root_stat = os.stat(root)
        visited = {(root_stat.st_dev, root_stat.st_ino)}
        stack = [""]
        settle_ns = int(self.settle_seconds * 1e9)
        now_ns = time.time_ns()
        while stack:
            rel_dir = stack.pop()
            try:
                with os.scandir(os.path.join(root, rel_dir)) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield self._record(rel_dir or ".", FAILED, f"cannot list folder: {exc.strerror}")
                continue
            subdirs = []
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if not os.path.exists(target):
                            yield self._record(rel, SKIPPED, "dangling symbolic link")
                            continue
                        if os.path.commonpath([root, target]) != root:
                            yield self._record(rel, SKIPPED, "symbolic link to outside the NAS root, not followed")
                            continue
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    yield self._record(rel, FAILED, f"cannot stat: {exc.strerror}")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in visited:
                        yield self._record(rel, SKIPPED, "symbolic link to a folder already walked (loop), not followed")
                    else:
                        visited.add(key)
                        subdirs.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    if settle_ns and now_ns - st.st_mtime_ns < settle_ns:
                        yield self._record(rel, SKIPPED, "still being written (modified too recently); next run", st)
                    else:
                        yield (rel, st.st_size, st.st_mtime_ns)
                else:
                    yield self._record(rel, SKIPPED, "not a regular file (device, socket or pipe)")
            stack.extend(reversed(subdirs))  # depth first, in name order

    def _record(self, rel: str, status: str, reason: str, st: os.stat_result | None = None) -> FileRecord:
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (0, 0)
        return FileRecord(nas_id=self.nas_id, file_path=rel, size=size, mtime_ns=mtime,
                          change_token=f"{size}-{mtime}", status=status, reason=reason)

    # -- the scan -----------------------------------------------------------------------------------
    def scan(self, cache: ScanCache, batch_size: int = 2000) -> Iterator[list[FileRecord]]:
        self.check_available()
        pool = None
        try:
            batch: list = []
            for item in self.walk():
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

    def _pool_if(self, batch: list) -> ProcessPoolExecutor | None:
        if self.workers < 2 or len(batch) < POOL_THRESHOLD:
            return None
        # forkserver: the run worker has threads, and forking a threaded process can deadlock.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pacs_assets.sources.dicom_headers"])
        return ProcessPoolExecutor(self.workers, mp_context=ctx)

    def _resolve(self, batch: list, cache: ScanCache, pool: ProcessPoolExecutor | None) -> list[FileRecord]:
        files = [item for item in batch if isinstance(item, tuple)]
        cached = cache.lookup({rel: f"{size}-{mtime}" for rel, size, mtime in files})
        todo = [item for item in files if item[0] not in cached]
        parsed: dict[str, FileRecord] = {}
        root = str(self.root)
        if pool is not None and len(todo) >= POOL_THRESHOLD:
            step = max(16, len(todo) // (self.workers * 4))
            chunks = [(self.nas_id, root, todo[i:i + step]) for i in range(0, len(todo), step)]
            for records in pool.map(_parse_chunk, chunks):
                parsed.update((r.file_path, r) for r in records)
        else:
            parsed.update((r.file_path, r) for r in _parse_chunk((self.nas_id, root, todo)))
        out = []
        for item in batch:
            if isinstance(item, FileRecord):
                out.append(item)
            else:
                out.append(cached.get(item[0]) or parsed[item[0]])
        return out

    # -- import ---------------------------------------------------------------------------------------
    def dicom_bytes(self, record: FileRecord) -> bytes:
        data = (self.root / record.file_path).read_bytes()
        if record.file_format != "DICOM-headerless":
            return data
        # Orthanc would store a headerless file as is, without file meta: add the meta first.
        ds = dcmread(io.BytesIO(data), force=True)
        implicit, little = ds.original_encoding
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = record.transfer_syntax_uid
        ds.file_meta = meta
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=little)
        return out.getvalue()
