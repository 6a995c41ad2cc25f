"""Speed and memory of the plain-DICOM NAS path, as ratios against baselines measured on the same data.

    python -m benchmarks.bench_dicom_nas [--quick] [--files N] [--rss-sizes 10000,100000] [--json out.json]

The machine this runs on is shared and noisy, so no figure here is an absolute promise: every "ours"
rate is divided by a baseline measured in the same run, on the same files, close in time (rounds
interleave baseline and ours; the ratio printed is the median of the per-round ratios). Nothing is
asserted: the table says which goals were met. See benchmarks/README.md for what each figure means.

a) indexing  baseline = a plain one-process ``pydicom.dcmread(path, stop_before_pixels=True)`` loop;
             ours = the file_inventory asset's path (DicomFolderSource.scan + Staging + merge).
b) import    baseline = Orthanc's own ingest ceiling (``storescu +sd +r``, one association, TCP_NODELAY);
             ours = ``upload_window`` (staging, ``import_records``: REST, threads) at concurrency 4 (the default),
             then 2/6/8.
   journal   the same upload with and without its journal (index/journal.py), fsync every 256 lines or every line.
c) memory    peak RSS of the inventory path in a fresh process, for two NAS sizes: it must stay flat.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import bench_module, median, storescu_folder, throwaway_orthanc

NAS_ID = "bench"
PARTITIONS_START = dt.date(2000, 1, 1)
INDEX_GOAL = 0.9  # ours / baseline, one core
INDEX_GOAL_ALL_CORES = 1.7  # ours with the default workers (2 on the project's machine) / the one-process baseline
IMPORT_GOAL = 0.9  # ours / storescu ceiling
JOURNAL_GOAL = 0.95  # with the journal / without, same files, same run: "the same within noise"
RSS_FLAT = 1.25  # peak(large) / peak(small) at most this to call it flat
DEFAULTS = {"files": 5000, "rss_sizes": "10000,100000", "rounds": 3, "import_rounds": 1, "journal_rounds": 3,
            "concurrency": "4,2,6,8"}
QUICK = {"files": 200, "rss_sizes": "200,400", "rounds": 1, "import_rounds": 1, "journal_rounds": 1,
         "concurrency": "4"}  # a smoke run: every section, tiny sizes (the test suite runs it)


# -- helpers ------------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _list_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _warm(paths: list[str]) -> int:
    """Read every file once so that both sides find them in the page cache. Returns total bytes."""
    total = 0
    for p in paths:
        with open(p, "rb") as fh:
            total += len(fh.read())
    return total


def _generate(root: Path, n: int) -> float:
    # Imported here on purpose: the RSS child process must never have the generator loaded.
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

    started = time.perf_counter()
    written = make_bulk_dicom_nas(root, n)
    if written != n:
        raise RuntimeError(f"make_bulk_dicom_nas wrote {written} files, asked for {n}")
    return time.perf_counter() - started


def _window() -> tuple[dt.date, dt.date]:
    return PARTITIONS_START, dt.date.today() + dt.timedelta(days=1)



# -- a) indexing ------------------------------------------------------------------------------------

def baseline_dcmread(paths: list[str]) -> float:
    """files/s of a plain one-process header-reading loop."""
    from pydicom import dcmread

    started = time.perf_counter()
    for p in paths:
        dcmread(p, stop_before_pixels=True)
    return len(paths) / (time.perf_counter() - started)


def inventory(root: Path, index_path: Path, workers: int | None, after_batch=None) -> dict:
    """The file_inventory asset's work (pipeline.inventory.take_inventory), without Dagster."""
    from pacs_assets.config import DicomFolderNas
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.pipeline.inventory import take_inventory

    nas = DicomFolderNas(id=NAS_ID, kind="dicom_folder", root=root, partitions_start=PARTITIONS_START)
    source = DicomFolderSource(NAS_ID, root, workers=workers)
    start, end = _window()
    started = time.perf_counter()
    result = take_inventory(source, nas, index_path, start, end, today=dt.date.today(),
                            progress=(lambda done, known: after_batch()) if after_batch else None)
    seconds = time.perf_counter() - started
    return {"files": result.walked, "seconds": seconds, "rate": result.walked / seconds, "counts": result.counts}


