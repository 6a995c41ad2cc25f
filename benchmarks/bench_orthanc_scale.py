"""Orthanc at scale (issue #11): streamed uploads, big files, index rebuilds, several nodes on PostgreSQL.

    python -m benchmarks.bench_orthanc_scale [--quick] [--only a,b,c,d] [--json out.json] [--workdir /tmp]

a) rate    ``upload_window`` (the ``orthanc_instances`` asset's work, concurrency 4) on an indexed NAS, over
           ``storescu +sd +r -nh`` (one association, TCP_NODELAY=1 both sides) on the same files, into a fresh
           Orthanc each: ~2,000 small 9 KB CT files and ~600 realistic 512x512 16-bit CT files (~513 KB).
           Rounds: storescu, ours, storescu; the ratio divides by the mean of the bracketing pair. Goal >= 1.0.
b) memory  peak RSS (VmHWM) of a child process running ``upload_window``, with a 1 GB multi-frame file in the
           set and without it. Goal: at most +64 MB.
c) rebuild an imported NAS of 10,000 small files loses its index (index.duckdb, .wal, staging/, journal/;
           its scan cache, a file of its own, survives); inventory + hierarchy + upload run again. Rerun wall
           time / first import's (goal <= 0.1) and the POSTs the rerun made (goal 0: ledger rows with
           attempts > 0, and Orthanc's /changes sequence). Then once more with the scan cache lost too, for
           comparison (every header read again).
d) nodes   one Orthanc on PostgreSQL, two on one PostgreSQL (``more_urls``), one on SQLite as the reference,
           same files, ``upload_window``; ratios, plus Orthanc + PostgreSQL CPU seconds per instance (the
           per-core capacity). On 2 cores two nodes cannot scale: the table says so.

Every NAS, index, Orthanc and PostgreSQL is private and deleted at the end (the work folder lives under
/tmp with mode 0711: PostgreSQL runs as ``postgres`` and must traverse it). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import bench_module, median, storescu_folder, throwaway_orthanc

NAS_ID = "bench"
PARTITIONS_START = dt.date(2000, 1, 1)
RATE_GOAL = 1.0  # ours / storescu
RSS_GOAL_MB = 64.0  # peak RSS with the 1 GB file - without it
REBUILD_GOAL = 0.1  # rerun after losing the index / the first import
MF_SC_WORD = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
CONCURRENCY = 4

DEFAULTS = {"small": 2000, "large": 600, "rounds": 3, "big_frames": 2000, "rebuild": 10000,
            "cluster_small": 2000, "cluster_large": 600, "cluster_rounds": 2}
# A smoke run in well under a minute (the test suite runs it): every section, tiny sets.
QUICK = {"small": 60, "large": 10, "rounds": 1, "big_frames": 20, "rebuild": 100,
         "cluster_small": 60, "cluster_large": 10, "cluster_rounds": 1}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} bench_orthanc_scale] {msg}", file=sys.stderr, flush=True)



def _window() -> tuple[dt.date, dt.date]:
    return PARTITIONS_START, dt.date.today() + dt.timedelta(days=1)


# -- data -------------------------------------------------------------------------------------------

def make_small(root: Path, n: int) -> None:
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

    if make_bulk_dicom_nas(root, n) != n:
        raise RuntimeError("make_bulk_dicom_nas wrote fewer files than asked")


def make_large(root: Path, n: int, *, per_series: int = 100, seed: int = 7) -> None:
    """``n`` realistic CT files (512x512, 16-bit, ~513 KB): the bulk template with bigger pixels, one study and
    patient per series of ``per_series`` files (invented patients)."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    with tempfile.TemporaryDirectory() as tmp:
        make_small(Path(tmp), 1)
        ds = pydicom.dcmread(next(Path(tmp).rglob("*.dcm")))
    rng = np.random.default_rng(seed)
    ds.Rows = ds.Columns = 512
    for k in range(-(-n // per_series)):
        day = dt.date(2024, 6, 1) + dt.timedelta(days=k % 30)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.PatientName, ds.AccessionNumber = f"BIGCT{k:05d}", f"Large^Ct{k:05d}", f"L{k:09d}"
        ds.StudyDate = ds.SeriesDate = day.strftime("%Y%m%d")
        folder = root / ds.PatientID / f"{ds.StudyDate}_CT" / "S001"
        folder.mkdir(parents=True)
        for j in range(min(per_series, n - k * per_series)):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = j + 1
            ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
            ds.save_as(folder / f"IM{j + 1:04d}.dcm")


def make_big(path: Path, frames: int, rows: int = 512) -> int:
    """One multi-frame file of frames x rows x rows uint16 (2,000 frames: 1.05 GB), written block by block."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MF_SC_WORD, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MF_SC_WORD, ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.ConversionType = "BIGMF00001", "Big^Multiframe", "OT", "WSD"
    ds.StudyDate = ds.SeriesDate = "20240615"
    ds.AccessionNumber, ds.SeriesNumber, ds.InstanceNumber = "BIGMF0001", 1, 1
    ds.NumberOfFrames, ds.FrameIncrementPointer, ds.FrameTime = frames, 0x00181063, 40.0
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * rows * rows * 2))
        block = np.arange(rows * rows * 16, dtype=np.uint16)
        for start in range(0, frames, 16):
            k = min(16, frames - start)
            fh.write((block[: k * rows * rows] + start).tobytes())
    return path.stat().st_size


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` as hard links to every file of ``src`` (no extra disk space)."""
    for dirpath, _dirs, files in os.walk(src):
        out = dst / Path(dirpath).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(os.path.join(dirpath, name), out / name)


def files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _s, fs in os.walk(root) for f in fs]


def warm(root: Path) -> tuple[int, int]:
    n = total = 0
    for p in files_under(root):
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
        n += 1
    return n, total


# -- the project's path -----------------------------------------------------------------------------

def index_nas(root: Path, index: Path) -> dict:
    """file_inventory + dicom_index, as the assets run them (pipeline.inventory / pipeline.hierarchy)."""
    from pacs_assets.config import DicomFolderNas
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.pipeline.hierarchy import build_hierarchy
    from pacs_assets.pipeline.inventory import take_inventory

    nas = DicomFolderNas(id=NAS_ID, kind="dicom_folder", root=root, partitions_start=PARTITIONS_START)
    t0 = time.perf_counter()
    inv = take_inventory(DicomFolderSource(NAS_ID, root), nas, index, *_window(), today=dt.date.today())
    t1 = time.perf_counter()
    build_hierarchy(index, NAS_ID, *_window())
    t2 = time.perf_counter()
    return {"inventory_seconds": t1 - t0, "hierarchy_seconds": t2 - t1, "counts": inv.counts}


def upload(root: Path, index: Path, client, *, concurrency: int = CONCURRENCY) -> dict:
    from pacs_assets.nas.dicom_folder.source import DicomFolderSource
    from pacs_assets.pipeline.upload import upload_window

    t = time.perf_counter()
    done = upload_window(DicomFolderSource(NAS_ID, root), client, index, NAS_ID, *_window(), concurrency=concurrency)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "import_seconds": done.summary.seconds, "counts": dict(done.summary.counts),
            "staged": done.staged, "already_stored": done.already_stored, "totals": done.totals}


