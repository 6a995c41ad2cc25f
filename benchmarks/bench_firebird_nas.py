"""Speed of the Firebird + JPEG 2000 NAS path, as ratios against baselines on the same data in the same run.

    python -m benchmarks.bench_firebird_nas [--quick] [--images N] [--rounds R]

wrap     baseline = a plain copy of each JP2 file's bytes to a new file (read + write);
         ours = FirebirdJpeg2000Source.dicom_bytes (J2K codestream wrapped as DICOM, no decode) + write.
         Goal: ours / baseline >= 0.8 (i.e. nothing on the import path decodes pixels).
catalog  rows/s streamed from the Firebird catalog (snapshot copy + read-only query), and the full scan
         (catalog joined with the files on disk, JP2 headers read) in records/s.
Rounds interleave baseline and ours; the ratio printed is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pacs_assets.config import FirebirdCatalog
from pacs_assets.nas.base import OK, NoCache
from pacs_assets.nas.firebird_jpeg2000.catalog import CatalogReader
from pacs_assets.nas.firebird_jpeg2000.source import FirebirdJpeg2000Source
from pacs_assets.sample.firebird_nas import make_bulk_firebird_nas

PASSWORD = "bench-only"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seconds: 30 images, 1 round")
    ap.add_argument("--images", type=int, help="default 3000")
    ap.add_argument("--rounds", type=int, help="default 3")
    args = ap.parse_args(argv)
    args.images = args.images or (30 if args.quick else 3000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    os.environ["FIREBIRD_PASSWORD"] = PASSWORD
    with tempfile.TemporaryDirectory(prefix="pacs-bench-fb-") as tmp:
        root, out = Path(tmp) / "nas", Path(tmp) / "out"
        out.mkdir()
        manifest = make_bulk_firebird_nas(root, args.images, password=PASSWORD)
        catalog = FirebirdCatalog(database=Path(manifest.catalog), password_env="FIREBIRD_PASSWORD")
        source = FirebirdJpeg2000Source("bench", root, catalog=catalog)
        started = time.perf_counter()
        records = [r for batch in source.scan(NoCache()) for r in batch if r.status == OK]
        scan_rate = len(records) / (time.perf_counter() - started)
        for r in records:  # warm the page cache for both sides
            (root / r.file_path).read_bytes()

        ratios, copy_rates, wrap_rates, row_rates = [], [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for i, r in enumerate(records):
                shutil.copyfile(root / r.file_path, out / f"c{i}")
            copy = len(records) / (time.perf_counter() - t)
            t = time.perf_counter()
            for i, r in enumerate(records):
                (out / f"w{i}").write_bytes(source.dicom_bytes(r))
            wrap = len(records) / (time.perf_counter() - t)
            copy_rates.append(copy), wrap_rates.append(wrap), ratios.append(wrap / copy)
            t = time.perf_counter()
            rows = sum(len(b) for b in CatalogReader("bench", root, catalog).rows())
            row_rates.append(rows / (time.perf_counter() - t))

    med = statistics.median
    print(f"Firebird + JPEG 2000 NAS benchmark: {len(records)} images, {args.rounds} rounds, {os.cpu_count()} cores")
    print(f"  wrap     baseline: plain copy of the JP2 bytes     {med(copy_rates):8.0f} files/s")
    print(f"           ours: JP2 -> DICOM wrap (no decode)       {med(wrap_rates):8.0f} files/s   "
          f"ratio {med(ratios):.2f}   goal >= 0.8   {'MET' if med(ratios) >= 0.8 else 'BELOW'}")
    print(f"  catalog  rows read (snapshot + read-only query)    {med(row_rates):8.0f} rows/s")
    print(f"           full scan (catalog + files + JP2 headers) {scan_rate:8.0f} records/s")


if __name__ == "__main__":
    main()