def bench_indexing(root: Path, paths: list[str], work: Path, rounds: int) -> dict:
    n = len(paths)
    rows: dict[str, list[float]] = {"baseline": [], "ours_default": [], "ours_w1": [], "rescan": []}
    ratios: dict[str, list[float]] = {"ours_default": [], "ours_w1": [], "rescan": []}
    workers_default = None
    problems = []
    for r in range(rounds):
        base = baseline_dcmread(paths)
        rows["baseline"].append(base)
        for key, workers in (("ours_w1", 1), ("ours_default", None)):
            index = work / f"index-r{r}-{key}.duckdb"
            res = inventory(root, index, workers)
            if res["counts"].get("ok") != n:
                problems.append(f"{key}: expected {n} ok files, got {res['counts']}")
            rows[key].append(res["rate"])
            ratios[key].append(res["rate"] / base)
        # Re-scan the unchanged NAS with the cache the last run left in its index.
        res = inventory(root, work / f"index-r{r}-ours_default.duckdb", None)
        rows["rescan"].append(res["rate"])
        ratios["rescan"].append(res["rate"] / base)
        _log(f"indexing round {r + 1}/{rounds}: baseline {base:.0f}/s, workers=1 {rows['ours_w1'][-1]:.0f}/s, "
             f"default {rows['ours_default'][-1]:.0f}/s, re-scan {rows['rescan'][-1]:.0f}/s")
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource

    workers_default = DicomFolderSource(NAS_ID, root).workers
    # Keep one pristine index (inventory done, nothing imported) for the import benchmark.
    pristine = work / "index-pristine.duckdb"
    shutil.copy(work / f"index-r{rounds - 1}-ours_default.duckdb", pristine)
    from pacs_assets.pipeline.hierarchy import build_hierarchy

    build_hierarchy(pristine, NAS_ID, *_window())  # the upload reads what dicom_index produced
    return {
        "files": n, "rounds": rounds, "workers_default": workers_default, "problems": problems,
        "rates": {k: median(v) for k, v in rows.items()}, "rates_all": rows,
        "ratios": {k: median(v) for k, v in ratios.items()}, "ratios_all": ratios,
        "pristine_index": str(pristine),
    }


# -- b) import --------------------------------------------------------------------------------------

def _orthanc_count(server) -> int:
    import requests

    return requests.get(f"{server.url}/statistics", auth=server.auth, timeout=30).json()["CountInstances"]



@contextlib.contextmanager
def _fresh_target(pristine_index: Path, work: Path, label: str):
    """A copy of the pristine index (inventory and hierarchy done, nothing imported) and a fresh private
    Orthanc: yields (index, server, client); the index copy is deleted afterwards."""
    from pacs_assets.orthanc.client import OrthancClient

    index = work / f"index-import-{label}-{time.monotonic_ns()}.duckdb"
    shutil.copy(pristine_index, index)
    try:
        with throwaway_orthanc(work) as server:
            yield index, server, OrthancClient(server.url, server.username, server.password)
    finally:
        index.unlink(missing_ok=True)


def _imported_rows(index: Path) -> int:
    from pacs_assets.index.connection import session

    with session(index, read_only=True) as con:
        return con.execute("SELECT count(*) FROM import_history WHERE status = 'imported'").fetchall()[0][0]


def _problem(label: str, n: int, todo: int, summary, stored: int, ledger: int) -> str | None:
    if todo != n or summary.counts.get("imported") != n or stored != n or ledger != n:
        return (f"{label}: staged {todo}, imported {dict(summary.counts)}, Orthanc holds {stored}, ledger {ledger} "
                f"(expected {n})")
    return None


