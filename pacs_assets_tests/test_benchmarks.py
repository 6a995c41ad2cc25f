"""Benchmarks are code too: each one runs in its `--quick` mode (tiny sizes, seconds), so an import or API break
fails here rather than on the day someone measures. No figure is asserted (speed is for the benchmarks' tables):
only that each run ends with exit 0 and reports no PROBLEM (a file missing in Orthanc, a wrong count).

The runs are `python -m benchmarks.NAME --quick` processes, each in its own session (a stuck run is killed with
everything it started). Two run at a time: bench_daemon mostly waits for the daemon's ticks, the others run
meanwhile, one after the other.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from pacs_assets_tests.harness import parse_python

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# Longest first: the daemon one takes ~1 min of mostly waiting, the others ~1 min together.
QUICK_RUNS = ["bench_daemon", "bench_orthanc_scale", "bench_incremental", "bench_dicom_nas", "bench_sensor",
              "bench_search", "bench_firebird_nas", "bench_slow_share",
              "bench_slow_watch"]
TIMEOUT = 600.0  # a hung run: it is killed, its output shown


def test_every_benchmark_has_a_quick_run_here():
    scripts = sorted(p.stem for p in BENCHMARKS.glob("bench_*.py"))
    assert scripts == sorted(QUICK_RUNS)
    for name in scripts:
        assert '"--quick"' in (BENCHMARKS / f"{name}.py").read_text(), f"{name} has no --quick option"


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(parse_python(path)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_benchmarks_import_the_product_their_helper_and_the_service_harness_only():
    # The service harness (pacs_assets_tests.services: Orthanc, PostgreSQL, Firebird) is allowed; test modules,
    # conftest and the tests' own helpers are not.
    bad = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        for name in _imports(path):
            if name.startswith("pacs_assets_tests") and not (
                    name.startswith("pacs_assets_tests.services") and ".test_" not in name):
                bad.append(f"{path.name}: {name}")
    assert not bad


def _run(name: str) -> tuple[int | None, str]:
    """``python -m benchmarks.NAME --quick`` from the repository root; (exit code or None if killed, output)."""
    proc = subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", "--quick"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the run and every process it started
        out, _ = proc.communicate()
        return None, out


@pytest.fixture(scope="module")
def quick_runs(request) -> dict[str, Future]:
    """{name: Future of (exit code, output)} for the selected quick runs: bench_daemon in one thread, the
    others one after the other in a second thread."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_quick_run"]
    results = {name: Future() for name in selected}

    def run_each(names: list[str]) -> None:
        for name in names:
            try:
                results[name].set_result(_run(name))
            except BaseException as exc:  # noqa: BLE001 - reported by the test that waits for it
                results[name].set_exception(exc)

    lanes = [[n for n in selected if n == QUICK_RUNS[0]], [n for n in selected if n != QUICK_RUNS[0]]]
    threads = [threading.Thread(target=run_each, args=(lane,), daemon=True) for lane in lanes if lane]
    for thread in threads:
        thread.start()
    yield results
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("name", QUICK_RUNS)
def test_quick_run(quick_runs, name):
    code, out = quick_runs[name].result()
    tail = out[-6000:]
    assert code == 0, f"benchmarks.{name} --quick: exit {code}\n{tail}"
    assert "PROBLEM" not in out, tail
