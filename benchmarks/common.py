"""What the benchmarks share: a throwaway Orthanc, the `storescu` baseline (Orthanc's own ingest ceiling), the
median, and how a benchmark runs a fresh Python process of itself.

Benchmarks import the product (pacs_assets), this module, and the service harness (pacs_assets_tests.services,
which starts Orthanc, PostgreSQL and Firebird on 127.0.0.1): never a test module (test_*.py, conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def bench_module(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<module> ARGS`` in a fresh process, from the repository root (so ``benchmarks``
    imports whatever the working directory), output captured. The caller checks the return code."""
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO, capture_output=True,
                          text=True, check=False,
                          env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})


@contextlib.contextmanager
def throwaway_orthanc(work: Path, **kwargs) -> Iterator:
    """A fresh private Orthanc in a folder under ``work``, killed at the end and its folder deleted: a clean
    stop of Orthanc 1.10.1 takes ~3 s (HTTP and DICOM servers), and nothing of it is kept anyway."""
    from pacs_assets_tests.services.orthanc import OrthancServer

    with tempfile.TemporaryDirectory(dir=work, prefix="orthanc-") as wd:
        server = OrthancServer(Path(wd), **kwargs)
        server.stop_signal = signal.SIGKILL
        with server:
            yield server


def run_storescu(targets: list, work: Path, *, recursive: bool) -> tuple[float, int, subprocess.CompletedProcess]:
    """One `storescu` association into a fresh private Orthanc, TCP_NODELAY=1 in the environment of both
    (measured: C-STORE is ~20x slower without it). ``targets``: files, or folders with ``recursive``.
    Returns (seconds, instances Orthanc holds, the process)."""
    import requests

    with throwaway_orthanc(work) as server:
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