def ours_import(root: Path, n: int, pristine_index: Path, work: Path, concurrency: int) -> dict:
    """The orthanc_instances asset's work (pipeline.upload.upload_window) on a copy of the pristine index,
    into a fresh Orthanc."""
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.pipeline.upload import upload_window

    with _fresh_target(pristine_index, work, f"c{concurrency}") as (index, server, client):
        done = upload_window(DicomFolderSource(NAS_ID, root), client, index, NAS_ID, *_window(),
                             concurrency=concurrency)
        summary, seconds = done.summary, done.summary.seconds
        problem = _problem(f"concurrency {concurrency}", n, done.staged, summary, _orthanc_count(server),
                           _imported_rows(index))
    return {"rate": n / seconds, "seconds": seconds, "counts": dict(summary.counts), "problem": problem}


JOURNAL_FSYNC = {"default": {}, "every_line": {"fsync_every": 1}}  # Journal keywords ({}: FSYNC_EVERY lines)


def journal_import(root: Path, n: int, pristine_index: Path, work: Path, concurrency: int, variant: str) -> dict:
    """``import_records`` as upload_window calls it, without a journal ("none") or with one fsynced every
    FSYNC_EVERY lines ("default") or every line; the journal's end-of-run merge is timed apart."""
    from pacs_assets.index import ledger
    from pacs_assets.index.journal import Journal, merge_journals
    from pacs_assets.index.staging import Staging
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.pipeline.upload import import_records

    with _fresh_target(pristine_index, work, f"journal-{variant}") as (index, server, client):
        journal = None
        with Staging(index) as staging:
            todo = ledger.stage_pending_uploads(staging, NAS_ID, *_window())
            if variant != "none":
                journal = Journal(index, **JOURNAL_FSYNC[variant])
            summary = import_records(DicomFolderSource(NAS_ID, root), client, ledger.iter_staged(staging),
                                     lambda rows: ledger.append_ledger(index, rows), concurrency=concurrency,
                                     journal=journal)
        merge_started = time.perf_counter()
        if journal:
            journal.close()
            merge_journals(index, own=journal.path)
        merge_seconds = time.perf_counter() - merge_started
        problem = _problem(f"journal {variant}", n, todo, summary, _orthanc_count(server), _imported_rows(index))
    return {"rate": n / summary.seconds, "seconds": summary.seconds, "merge_seconds": merge_seconds,
            "problem": problem}


def bench_journal(root: Path, n: int, pristine_index: Path, work: Path, concurrency: int, rounds: int) -> dict:
    """Per round, every journal variant back to back (the order rotates from round to round); each ratio
    is a variant's rate over that round's rate without the journal."""
    names = ["none", *JOURNAL_FSYNC]
    rates: dict[str, list[float]] = {v: [] for v in names}
    ratios: dict[str, list[float]] = {v: [] for v in names if v != "none"}
    merges: dict[str, list[float]] = {v: [] for v in ratios}
    problems = []
    for r in range(rounds):
        results = {v: journal_import(root, n, pristine_index, work, concurrency, v)
                   for v in names[r % len(names):] + names[:r % len(names)]}
        for v, res in results.items():
            rates[v].append(res["rate"])
            if v in ratios:
                ratios[v].append(res["rate"] / results["none"]["rate"])
                merges[v].append(res["merge_seconds"])
            if res["problem"]:
                problems.append(res["problem"])
        _log(f"journal round {r + 1}/{rounds}: " + ", ".join(f"{v} {res['rate']:.0f}/s" for v, res in results.items()))
    return {"files": n, "rounds": rounds, "concurrency": concurrency,
            "rates": {v: median(x) for v, x in rates.items()}, "rates_all": rates,
            "ratios": {v: median(x) for v, x in ratios.items()}, "ratios_all": ratios,
            "merge_seconds": {v: median(x) for v, x in merges.items()}, "problems": problems}


