"""Steady state at scale: a run costs what changed, not what the NAS holds (issue #9).

a) one new study (200 files, 512x512 16-bit CT) on NAS devices of --sizes files (small bulk files): the
   one-partition run the sensor asks for (walking only the study's folder), through Dagster in-process on a
   SQLite instance, into a fresh Orthanc; baseline ``storescu`` of just those 200 files into another fresh
   Orthanc (one association, TCP_NODELAY). Prints ratio (goal <= 8) and growth small -> large (goal <= 1.2).
b) the reconciliation job on the unchanged largest NAS with 10 years of daily partitions, twice: against an
   Orthanc holding every instance of the NAS (the real nightly case; seeded into Orthanc's own index,
   benchmarks/orthanc_index.py) and against an empty one; baseline a plain ``os.walk`` + ``stat`` of every
   file, run right before each job. Against the full one it runs 1 + 7 times: the first night sweeps Orthanc in
   full (no mark yet, as after a loss), the next seven check what changed since and each read a slice of
   Orthanc's list, the seventh ending the cycle (pipeline/orthanc_sweep.py): the nightly figure is the median
   night against the median baseline, the last night is its own run against that baseline, and each night's
   ratio to its own baseline is printed; against the empty one, the best of 3 runs against the best of their 3
   baselines. Prints the four ratios (goal <= 3) and
   how many materialization events the run wrote for partitions (goal 0).
   Also: the identity guard's share of that run (its seconds in the upload, from the run's metadata, plus the
   identity checks' steps; goal <= 0.10) and, after b), one pass of identity detection over the whole index
   against the reconciliation (goal <= 0.05).
c) peak RSS of the reconciliation's whole-NAS walk (``pipeline.reconciliation.reconcile``) on each NAS, in a fresh
   child process (VmHWM from /proc/<pid>/status: ru_maxrss would include what the parent held before the
   exec). Prints the ratio largest / smallest (goal <= 1.25).
d) ``--rss-only``: c) alone, on NAS devices generated fast (``--sizes``, default 20000,200000,2000000): 20,000
   real bulk files, then hard-linked copies of that tree (copy001/, copy002/...) up to the size. Only the
   20,000 are parsed; the copies' scan cache rows are derived from theirs in SQL (a link holds the very same
   bytes, size and mtime), a first reconciliation fills the index from the cache (its peak is printed too),
   and the second, the steady state, is measured. Prints each size's ratio to the previous one (goals:
   <= 1.25 for 20,000 -> 200,000, <= 1.5 for 200,000 -> 2,000,000).

The bulk NAS is indexed once with the real pipeline functions (timed, printed) and its ledger marked
imported (uploading 200,000 bulk files would only measure Orthanc). Everything is deleted at the end.

    python -m benchmarks.bench_incremental [--quick] [--sizes 20000,200000] [--study-files 200] [--workdir DIR]
        [--skip-reconcile] [--skip-rss]
    python -m benchmarks.bench_incremental --rss-only [--sizes 20000,200000,2000000] [--workdir DIR]
        [--walk-limits 96MB,64MB]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import yaml

from benchmarks.common import bench_module, run_storescu, throwaway_orthanc
from benchmarks.orthanc_index import faithful, orthanc_holding

STUDY_FILES = 200
YEARS_DAYS = 3650


def _log(msg: str) -> None:
    print(f"[bench_incremental] {msg}", file=sys.stderr, flush=True)


def write_ct_study(folder: Path, template: bytes, day: dt.date, n: int = STUDY_FILES) -> list[Path]:
    """``n`` realistic CT files (512x512, 16-bit, ~513 KB) of one new study, dated ``day``."""
    import io

    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(template))
    rng = np.random.default_rng(1)
    ds.Rows = ds.Columns = 512
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "BENCHNEW01", "Bench^New", "BN0000001"
    ds.StudyDate = ds.SeriesDate = day.strftime("%Y%m%d")
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
        path = folder / f"IM{i + 1:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def seed_index(root: Path, config_path: Path) -> float:
    """Index the bulk NAS with the real pipeline (whole walk, hierarchy), mark it imported. Returns seconds."""
    from pacs_assets.config import load_config
    from pacs_assets.index.connection import transaction
    from pacs_assets.index.hierarchy import rebuild_hierarchy
    from pacs_assets.nas.registry import source_for
    from pacs_assets.pipeline.inventory import take_inventory

    cfg = load_config(config_path)
    nas = cfg.nas[0]
    started = time.perf_counter()
    take_inventory(source_for(nas), nas, cfg.index.path, nas.partitions_start, dt.date.max, today=dt.date.today())
    rebuild_hierarchy(cfg.index.path, nas.id, nas.partitions_start, dt.date.max)
    with transaction(cfg.index.path) as con:
        con.execute("""INSERT INTO import_history (nas_id, file_path, change_token, partition_date, orthanc_instance_id,
                           sop_instance_uid, status, retryable, attempts, http_status, started_at, finished_at)
                       SELECT nas_id, file_path, change_token, partition_date, orthanc_instance_id, sop_instance_uid,
                              'imported', false, 1, 200, now(), now() FROM instances""")
    return time.perf_counter() - started


def vm_kb(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` figure in kB (VmHWM: the peak resident set since the process's exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_child(config_path: Path, env: dict | None = None) -> dict:
    """In a fresh process: the reconciliation's whole walk of the NAS, and that process's peak RSS."""
    out = bench_module("bench_incremental", "--rss-child", str(config_path), env=env)
    if out.returncode:
        raise RuntimeError(f"RSS child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_child_main(config_path: str) -> int:
    from pacs_assets.config import load_config
    from pacs_assets.nas.registry import source_for
    from pacs_assets.pipeline.reconciliation import reconcile

    cfg = load_config(Path(config_path))
    nas = cfg.nas[0]
    floor = vm_kb("VmRSS")
    started = time.perf_counter()
    found = reconcile(source_for(nas), nas, cfg.index.path, today=dt.date.today())
    print(json.dumps({"peak_kb": vm_kb("VmHWM"), "floor_kb": floor, "seconds": time.perf_counter() - started,
                      "walked": found.walked, "partitions_changed": len(found.changes)}))
    return 0


DISTINCT = 20_000  # real files of a linked NAS (d); the rest are hard links to them


def make_linked_nas(root: Path, n: int, start: dt.date, distinct: int = DISTINCT) -> int:
    """``n`` files fast: min(n, distinct) real bulk files under bulk/, then hard-linked copies of that tree under
    copyNNN/bulk/ (the last one partial). Returns how many copies."""
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

    base = make_bulk_dicom_nas(root / "bulk", min(n, distinct), files_per_series=100, days=YEARS_DAYS,
                               start_date=start)
    files = sorted(p.relative_to(root) for p in (root / "bulk").rglob("*.dcm"))
    left, copy = n - base, 0
    while left > 0:
        copy += 1
        for rel in files[:left]:
            target = root / f"copy{copy:03d}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(root / rel, target)
        left -= min(left, len(files))
    return copy


def seed_linked(config_path: Path, copies: int) -> float:
    """Parse bulk/ with the real inventory step, then give each copy the cache rows of the files it links to.
    Returns seconds."""
    import duckdb

    from pacs_assets.config import load_config
    from pacs_assets.index import scan_cache
    from pacs_assets.nas.registry import source_for
    from pacs_assets.pipeline.inventory import take_inventory

    cfg = load_config(config_path)
    nas = cfg.nas[0]
    started = time.perf_counter()
    folders = sorted({str(p.parent.relative_to(nas.root)) for p in (nas.root / "bulk").rglob("*.dcm")})
    take_inventory(source_for(nas), nas, cfg.index.path, nas.partitions_start, dt.date.max, today=dt.date.today(),
                   folders=folders)
    with duckdb.connect(str(cfg.index.path)) as con:
        scan_cache.attach(con, cfg.index.path, nas.id, nas.root)
        for k in range(1, copies + 1):
            prefix = f"copy{k:03d}/"
            con.execute("INSERT INTO sc.scan_cache SELECT * REPLACE (? || file_path AS file_path, "
                        "? || folder AS folder) FROM sc.scan_cache "
                        "WHERE nas_id = ? AND starts_with(file_path, 'bulk/')",
                        [prefix, prefix, nas.id])
        scan_cache.reseal(con, nas.id)
    return time.perf_counter() - started


def bench_rss_only(n: int, work: Path, distinct: int = DISTINCT, walk_limits: tuple[str, ...] = ()) -> dict:
    today = dt.date.today()
    start = today - dt.timedelta(days=YEARS_DAYS - 1)
    site = work / f"rss{n}"
    root = site / "nas"
    t = time.perf_counter()
    copies = make_linked_nas(root, n, start, distinct)
    _log(f"{n}: linked NAS written in {time.perf_counter() - t:.0f} s ({copies} copies)")
    config = site / "pacs.yaml"
    config.write_text(yaml.safe_dump({
        "nas": [{"id": "ct", "kind": "dicom_folder", "root": str(root), "partitions_start": start.isoformat()}],
        "orthanc": {"url": "http://127.0.0.1:9", "run_retries": 0}, "index": {"path": str(site / "index.duckdb")}}))
    out = {"files": n, "seed_seconds": seed_linked(config, copies)}
    out["rebuild"] = rss_child(config)  # the index filled from the cache
    out["rss"] = rss_child(config)  # the steady state: the goal's figure
    # The same steady walk under other caps of the walk's DuckDB sessions, on the NAS already generated.
    out["limits"] = {limit: rss_child(config, {"PACS_WALK_MEMORY_LIMIT": limit}) for limit in walk_limits}
    for what in ("rebuild", "rss"):
        _log(f"{n}: {what} walk peak RSS {out[what]['peak_kb'] / 1024:.0f} MB in {out[what]['seconds']:.1f} s, "
             f"{out[what]['walked']} files, {out[what]['partitions_changed']} dates changed")
    shutil.rmtree(site, ignore_errors=True)
    return out


def print_rss_only(results: list[dict]) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'what':58} {'peak':>9} {'seconds':>9} {'ratio':>7} goal")
    for prev, r in zip([None, *results[:-1]], results, strict=True):
        ratio = r["rss"]["peak_kb"] / prev["rss"]["peak_kb"] if prev else None
        goal = 1.25 if prev and prev["files"] < 200_000 else 1.5
        what = f"peak RSS of the whole walk (steady state), {r['files']:,} files"
        tail = f"{ratio:7.2f} <= {goal} {verdict(ratio, goal)}" if prev else ""
        print(f"{what:58} {r['rss']['peak_kb'] / 1024:7.0f}MB {r['rss']['seconds']:8.1f}s {tail}")
        print(f"{'  first walk after seeding (index filled from the cache)':58} "
              f"{r['rebuild']['peak_kb'] / 1024:7.0f}MB {r['rebuild']['seconds']:8.1f}s")
    for limit in results[0].get("limits", {}):
        for prev, r in zip([None, *results[:-1]], results, strict=True):
            peak = r["limits"][limit]["peak_kb"]
            ratio = f"{peak / prev['limits'][limit]['peak_kb']:7.2f}" if prev else ""
            what = f"  the same, PACS_WALK_MEMORY_LIMIT={limit}, {r['files']:,} files"
            print(f"{what:58} {peak / 1024:7.0f}MB {r['limits'][limit]['seconds']:8.1f}s {ratio}")
    for r in results:
        print(f"(seeding {r['files']:,} files took {r['seed_seconds']:.0f} s)")


def baseline_walk(root: Path) -> float:
    started = time.perf_counter()
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            n += 1
    return time.perf_counter() - started


def storescu(files: list[Path], work: Path) -> float:
    seconds, _, proc = run_storescu(files, work, recursive=False)
    proc.check_returncode()
    return seconds


def partition_events(instance, run_id: str) -> tuple[int, int]:
    """(materializations with a partition, all materializations) the run wrote."""
    from dagster import DagsterEventType

    records = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    parts = [r for r in records if r.dagster_event.event_specific_data.materialization.partition is not None]
    return len(parts), len(records)


def step_seconds(instance, run_id: str) -> dict[str, float]:
    """Each step's (and check's) seconds in the run, from its STEP_START and STEP_SUCCESS events."""
    started, out = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not record.step_key:
            continue
        if event.event_type_value == "STEP_START":
            started[record.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and record.step_key in started:
            out[record.step_key.split("__", 1)[-1]] = round(record.timestamp - started[record.step_key], 2)
    return out


def identity_share(config: Path, reconcile_seconds: float) -> dict:
    """What identity detection over the whole index costs (the identity checks' one pass over the person
    records: ``pipeline.identity_guard.index_collisions``) against the reconciliation of the same NAS
    (goal <= 0.05). The reconciliation itself only adds a NOT EXISTS on the small holds table."""
    from pacs_assets.config import load_config
    from pacs_assets.pipeline.identity_guard import guard_for, index_collisions

    cfg = load_config(config)
    t = time.perf_counter()
    found = index_collisions(guard_for(cfg), cfg.index.path)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "collisions": len(found), "ratio": seconds / reconcile_seconds}


def reconcile_run(defs, instance, root: Path, what: str, rounds: int = 1) -> dict:
    """The reconciliation job, in-process, each run right after one ``os.walk`` + ``stat`` of the NAS: its
    baseline (the machine's load drifts: each run gets its own). A job that leaves nothing behind (the empty
    Orthanc: every night a full sweep) runs ``rounds`` times: the best run against the best baseline, the same
    statistic on both sides."""
    walk, seconds = float("inf"), float("inf")
    for _ in range(rounds):
        walk = min(walk, baseline_walk(root))
        t = time.perf_counter()
        result = defs.resolve_job_def("ct_reconciliation_job").execute_in_process(instance=instance)
        seconds = min(seconds, time.perf_counter() - t)
        assert result.success
    parts, total = partition_events(instance, result.run_id)
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    sweep = checks["every_stored_instance_in_orthanc"]
    out = {"seconds": seconds, "baseline_walk_seconds": walk, "ratio": seconds / walk,
           "partition_materializations": parts, "materializations": total,
           "steps": step_seconds(instance, result.run_id),
           "sweep": {"passed": sweep.passed, **{k: v.value for k, v in sweep.metadata.items()}}}
    _log(f"reconciliation ({what}) {seconds:.1f} s, os.walk+stat {walk:.2f} s, partition events {parts}, "
         f"steps {out['steps']}, sweep {out['sweep']}")
    return out


def reconcile_in_full_orthanc(config: Path, root: Path, site: Path, instance) -> dict:
    """The same job against an Orthanc that holds every instance of the NAS (the real nightly case), seeded
    into its own index (benchmarks/orthanc_index.py), with a check that it answers like a real one."""
    from pacs_assets.config import load_config
    from pacs_assets.defs.site import build_definitions
    from pacs_assets.index.connection import session
    from pacs_assets.pipeline.orthanc_sweep import SLICE_NIGHTS

    cfg = load_config(config)
    with session(cfg.index.path, read_only=True) as con:
        rows = con.execute("SELECT DISTINCT patient_id, study_instance_uid, series_instance_uid, sop_instance_uid, "
                           "orthanc_instance_id, file_path FROM instances ORDER BY file_path").fetchall()
    t = time.perf_counter()
    saved = {k: os.environ[k] for k in ("ORTHANC_USERNAME", "ORTHANC_PASSWORD")}
    with orthanc_holding(site, [r[:4] for r in rows]) as full:
        _log(f"Orthanc seeded with {len(rows)} instances in {time.perf_counter() - t:.1f} s")
        problem = faithful(full, [r[:4] for r in rows], (root / rows[0][5]).read_bytes(), rows[0][4])
        os.environ["ORTHANC_USERNAME"], os.environ["ORTHANC_PASSWORD"] = full.username, full.password
        raw = yaml.safe_load(config.read_text())
        empty_url, raw["orthanc"]["url"] = raw["orthanc"]["url"], full.url
        config.write_text(yaml.safe_dump(raw))
        try:
            defs = build_definitions(load_config(config))
            # The first night after the seeding has no mark: a full sweep, as after anything went missing. The
            # next nights each read a slice of Orthanc's list; the last of them ends the cycle (a week's worth).
            full = reconcile_run(defs, instance, root, "Orthanc holding the NAS, full sweep")
            nights = [reconcile_run(defs, instance, root, f"Orthanc holding the NAS, night {k + 1} of a cycle")
                      for k in range(SLICE_NIGHTS)]
            out = {**nights[0], **cycle_figures(nights), "full_sweep": full}
        finally:
            raw["orthanc"]["url"] = empty_url
            config.write_text(yaml.safe_dump(raw))
            os.environ.update(saved)
    for run in (out["full_sweep"], *nights):
        if problem is None and (run["sweep"]["missing_in_orthanc"] or not run["sweep"]["passed"]):
            problem = f"the sweep found {run['sweep']['missing_in_orthanc']} instances missing in a full Orthanc"
    if problem is None and (out["full_sweep"]["sweep"]["sweep"], out["sweep"]["sweep"]) != ("full", "changes"):
        problem = "the night after a clean full sweep swept in full again"
    if problem is None and sum(n["sweep"]["listed"] for n in nights) != len(rows):
        problem = f"a cycle of {SLICE_NIGHTS} nights listed {sum(n['sweep']['listed'] for n in nights)} instances"
    out["problem"] = problem
    return out


def cycle_figures(nights: list[dict]) -> dict:
    """A cycle's nights do the same work (the changes proof and a slice of Orthanc's list; the last one also ends
    the cycle), each after its own baseline: the nightly figure is the median night against the median
    baseline, and the last night is its own run against that same median baseline. Each night's ratio to its
    own baseline is kept too (``each_night``)."""
    base = statistics.median(n["baseline_walk_seconds"] for n in nights)
    seconds = statistics.median(n["seconds"] for n in nights)
    steps = {k: round(statistics.median(n["steps"].get(k, 0.0) for n in nights), 2) for k in nights[0]["steps"]}
    last = nights[-1]
    return {"seconds": seconds, "baseline_walk_seconds": base, "ratio": seconds / base, "steps": steps,
            "each_night": [round(n["ratio"], 2) for n in nights],
            "cycle_end": {**last, "baseline_walk_seconds": base, "ratio": last["seconds"] / base}}


def verdict(ratio: float, goal: float, higher_is_better: bool = False) -> str:
    return "met" if (ratio >= goal if higher_is_better else ratio <= goal) else "BELOW"


def bench_size(n: int, work: Path, template_holder: dict, reconcile: bool, rss: bool,
               study_files: int = STUDY_FILES) -> dict:
    from dagster import DagsterInstance

    from pacs_assets.config import load_config
    from pacs_assets.defs.site import build_definitions
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

    today = dt.date.today()
    start = today - dt.timedelta(days=YEARS_DAYS - 1)
    site = work / f"n{n}"
    root = site / "nas"
    t = time.perf_counter()
    make_bulk_dicom_nas(root / "bulk", n, files_per_series=100, days=YEARS_DAYS, start_date=start)
    _log(f"{n}: bulk NAS written in {time.perf_counter() - t:.0f} s")
    config = site / "pacs.yaml"
    config.write_text(yaml.safe_dump({
        "nas": [{"id": "ct", "kind": "dicom_folder", "root": str(root), "partitions_start": start.isoformat()}],
        "orthanc": {"url": "http://127.0.0.1:9", "run_retries": 0}, "index": {"path": str(site / "index.duckdb")}}))
    seeded = seed_index(root, config)
    _log(f"{n}: index seeded in {seeded:.0f} s")
    out = {"files": n, "seed_seconds": seeded}
    if rss:
        out["rss"] = rss_child(config)
        _log(f"{n}: whole walk peak RSS {out['rss']['peak_kb'] / 1024:.0f} MB in {out['rss']['seconds']:.1f} s")
    home = site / "dagster_home"
    home.mkdir()
    with throwaway_orthanc(site) as server, DagsterInstance.local_temp(str(home)) as instance:
        os.environ["ORTHANC_USERNAME"], os.environ["ORTHANC_PASSWORD"] = server.username, server.password
        raw = yaml.safe_load(config.read_text())
        raw["orthanc"]["url"] = server.url
        config.write_text(yaml.safe_dump(raw))
        defs = build_definitions(load_config(config))
        if reconcile:
            out["reconcile"] = reconcile_run(defs, instance, root, "empty Orthanc", rounds=3)
            out["reconcile"]["identity"] = identity_share(config, out["reconcile"]["seconds"])
            out["reconcile_full"] = reconcile_in_full_orthanc(config, root, site, instance)
        day = today - dt.timedelta(days=1)
        folder = root / "NEWPAT" / f"{day:%Y%m%d}_CT" / "S001"
        template = template_holder.setdefault("t", next((root / "bulk").rglob("*.dcm")).read_bytes())
        files = write_ct_study(folder, template, day, study_files)
        run_config = {"ops": {"ct__file_inventory": {"config": {"folders": [str(folder.relative_to(root))]}}}}
        t = time.perf_counter()
        result = defs.resolve_job_def("ct_job").execute_in_process(run_config=run_config, instance=instance,
                                                                  partition_key=day.isoformat())
        run_seconds = time.perf_counter() - t
        assert result.success
        baseline = storescu(files, work)
        steps = step_seconds(instance, result.run_id)
        # The identity guard's part of the run: its work inside the upload (the run's own metadata) and the two
        # identity checks' steps, against the whole run (goal <= 0.10).
        guard = sum(e.materialization.metadata["identity_guard_seconds"].value
                    for e in result.get_asset_materialization_events()
                    if "identity_guard_seconds" in e.materialization.metadata)
        checks = sum(v for k, v in steps.items() if "patient_identity" in k or "no_held_files" in k)
        out["new_study"] = {"files": len(files), "run_seconds": run_seconds, "storescu_seconds": baseline,
                            "ratio": run_seconds / baseline, "steps": steps,
                            "identity": {"guard_seconds": guard, "check_seconds": checks,
                                         "ratio": (guard + checks) / run_seconds}}
        _log(f"{n}: one-partition run {run_seconds:.1f} s, storescu {baseline:.1f} s, "
             f"steps {out['new_study']['steps']}")
    shutil.rmtree(site, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seconds: NAS of 200 and 400 files, a 10-file study")
    ap.add_argument("--sizes", default=None, help="bulk NAS sizes (default 20000,200000)")
    ap.add_argument("--study-files", type=int, default=None, help=f"files of the new study (default {STUDY_FILES})")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-reconcile", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--rss-only", action="store_true", help="only d): peak RSS of the whole walk, linked NAS")
    ap.add_argument("--walk-limits", default="", help="with --rss-only: also measure the steady walk under these "
                    "PACS_WALK_MEMORY_LIMIT values (e.g. 96MB,64MB) on the same NAS")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        return _rss_child_main(args.rss_child)
    if args.rss_only:
        sizes = [int(s) for s in (args.sizes or ("200,2000" if args.quick else "20000,200000,2000000")).split(",")]
        work = Path(tempfile.mkdtemp(prefix="bench-rss-", dir=args.workdir))
        try:
            limits = tuple(filter(None, args.walk_limits.split(",")))
            results = [bench_rss_only(n, work, 100 if args.quick else DISTINCT, limits) for n in sizes]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        print_rss_only(results)
        return 0
    sizes = [int(s) for s in (args.sizes or ("200,400" if args.quick else "20000,200000")).split(",")]
    study_files = args.study_files or (10 if args.quick else STUDY_FILES)
    work = Path(tempfile.mkdtemp(prefix="bench-incr-", dir=args.workdir))
    holder: dict = {}
    try:
        results = [bench_size(n, work, holder, reconcile=not args.skip_reconcile and n == max(sizes),
                              rss=not args.skip_rss, study_files=study_files) for n in sizes]
        linked = [bench_rss_only(n, work, 50) for n in (100, 1000)] if args.quick else []  # d), a smoke run
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if linked:
        print_rss_only(linked)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'what':58} {'ours':>9} {'baseline':>9} {'ratio':>7} goal")
    for r in results:
        s = r["new_study"]
        print(f"{'new ' + str(s['files']) + '-file CT study, one-partition run, NAS of ' + format(r['files'], ','):58} "
              f"{s['run_seconds']:8.1f}s {s['storescu_seconds']:8.1f}s {s['ratio']:7.2f} <= 8 {verdict(s['ratio'], 8)}")
    for r in results:
        i = r["new_study"]["identity"]
        print(f"{'  identity guard + checks / that run, NAS of ' + format(r['files'], ','):58} "
              f"{i['guard_seconds'] + i['check_seconds']:8.2f}s {r['new_study']['run_seconds']:8.1f}s "
              f"{i['ratio']:7.3f} <= 0.10 {verdict(i['ratio'], 0.10)}")
    if len(results) > 1:
        growth = results[-1]["new_study"]["run_seconds"] / results[0]["new_study"]["run_seconds"]
        print(f"{'growth of that run, smallest -> largest NAS':58} {'':>9} {'':>9} {growth:7.2f} <= 1.2 "
              f"{verdict(growth, 1.2)}")
    for r in results:
        if "reconcile" in r:
            for c, orthanc in ((r["reconcile_full"], "full Orthanc, nightly (median of a cycle)"),
                               (r["reconcile_full"]["cycle_end"], "full Orthanc, a cycle's last night"),
                               (r["reconcile_full"]["full_sweep"], "full Orthanc, full sweep (no mark)"),
                               (r["reconcile"], "empty Orthanc")):
                print(f"{'reconcile ' + format(r['files'], ',') + ' unchanged files, ' + orthanc:58} "
                      f"{c['seconds']:8.1f}s {c['baseline_walk_seconds']:8.2f}s {c['ratio']:7.2f} <= 3 "
                      f"{verdict(c['ratio'], 3)}")
                print(f"{'  steps (s)':58} " + ", ".join(f"{k} {v}" for k, v in c["steps"].items()))
                if "each_night" in c:
                    print(f"{'  each night against its own baseline':58} " + ", ".join(map(str, c["each_night"])))
            c = r["reconcile"]
            print(f"{'  materialization events for partitions / all':58} {c['partition_materializations']:>9} "
                  f"{c['materializations']:>9} {'':>7} 0 {verdict(c['partition_materializations'], 0)}")
            i = c["identity"]
            print(f"{'  identity detection over the whole index / reconciliation':58} {i['seconds']:8.2f}s "
                  f"{c['seconds']:8.1f}s {i['ratio']:7.3f} <= 0.05 {verdict(i['ratio'], 0.05)}")
    if len(results) > 1 and all("rss" in r for r in results):
        small, large = results[0]["rss"]["peak_kb"] / 1024, results[-1]["rss"]["peak_kb"] / 1024
        what = f"peak RSS of the whole walk, {results[0]['files']:,} -> {results[-1]['files']:,}"
        print(f"{what:58} "
              f"{large:7.0f}MB {small:7.0f}MB {large / small:7.2f} <= 1.25 {verdict(large / small, 1.25)}")
    for r in results:
        print(f"(one-partition run's steps on {r['files']:,} files, s: "
              + ", ".join(f"{k} {v}" for k, v in r["new_study"]["steps"].items()) + ")")
    for r in results:
        if r.get("reconcile_full", {}).get("problem"):
            print(f"PROBLEM: {r['reconcile_full']['problem']}")
        if "reconcile" in r and r["reconcile"]["sweep"].get("missing_in_orthanc") != r["reconcile"]["sweep"]["checked"]:
            print(f"PROBLEM: the sweep of an empty Orthanc found {r['reconcile']['sweep']} missing, not all")
    for r in results:
        print(f"(seeding the index of {r['files']:,} files took {r['seed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