def ledger_facts(index: Path) -> dict:
    from pacs_assets.index.connection import session

    with session(index, read_only=True) as con:
        sent, retried, failed503, imported = con.execute(
            "SELECT count(*) FILTER (WHERE attempts > 0), count(*) FILTER (WHERE attempts > 1), "
            "count(*) FILTER (WHERE status = 'failed' AND http_status = 503), "
            "count(*) FILTER (WHERE status = 'imported') FROM import_history").fetchall()[0]
    return {"posted_rows": sent, "retried_rows": retried, "failed_503": failed503, "imported_rows": imported}


def count_instances(url: str, auth) -> int:
    import requests

    return requests.get(f"{url}/statistics", auth=auth, timeout=60).json()["CountInstances"]


def last_change(url: str, auth) -> int:
    import requests

    return requests.get(f"{url}/changes", params={"limit": 1}, auth=auth, timeout=60).json()["Last"]



@contextlib.contextmanager
def index_copy(pristine: Path | None, work: Path):
    """A copy of an indexed (nothing imported) index, or no index yet (None), in a folder of its own: its
    journal/ and staging/ stay private to this run (an upload merges every journal it finds beside its index)."""
    folder = Path(tempfile.mkdtemp(prefix="index-", dir=work))
    try:
        if pristine is not None:
            shutil.copy(pristine, folder / "index.duckdb")
        yield folder / "index.duckdb"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ours_fresh(root: Path, n: int, pristine: Path, work: Path) -> dict:
    from pacs_assets.orthanc.client import OrthancClient

    with index_copy(pristine, work) as index:
        with throwaway_orthanc(work) as server:
            res = upload(root, index, OrthancClient(server.url, server.username, server.password))
            stored = count_instances(server.url, server.auth)
        facts = ledger_facts(index)
    res["rate"] = n / res["seconds"]
    res["problem"] = None if stored == n == facts["imported_rows"] else \
        f"Orthanc holds {stored}, ledger imported {facts['imported_rows']}, expected {n}: {res['counts']}"
    return res