def bench_import(root: Path, n: int, pristine_index: Path, work: Path, concurrencies: list[int],
                 rounds: int) -> dict:
    """Per round: storescu, ours at each concurrency (the default 4 first), storescu again; ratios use
    the mean of the two storescu runs that bracket them."""
    base_rates: list[float] = []
    rates: dict[int, list[float]] = {c: [] for c in concurrencies}
    ratios: dict[int, list[float]] = {c: [] for c in concurrencies}
    problems = []
    for r in range(rounds):
        before = storescu_folder(root, n, work)
        round_rates = {}
        for c in concurrencies:
            res = ours_import(root, n, pristine_index, work, c)
            round_rates[c] = res["rate"]
            if res["problem"]:
                problems.append(res["problem"])
        after = storescu_folder(root, n, work)
        for b in (before, after):
            base_rates.append(b["rate"])
            if b["problem"]:
                problems.append(b["problem"])
        ref = (before["rate"] + after["rate"]) / 2
        for c, rate in round_rates.items():
            rates[c].append(rate)
            ratios[c].append(rate / ref)
        _log(f"import round {r + 1}/{rounds}: storescu {before['rate']:.0f}/s then {after['rate']:.0f}/s; ours "
             + ", ".join(f"c={c} {rate:.0f}/s" for c, rate in round_rates.items()))
    best = max(concurrencies, key=lambda c: median(ratios[c]))
    return {
        "files": n, "rounds": rounds, "baseline_rate": median(base_rates), "baseline_all": base_rates,
        "rates": {c: median(v) for c, v in rates.items()}, "rates_all": rates,
        "ratios": {c: median(v) for c, v in ratios.items()}, "ratios_all": ratios,
        "closest_concurrency": best, "problems": problems,
    }


# -- c) memory --------------------------------------------------------------------------------------

def rss_child(root: str, index: str) -> None:
    """Runs in a fresh process (no generator loaded): the inventory path, with its peak memory."""
    import psutil

    me = psutil.Process()
    # The path's imports, loaded before the "before" figure.
    import pacs_assets.nas.dicom_folder.source
    import pacs_assets.pipeline.inventory  # noqa: F401

    before = me.memory_info().rss
    peak = {"tree": 0, "main": 0, "worker": 0}
    walk_peak = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                procs = [me] + me.children(recursive=True)
                sizes = []
                for p in procs:
                    try:
                        sizes.append(p.memory_info().rss)
                    except psutil.Error:
                        sizes.append(0)
                peak["tree"] = max(peak["tree"], sum(sizes))
                peak["main"] = max(peak["main"], sizes[0])
                peak["worker"] = max([peak["worker"], *sizes[1:]])
            except psutil.Error:
                pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def mark_batch_done() -> None:  # after the last batch, the walk + staging is over and merge_inventory follows
        walk_peak.update(peak, main_now=me.memory_info().rss, merge_started=time.perf_counter())

    try:
        res = inventory(Path(root), Path(index), None, after_batch=mark_batch_done)
    finally:
        merge_seconds = time.perf_counter() - walk_peak.get("merge_started", time.perf_counter())
        stop.set()
        sampler.join()
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"files": res["files"], "seconds": res["seconds"], "ok": res["counts"].get("ok", 0),
                      "merge_seconds": merge_seconds,
                      "rss_before_mb": before / 2**20, "main_maxrss_mb": maxrss_kb / 1024,
                      "main_peak_sampled_mb": peak["main"] / 2**20, "worker_peak_mb": peak["worker"] / 2**20,
                      "tree_peak_mb": peak["tree"] / 2**20,
                      "walk_main_peak_mb": max(walk_peak.get("main", 0), walk_peak.get("main_now", 0)) / 2**20,
                      "walk_tree_peak_mb": walk_peak.get("tree", 0) / 2**20}))


