"""Header reads through a slow share: overlapping reads against one at a time, in the same run.

    python -m benchmarks.bench_slow_share [--quick] [--files 400] [--latency-ms 1]

The NAS is a FUSE pass-through (pacs_assets_tests/services/flaky_fs.py) that sleeps ``latency`` on every
stat, open and read, like an SMB round trip. Both sides read the same files' headers through it, in one
process: baseline = one at a time (``threads=1``), measured = ``IO_THREADS`` in flight
(nas/dicom_folder/source.py). Goal: >= 4x at 1 ms. Then the same files on local disk, page cache warm, best of
3 rounds each: the threads must not slow reads where there is no latency (goal: >= 0.9x one at a time).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pacs_assets.nas.dicom_folder.headers import read_dicom_files
from pacs_assets.nas.dicom_folder.source import IO_THREADS
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.services.flaky_fs import FlakyShare


def timed(root: Path, items: list, threads: int) -> float:
    started = time.perf_counter()
    records = read_dicom_files("bench", str(root), items, threads)
    seconds = time.perf_counter() - started
    assert all(r.status == "ok" for r in records), {r.reason for r in records}
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds: 40 files (the figure means nothing)")
    parser.add_argument("--files", type=int, default=None, help="files in all, half per side (default 400)")
    parser.add_argument("--latency-ms", type=float, default=1.0)
    args = parser.parse_args()
    args.files = args.files or (40 if args.quick else 400)
    with tempfile.TemporaryDirectory(prefix="bench-slow-share-") as tmp:
        src = Path(tmp) / "share"
        make_bulk_dicom_nas(src, args.files, files_per_series=100)
        files = sorted(src.rglob("*.dcm"))
        items = [(str(p.relative_to(src)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        with FlakyShare(src, Path(tmp) / "fuse", latency=args.latency_ms / 1000) as share:
            half = len(items) // 2  # each side reads its own half: no page cache shared between them
            one = timed(share.mountpoint, items[:half], 1)
            many = timed(share.mountpoint, items[half:], IO_THREADS)
        print(f"header reads through a share with {args.latency_ms:g} ms per call, {half} files each "
              f"({os.cpu_count()} cores):")
        print(f"  one at a time          {half / one:8.0f} files/s")
        print(f"  {IO_THREADS} in flight            {half / many:8.0f} files/s")
        print(f"  ratio                  {one / many:8.1f}x   (goal >= 4x)")
        rounds = {threads: [] for threads in (1, IO_THREADS)}
        for _ in range(3):  # local disk: both sides read every file; the FUSE reads above warmed the page cache
            for threads, times in rounds.items():
                times.append(timed(src, items, threads))
        one, many = min(rounds[1]), min(rounds[IO_THREADS])
        print(f"the same on local disk, {len(items)} files each, best of 3:")
        print(f"  one at a time          {len(items) / one:8.0f} files/s")
        print(f"  {IO_THREADS} in flight            {len(items) / many:8.0f} files/s")
        print(f"  ratio                  {one / many:8.2f}x   (goal >= 0.9x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