# -- a) rate ----------------------------------------------------------------------------------------

def bench_rate(sets: dict[str, tuple[Path, Path, int]], work: Path, rounds: int) -> dict:
    out = {}
    for name, (root, pristine, n) in sets.items():
        ratios, ours, base, problems = [], [], [], []
        for r in range(rounds):
            before = storescu_folder(root, n, work)
            mine = ours_fresh(root, n, pristine, work)
            after = storescu_folder(root, n, work)
            ref = (before["rate"] + after["rate"]) / 2
            ratios.append(mine["rate"] / ref)
            ours.append(mine["rate"])
            base += [before["rate"], after["rate"]]
            problems += [p for p in (before["problem"], mine["problem"], after["problem"]) if p]
            _log(f"a) {name} round {r + 1}/{rounds}: storescu {before['rate']:.0f}/s, ours {mine['rate']:.0f}/s, "
                 f"storescu {after['rate']:.0f}/s -> {ratios[-1]:.2f}")
        out[name] = {"files": n, "ours_rate": median(ours), "storescu_rate": median(base), "ratio": median(ratios),
                     "ratios_all": ratios, "ours_all": ours, "storescu_all": base, "problems": problems}
    return out


# -- b) memory --------------------------------------------------------------------------------------

def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(root: str, index: str) -> None:
    """In a fresh process: upload_window on ``index``, peak RSS from VmHWM (ru_maxrss would start at the
    parent's peak: Linux carries it across execve)."""
    import pacs_assets.nas.dicom_folder.source  # noqa: F401
    import pacs_assets.pipeline.upload  # noqa: F401 - the path's imports count in "before"
    from pacs_assets.orthanc.client import OrthancClient

    client = OrthancClient(os.environ["BENCH_ORTHANC_URL"], os.environ["BENCH_ORTHANC_USER"],
                           os.environ["BENCH_ORTHANC_PASSWORD"], timeout=900)
    before = _vm_hwm_kb()
    res = upload(Path(root), Path(index), client)
    print(json.dumps({"before_kb": before, "peak_kb": _vm_hwm_kb(), **res}, default=str))


def rss_run(root: Path, index: Path, work: Path) -> dict:
    import psutil

    with throwaway_orthanc(work) as server:
        orthanc_peak, done = [0], threading.Event()
        proc = psutil.Process(server.pid)

        def sample():
            while not done.is_set():
                with contextlib.suppress(psutil.Error):
                    orthanc_peak[0] = max(orthanc_peak[0], proc.memory_info().rss)
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        env = {"BENCH_ORTHANC_URL": server.url, "BENCH_ORTHANC_USER": server.username,
               "BENCH_ORTHANC_PASSWORD": server.password}
        try:
            child = bench_module("bench_orthanc_scale", "--rss-child", str(root), str(index), env=env)
        finally:
            done.set()
            sampler.join()
        if child.returncode:
            raise RuntimeError(f"RSS child failed:\n{child.stderr[-2000:]}")
        res = json.loads(child.stdout.strip().splitlines()[-1])
        res["stored"] = count_instances(server.url, server.auth)
        res["orthanc_peak_mb"] = orthanc_peak[0] / 2**20
    return res