def bench_rss(sizes: list[int], work: Path) -> dict:
    results = {}
    for size in sizes:
        root = work / f"rss-nas-{size}"
        _log(f"memory: generating {size} files")
        gen_seconds = _generate(root, size)
        index = work / f"rss-index-{size}.duckdb"
        _log(f"memory: inventory of {size} files in a fresh process")
        proc = bench_module("bench_dicom_nas", "--rss-child", str(root), str(index))
        shutil.rmtree(root, ignore_errors=True)
        index.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child for {size} files failed:\n{proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["generate_seconds"] = gen_seconds
        if res["files"] != size or res["ok"] != size:
            res["problem"] = f"walked {res['files']}, ok {res['ok']} (expected {size})"
        results[size] = res
        _log(f"memory: {size} files: main peak {res['main_maxrss_mb']:.0f} MB, "
             f"tree peak {res['tree_peak_mb']:.0f} MB, {res['files'] / res['seconds']:.0f} files/s")
    return results


# -- the table --------------------------------------------------------------------------------------

def _verdict(ratio: float, goal: float) -> str:
    return "met" if ratio >= goal else "BELOW"


def render(report: dict) -> str:
    lines = []
    meta = report["meta"]
    lines.append(f"plain-DICOM NAS benchmark: {meta['files']} files of {meta['file_kb']:.1f} KB, "
                 f"{meta['cores']} cores, load average {meta['load_before']:.1f} -> {meta['load_after']:.1f}, "
                 f"{meta['seconds']:.0f} s")
    head = f"{'':10} {'measurement':58} {'rate':>12} {'ratio':>6}  {'goal':>6}  verdict"
    lines += [head, "-" * len(head)]
    ix = report.get("indexing")
    if ix:
        r, q = ix["rates"], ix["ratios"]
        lines.append(f"{'indexing':10} {'baseline: dcmread(stop_before_pixels) loop, 1 process':58} "
                     f"{r['baseline']:8.0f} f/s")
        lines.append(f"{'':10} {'ours: inventory path, workers=1 (one core)':58} {r['ours_w1']:8.0f} f/s "
                     f"{q['ours_w1']:6.2f}  {'>=0.9':>6}  {_verdict(q['ours_w1'], INDEX_GOAL)}")
        label = f"ours: inventory path, workers={ix['workers_default']} (default, all cores)"
        lines.append(f"{'':10} {label:58} {r['ours_default']:8.0f} f/s {q['ours_default']:6.2f}  "
                     f"{'>=1.7':>6}  {_verdict(q['ours_default'], INDEX_GOAL_ALL_CORES)}")
        lines.append(f"{'':10} {'ours: re-scan, warm scan cache (unchanged NAS)':58} {r['rescan']:8.0f} f/s "
                     f"{q['rescan']:6.2f}")
        for p in ix["problems"]:
            lines.append(f"{'':10} PROBLEM: {p}")
    im = report.get("import")
    if im:
        lines.append(f"{'import':10} {'baseline: storescu +sd +r, 1 association, TCP_NODELAY':58} "
                     f"{im['baseline_rate']:8.0f} i/s")
        for c in im["rates"]:
            label = f"ours: import_records, concurrency {c}" + (" (default)" if c == 4 else "")
            goal = f"{'>=0.9':>6}  {_verdict(im['ratios'][c], IMPORT_GOAL)}" if c == 4 else ""
            lines.append(f"{'':10} {label:58} {im['rates'][c]:8.0f} i/s {im['ratios'][c]:6.2f}  {goal}")
        lines.append(f"{'':10} highest ratio to the ceiling: concurrency {im['closest_concurrency']}")
        for p in im["problems"]:
            lines.append(f"{'':10} PROBLEM: {p}")
    jr = report.get("journal")
    if jr:
        r, q, m = jr["rates"], jr["ratios"], jr["merge_seconds"]
        lines.append(f"{'journal':10} {'import_records without the journal, concurrency ' + str(jr['concurrency']):58} "
                     f"{r['none']:8.0f} i/s")
        for v, label in (("default", "with the journal, fsync every 256 lines (default)"),
                         ("every_line", "with the journal, fsync every line")):
            lines.append(f"{'':10} {label:58} {r[v]:8.0f} i/s {q[v]:6.2f}  {'>=0.95':>6}  "
                         f"{_verdict(q[v], JOURNAL_GOAL)}")
            lines.append(f"{'':10} {'  then its merge into import_history':58} {m[v] * 1000:8.0f} ms")
        for p in jr["problems"]:
            lines.append(f"{'':10} PROBLEM: {p}")
    rs = report.get("rss")
    if rs:
        sizes = sorted(rs, key=int)
        first = "memory"
        for s in sizes:
            x = rs[s]
            rows = [(f"inventory of {int(s):,} files: main-process peak RSS", x["main_maxrss_mb"]),
                    ("  of which the walk + staging phase (sampled)", x["walk_main_peak_mb"]),
                    ("  whole tree incl. forkserver + workers (sampled)", x["tree_peak_mb"]),
                    ("  main process before the walk (imports only)", x["rss_before_mb"])]
            for label, mb in rows:
                lines.append(f"{first:10} {label:58} {mb:8.0f} MB")
                first = ""
            if x.get("problem"):
                lines.append(f"{'':10} PROBLEM: {x['problem']}")
        if len(sizes) >= 2:
            small, large = rs[sizes[0]], rs[sizes[-1]]
            for label, key in (("main-process peak (whole path)", "main_maxrss_mb"),
                               ("walk + staging phase", "walk_main_peak_mb"),
                               ("whole process tree", "tree_peak_mb")):
                ratio = large[key] / small[key]
                label = f"ratio {int(sizes[-1]):,} / {int(sizes[0]):,} files: {label}"
                lines.append(f"{'':10} {label:58} {'':12} {ratio:6.2f}  {'<=' + str(RSS_FLAT):>6}  "
                             f"{'flat' if ratio <= RSS_FLAT else 'GROWS'}")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="seconds, not minutes: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    ap.add_argument("--files", type=int, help="files in the NAS for indexing and import (5000)")
    ap.add_argument("--rss-sizes",
                    help="NAS sizes for the peak-RSS runs, comma-separated (default 10000,100000: writes ~1.2 GB, "
                         "deleted afterwards; 10000,30000 is ~2 min quicker); '' skips them")
    ap.add_argument("--json", type=Path, help="also write every figure (and each round's) to this file")
    ap.add_argument("--rounds", type=int, help="indexing rounds (baseline and ours interleaved; 3)")
    ap.add_argument("--import-rounds", type=int, help="import rounds (each: storescu, ours, storescu; 1)")
    ap.add_argument("--journal-rounds", type=int,
                    help="rounds of the upload with and without its journal, at the first concurrency (3; 0 skips)")
    ap.add_argument("--concurrency", help="import concurrencies to try (the first is the default; 4,2,6,8)")
    ap.add_argument("--skip-indexing", action="store_true")
    ap.add_argument("--skip-import", action="store_true")
    ap.add_argument("--workdir", type=Path, help="where temp data goes (default: the system temp folder)")
    ap.add_argument("--rss-child", nargs=2, metavar=("ROOT", "INDEX"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-", dir=args.workdir))
    report: dict = {}
    try:
        root = work / "nas"
        _log(f"generating {args.files} files under {root}")
        gen = _generate(root, args.files)
        paths = _list_files(root)
        total = _warm(paths)
        report["meta"] = {"files": len(paths), "file_kb": total / len(paths) / 1024, "generate_seconds": gen,
                          "cores": os.cpu_count(), "python": platform.python_version()}
        pristine = None
        if not args.skip_indexing or not args.skip_import:
            rounds = args.rounds if not args.skip_indexing else 1
            _log(f"indexing: {rounds} round(s)")
            ix = bench_indexing(root, paths, work, rounds)
            pristine = Path(ix.pop("pristine_index"))
            if not args.skip_indexing:
                report["indexing"] = ix
        if not args.skip_import:
            if shutil.which("storescu") is None or shutil.which("Orthanc") is None:
                _log("import: skipped (storescu or Orthanc not installed: scripts/install_system_packages.sh)")
            else:
                concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
                _log(f"import: {args.import_rounds} round(s), concurrency {concurrencies}")
                report["import"] = bench_import(root, len(paths), pristine, work, concurrencies, args.import_rounds)
                if args.journal_rounds:
                    _log(f"journal: {args.journal_rounds} round(s), concurrency {concurrencies[0]}")
                    report["journal"] = bench_journal(root, len(paths), pristine, work, concurrencies[0],
                                                      args.journal_rounds)
        shutil.rmtree(root, ignore_errors=True)
        sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
        if sizes:
            report["rss"] = bench_rss(sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["meta"].update(load_before=load_before, load_after=os.getloadavg()[0],
                          seconds=time.perf_counter() - started)
    table = render(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({**report, "table": table}, indent=2, default=str))
    return 0


if __name__ == "__main__":  # required: the scan's process pool uses forkserver, which re-imports this file
    sys.exit(main())
