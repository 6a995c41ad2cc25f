"""What the benchmarks share: the `storescu` baseline (Orthanc's own ingest ceiling) and the median."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def run_storescu(targets: list, work: Path, *, recursive: bool) -> tuple[float, int, subprocess.CompletedProcess]:
    """One `storescu` association into a fresh private Orthanc, TCP_NODELAY on both sides (FIELD_NOTES).
    ``targets``: files, or folders with ``recursive``. Returns (seconds, instances Orthanc holds, the process)."""
    import requests

    from pacs_assets_tests.services.orthanc import OrthancServer

    with tempfile.TemporaryDirectory(dir=work, prefix="orthanc-") as wd, OrthancServer(Path(wd)) as server:
        # The harness config has DicomAlwaysAllowStore: true, so Orthanc accepts the BENCH AE unregistered.
        assert server.config().get("DicomAlwaysAllowStore") is True
        cmd = ["storescu", *(["+sd", "+r"] if recursive else []), "-nh", "-aet", "BENCH", "-aec", server.aet,
               "127.0.0.1", str(server.dicom_port), *map(str, targets)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
                              check=False)
        seconds = time.perf_counter() - started
        stored = requests.get(f"{server.url}/statistics", auth=server.auth, timeout=30).json()["CountInstances"]
    return seconds, stored, proc


def storescu_folder(root: Path, n: int, work: Path) -> dict:
    """`storescu +sd +r` over a folder of ``n`` files: rate, seconds, stored, and a problem if not all arrived."""
    seconds, stored, proc = run_storescu([root], work, recursive=True)
    problem = None
    if proc.returncode != 0 or stored != n:
        problem = f"storescu exit {proc.returncode}, Orthanc holds {stored}/{n}: {proc.stderr.strip()[-300:]}"
    return {"rate": n / seconds, "seconds": seconds, "stored": stored, "problem": problem}