def bench_rss(large_root: Path, work: Path, frames: int, rounds: int) -> dict:
    free = shutil.disk_usage(work).free
    need = frames * 512 * 512 * 2 * 3 + (1 << 30)  # the file, Orthanc's copy of it, room to spare
    if free < need:
        return {"skipped": f"only {free / 2**30:.1f} GB free in {work}, need {need / 2**30:.1f} GB"}
    without, with_big = work / "rss-without", work / "rss-with"
    link_tree(large_root, without)
    link_tree(large_root, with_big)
    big = with_big / "BIGMF00001" / "20240615_OT" / "big.dcm"
    try:
        t = time.perf_counter()
        size = make_big(big, frames)
        _log(f"b) wrote the multi-frame file: {size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s")
        n_without = len(files_under(without))
        rows: dict[str, list[dict]] = {"without": [], "with": []}
        for r in range(rounds):
            for label, root in (("without", without), ("with", with_big))[:: 1 if r % 2 == 0 else -1]:
                with index_copy(None, work) as index:
                    index_nas(root, index)
                    res = rss_run(root, index, work)
                want = n_without + (label == "with")
                res["problem"] = None if res["stored"] == want and res["counts"].get("imported") == want else \
                    f"{label}: Orthanc holds {res['stored']}, counts {res['counts']}, expected {want}"
                rows[label].append(res)
                _log(f"b) round {r + 1}/{rounds} {label}: peak {res['peak_kb'] / 1024:.1f} MB "
                     f"(before upload {res['before_kb'] / 1024:.1f} MB), {res['seconds']:.1f} s, "
                     f"Orthanc peak {res['orthanc_peak_mb']:.0f} MB")
        peak = {k: median([x["peak_kb"] / 1024 for x in v]) for k, v in rows.items()}
        deltas = [w["peak_kb"] / 1024 - o["peak_kb"] / 1024 for w, o in zip(rows["with"], rows["without"], strict=True)]
        return {"files": n_without, "big_bytes": size, "peak_mb": peak, "delta_mb": median(deltas),
                "deltas_all": deltas, "orthanc_peak_mb": {k: median([x["orthanc_peak_mb"] for x in v])
                                                           for k, v in rows.items()},
                "seconds": {k: median([x["seconds"] for x in v]) for k, v in rows.items()},
                "problems": [x["problem"] for v in rows.values() for x in v if x["problem"]]}
    finally:
        big.unlink(missing_ok=True)  # the 1 GB file goes at once
        shutil.rmtree(without, ignore_errors=True)
        shutil.rmtree(with_big, ignore_errors=True)


# -- c) index rebuild -------------------------------------------------------------------------------

def lose_index(index: Path, *, cache_too: bool = False) -> None:
    """The index is lost; its scan cache (its own file beside it) survives unless ``cache_too``."""
    from pacs_assets.index.scan_cache import cache_path

    lost = [index, index.with_name(index.name + ".wal")]
    if cache_too:
        lost += [cache_path(index), cache_path(index).with_name(cache_path(index).name + ".wal")]
    for p in lost:
        p.unlink(missing_ok=True)
    for folder in ("staging", "journal"):
        shutil.rmtree(index.parent / folder, ignore_errors=True)


def rerun(root: Path, index: Path, client) -> tuple[float, dict, dict]:
    t = time.perf_counter()
    ix = index_nas(root, index)
    up = upload(root, index, client)
    return time.perf_counter() - t, ix, up


def bench_rebuild(n: int, work: Path) -> dict:
    from pacs_assets.index.scan_cache import cache_path
    from pacs_assets.orthanc.client import OrthancClient

    site = work / "rebuild"
    root, index = site / "nas", site / "index" / "index.duckdb"
    index.parent.mkdir(parents=True)
    make_small(root, n)
    warm(root)
    with throwaway_orthanc(site) as server:
        client = OrthancClient(server.url, server.username, server.password)
        first, first_ix, first_up = rerun(root, index, client)
        first_facts = ledger_facts(index)
        seq = last_change(server.url, server.auth)
        _log(f"c) first import of {n}: {first:.1f} s (inventory {first_ix['inventory_seconds']:.1f}, hierarchy "
             f"{first_ix['hierarchy_seconds']:.1f}, upload {first_up['seconds']:.1f})")
        lose_index(index)
        kept_cache = cache_path(index).is_file()
        again, re_ix, re_up = rerun(root, index, client)
        facts = ledger_facts(index)
        changes = last_change(server.url, server.auth) - seq
        stored = count_instances(server.url, server.auth)
        _log(f"c) rerun after losing the index: {again:.1f} s (inventory {re_ix['inventory_seconds']:.1f}, "
             f"hierarchy {re_ix['hierarchy_seconds']:.1f}, upload {re_up['seconds']:.1f}; "
             f"{re_up['already_stored']} found in Orthanc, {facts['posted_rows']} POSTed)")
        lose_index(index, cache_too=True)  # as before the cache had its own file: every header read again
        bare, bare_ix, bare_up = rerun(root, index, client)
        _log(f"c) rerun after losing the index and its scan cache: {bare:.1f} s (inventory "
             f"{bare_ix['inventory_seconds']:.1f}, upload {bare_up['seconds']:.1f})")
    shutil.rmtree(site, ignore_errors=True)
    problem = None if first_facts["imported_rows"] == n and re_up["already_stored"] == n and stored == n \
        and kept_cache else (f"first imported {first_facts['imported_rows']}, rerun found {re_up['already_stored']}, "
                             f"Orthanc holds {stored}, scan cache kept: {kept_cache}")
    return {"files": n, "first_seconds": first, "rerun_seconds": again, "ratio": again / first,
            "first": {**first_ix, "upload_seconds": first_up["seconds"]},
            "rerun": {**re_ix, "upload_seconds": re_up["seconds"], "already_stored": re_up["already_stored"]},
            "no_cache": {**bare_ix, "upload_seconds": bare_up["seconds"], "seconds": bare, "ratio": bare / first},
            "posts": facts["posted_rows"], "changes_seq_delta": changes, "problem": problem}


# -- d) nodes ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _target(kind: str, work: Path):
    """Yields (urls, auth, {name: pid}) of a fresh SQLite node or a fresh PostgreSQL cluster of 1 or 2 nodes."""
    from pacs_assets_tests.services.orthanc_cluster import OrthancCluster

    base = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    os.chmod(base, 0o711)
    try:
        if kind == "sqlite":
            with throwaway_orthanc(base) as server:
                yield [server.url], server.auth, {"orthanc-0": server.pid}
        else:
            with OrthancCluster(base / "cluster", nodes=int(kind[-1])) as cluster:
                for node in cluster.nodes:  # thrown away with the folder: no clean stop (~3 s each)
                    node.stop_signal = signal.SIGKILL
                yield cluster.urls, cluster.auth, cluster.pids()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def node_run(kind: str, root: Path, n: int, pristine: Path, work: Path) -> dict:
    import psutil

    from pacs_assets.orthanc.connect import connect
    from pacs_assets.orthanc.orthanc_settings import OrthancSettings
    from pacs_assets_tests.services.orthanc_cluster import process_cpu_seconds

    me = psutil.Process()
    with index_copy(pristine, work) as index:
        with _target(kind, work) as (urls, auth, pids):
            # More than one URL: OrthancNodes, as the site's orthanc.more_urls builds it.
            client = connect(OrthancSettings(url=urls[0], more_urls=urls[1:]), *auth)
            cpu0 = {k: process_cpu_seconds(p) for k, p in pids.items()}
            mine0 = sum(me.cpu_times()[:2])
            res = upload(root, index, client)
            mine = sum(me.cpu_times()[:2]) - mine0
            cpu = {k: process_cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
            stored = [count_instances(u, auth) for u in urls]
        facts = ledger_facts(index)
    orthanc_cpu = sum(v for k, v in cpu.items() if k.startswith("node") or k.startswith("orthanc"))
    pg_cpu = cpu.get("postgres", 0.0)
    problem = None if all(s == n for s in stored) and facts["imported_rows"] == n else \
        f"{kind}: Orthanc holds {stored}, ledger imported {facts['imported_rows']}, {res['counts']}"
    return {"rate": n / res["seconds"], "seconds": res["seconds"], "orthanc_cpu_s": orthanc_cpu, "pg_cpu_s": pg_cpu,
            "client_cpu_s": mine, "server_ms_per_instance": 1000 * (orthanc_cpu + pg_cpu) / n,
            "per_server_cpu_s": n / (orthanc_cpu + pg_cpu), **facts, "problem": problem}


NODE_KINDS = ("sqlite", "pg1", "pg2")


def bench_nodes(sets: dict[str, tuple[Path, Path, int]], work: Path, rounds: int) -> dict:
    out = {}
    for name, (root, pristine, n) in sets.items():
        runs: dict[str, list[dict]] = {k: [] for k in NODE_KINDS}
        ratios: dict[str, list[float]] = {"pg2/pg1": [], "pg1/sqlite": [], "pg2/sqlite": []}
        for r in range(rounds):
            order = NODE_KINDS[r % 3:] + NODE_KINDS[:r % 3]
            got = {k: node_run(k, root, n, pristine, work) for k in order}
            for k, v in got.items():
                runs[k].append(v)
            for key in ratios:
                a, b = key.split("/")
                ratios[key].append(got[a]["rate"] / got[b]["rate"])
            _log(f"d) {name} round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {got[k]['rate']:.0f}/s ({got[k]['server_ms_per_instance']:.1f} ms server CPU/inst, "
                f"{got[k]['retried_rows']} retried)" for k in NODE_KINDS))
        summary = {k: {f: median([x[f] for x in v]) for f in ("rate", "orthanc_cpu_s", "pg_cpu_s", "client_cpu_s",
                                                                  "server_ms_per_instance", "per_server_cpu_s")}
                   | {"retried_rows": sum(x["retried_rows"] for x in v), "failed_503": sum(x["failed_503"] for x in v)}
                   for k, v in runs.items()}
        out[name] = {"files": n, "kinds": summary, "ratios": {k: median(v) for k, v in ratios.items()},
                     "ratios_all": ratios,
                     "problems": [x["problem"] for v in runs.values() for x in v if x["problem"]]}
    return out


# -- the table --------------------------------------------------------------------------------------

def _v(ok: bool) -> str:
    return "met" if ok else "BELOW"


def render(report: dict) -> str:
    m = report["meta"]
    lines = [f"Orthanc at scale: {m['cores']} cores, load average {m['load_before']:.1f} -> {m['load_after']:.1f}, "
             f"{m['seconds']:.0f} s{', --quick sizes' if m['quick'] else ''}"]
    head = f"{'':8} {'measurement':62} {'ours':>11} {'baseline':>11} {'ratio':>7} {'goal':>7}  verdict"
    lines += [head, "-" * len(head)]
    first = "a) rate"
    for name, x in report.get("rate", {}).items():
        label = f"upload_window c=4 / storescu, {x['files']:,} {name} files"
        lines.append(f"{first:8} {label:62} {x['ours_rate']:7.0f} i/s {x['storescu_rate']:7.0f} i/s {x['ratio']:7.2f} "
                     f"{'>=1.0':>7}  {_v(x['ratio'] >= RATE_GOAL)}")
        first = ""
        lines += [f"{'':8} PROBLEM: {p}" for p in x["problems"]]
    b = report.get("rss")
    if b:
        if "skipped" in b:
            lines.append(f"{'b) RSS':8} skipped: {b['skipped']}")
        else:
            lines.append(f"{'b) RSS':8} {'upload peak RSS (VmHWM), ' + format(b['files'], ',') + ' CT files':62} "
                         f"{b['peak_mb']['without']:8.1f} MB")
            lines.append(f"{'':8} {'  + one ' + format(b['big_bytes'] / 1e9, '.2f') + ' GB multi-frame file':62} "
                         f"{b['peak_mb']['with']:8.1f} MB")
            lines.append(f"{'':8} {'  difference (median of paired rounds)':62} {b['delta_mb']:+8.1f} MB {'':11} "
                         f"{'':7} {'<=+64MB':>7}  {_v(b['delta_mb'] <= RSS_GOAL_MB)}")
            lines.append(f"{'':8} {'  Orthanc peak RSS meanwhile, without / with':62} "
                         f"{b['orthanc_peak_mb']['without']:8.0f} MB {b['orthanc_peak_mb']['with']:8.0f} MB")
            lines += [f"{'':8} PROBLEM: {p}" for p in b["problems"]]
    c = report.get("rebuild")
    if c:
        what = f"rerun after losing the index / first import, {c['files']:,} files"
        lines.append(f"{'c) index':8} {what:62} "
                     f"{c['rerun_seconds']:9.1f} s {c['first_seconds']:9.1f} s {c['ratio']:7.2f} {'<=0.1':>7}  "
                     f"{_v(c['ratio'] <= REBUILD_GOAL)}")
        f, r = c["first"], c["rerun"]
        lines.append(f"{'':8} {'  inventory + hierarchy + upload, rerun':62} "
                     f"{r['inventory_seconds']:.1f} + {r['hierarchy_seconds']:.1f} + {r['upload_seconds']:.1f} s")
        lines.append(f"{'':8} {'  inventory + hierarchy + upload, first import':62} "
                     f"{f['inventory_seconds']:.1f} + {f['hierarchy_seconds']:.1f} + {f['upload_seconds']:.1f} s")
        b = c["no_cache"]
        lines.append(f"{'':8} {'  the rerun had the scan cache been lost too / first import':62} "
                     f"{b['seconds']:9.1f} s {c['first_seconds']:9.1f} s {b['ratio']:7.2f}")
        lines.append(f"{'':8} {'  inventory + hierarchy + upload, that rerun':62} "
                     f"{b['inventory_seconds']:.1f} + {b['hierarchy_seconds']:.1f} + {b['upload_seconds']:.1f} s")
        lines.append(f"{'':8} {'POSTs the rerun made (ledger attempts > 0)':62} {c['posts']:>11} {'':11} {'':7} "
                     f"{'0':>7}  {_v(c['posts'] == 0)}")
        lines.append(f"{'':8} {'  Orthanc /changes entries during the rerun':62} {c['changes_seq_delta']:>11}")
        lines.append(f"{'':8} {'  files found in Orthanc, recorded without sending':62} {r['already_stored']:>11}")
        if c["problem"]:
            lines.append(f"{'':8} PROBLEM: {c['problem']}")
    d = report.get("nodes")
    if d:
        first = "d) nodes"
        for name, x in d.items():
            k, q = x["kinds"], x["ratios"]
            for kind, label in (("sqlite", "1 node, SQLite (reference)"), ("pg1", "1 node, PostgreSQL"),
                                ("pg2", "2 nodes, one PostgreSQL (more_urls)")):
                y = k[kind]
                text = f"{x['files']:,} {name}: {label}"
                lines.append(f"{first:8} {text:62} {y['rate']:7.0f} i/s")
                first = ""
                lines.append(f"{'':8} {'    Orthanc + PG CPU ms/instance; instances per CPU-second':62} "
                             f"{y['server_ms_per_instance']:8.2f} ms {y['per_server_cpu_s']:7.0f}/s "
                             f"(Orthanc {y['orthanc_cpu_s']:.1f} s, PG {y['pg_cpu_s']:.1f} s, "
                             f"client {y['client_cpu_s']:.1f} s; "
                             f"{y['retried_rows']} retried, {y['failed_503']} failed 503)")
            lines.append(f"{'':8} {'  2 nodes PG / 1 node PG':62} {'':11} {'':11} {q['pg2/pg1']:7.2f}  (no goal on "
                         f"{m['cores']} cores)")
            lines.append(f"{'':8} {'  1 node PG / 1 node SQLite':62} {'':11} {'':11} {q['pg1/sqlite']:7.2f}")
            lines.append(f"{'':8} {'  2 nodes PG / 1 node SQLite':62} {'':11} {'':11} {q['pg2/sqlite']:7.2f}")
            lines += [f"{'':8} PROBLEM: {p}" for p in x["problems"]]
        if (m["cores"] or 1) <= 4:
            lines.append(f"{'':8} On {m['cores']} cores the nodes share the CPU with PostgreSQL and the uploader: "
                         "a second node cannot add throughput here. Size a deployment from the CPU ms/instance above.")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sets and fewer rounds (well under 10 min)")
    ap.add_argument("--only", default="a,b,c,d", help="sections to run, e.g. a,c")
    for key, value in DEFAULTS.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                        help=f"default {value}, quick {QUICK[key]}")
    ap.add_argument("--json", type=Path, help="also write every figure (and each round's) to this file")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp"), help="under /tmp: PostgreSQL must traverse it")
    ap.add_argument("--rss-child", nargs=2, metavar=("ROOT", "INDEX"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    size = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else DEFAULTS)[k]
            for k in DEFAULTS}
    only = set(args.only.split(","))
    for tool in ("storescu", "Orthanc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian packages orthanc, dcmtk)")
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-orthanc-scale-", dir=args.workdir))
    os.chmod(work, 0o711)
    report: dict = {"meta": {"cores": os.cpu_count(), "quick": args.quick, "sizes": size}}
    try:
        sets: dict[str, tuple[Path, Path, int]] = {}
        if only & {"a", "b", "d"}:
            for name, maker, n in (("small", make_small, max(size["small"], size["cluster_small"])),
                                   ("large", make_large, max(size["large"], size["cluster_large"]))):
                root = work / f"nas-{name}"
                t = time.perf_counter()
                maker(root, n)
                count, total = warm(root)
                pristine = work / f"pristine-{name}.duckdb"
                ix = index_nas(root, pristine)
                _log(f"{name}: {count} files of {total / count / 1024:.0f} KB written and indexed in "
                     f"{time.perf_counter() - t:.0f} s ({ix['counts']})")
                sets[name] = (root, pristine, count)
                report["meta"][f"{name}_kb"] = total / count / 1024
        if "a" in only:
            report["rate"] = bench_rate({k: _subset(v, work, size[k]) for k, v in sets.items()}, work, size["rounds"])
        if "b" in only:
            report["rss"] = bench_rss(_subset(sets["large"], work, size["large"])[0], work, size["big_frames"],
                                      max(1, size["rounds"] - 1))
        if "c" in only:
            report["rebuild"] = bench_rebuild(size["rebuild"], work)
        if "d" in only:
            report["nodes"] = bench_nodes({k: _subset(v, work, size[f"cluster_{k}"]) for k, v in sets.items()}, work,
                                          size["cluster_rounds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["meta"].update(load_before=load_before, load_after=os.getloadavg()[0],
                          seconds=time.perf_counter() - started)
    table = render(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({**report, "table": table}, indent=2, default=str))
    return 0


_SUBSETS: dict[tuple[str, int], tuple[Path, Path, int]] = {}


def _subset(item: tuple[Path, Path, int], work: Path, n: int) -> tuple[Path, Path, int]:
    """The first ``n`` files of a set (hard links) with their own pristine index; the set itself if n is all."""
    root, pristine, count = item
    if n >= count:
        return item
    key = (str(root), n)
    if key not in _SUBSETS:
        sub = work / f"{root.name}-{n}"
        for i, p in enumerate(sorted(files_under(root))):
            if i == n:
                break
            out = sub / p.relative_to(root)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, out)
        index = work / f"pristine-{root.name}-{n}.duckdb"
        index_nas(sub, index)
        _SUBSETS[key] = (sub, index, n)
    return _SUBSETS[key]


if __name__ == "__main__":  # required: the scan's process pool uses forkserver, which re-imports this module
    sys.exit(main())
