"""The new-files sensor's tick on a big NAS behind a slow, flaky share, against the same NAS without latency.

    python -m benchmarks.bench_slow_watch [--quick] [--folders 200000] [--latency-ms 1] [--ticks 5]

The NAS is a tree years/months/days/patients/studies; only the two newest days hold files (one small CT per
study) and are recent to the watch. Its first look is taken on the plain folder (steady state is what is
measured); then the tests' FUSE pass-through (pacs_assets_tests/services/flaky_fs.py) sleeps ``latency`` on
every stat, listing and open, and answers EIO on a few paths (a stat that fails once, a stat that always
fails, two failed listings of the folder where the new study lands). Through it:

tick     NasWatch.tick(TICK_BUDGET_SECONDS) on the unchanged NAS, K times: seconds, folders statted, sweep
         progress. Goal: the slowest tick within the budget. A full sweep takes folders / (statted - recent)
         ticks: that period, at the default sensor interval, bounds how late a file in an old folder is seen.
landing  a new study (3 files) in a new folder under today's folder: ticks until the watch reports all its
         files settled (a run would be requested), through the slow share and, with a copy of the same state,
         on the plain folder. Goal: <= 3 ticks through the slow share. Then the run the sensor would ask for
         (``ct_job``, the study's folder, today's partition) imports it into a throwaway Orthanc, through the
         share and from the plain folder (the study deleted from Orthanc in between): its seconds, and the
         ratio of the two.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

import requests
import yaml

from benchmarks.common import throwaway_orthanc
from pacs_assets.defs.sensors import TICK_BUDGET_SECONDS
from pacs_assets.nas.base import NasSettings
from pacs_assets.nas.dicom_folder import KIND as DICOM_FOLDER
from pacs_assets.nas.watch import RECENT_SECONDS, NasWatch
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.services.flaky_fs import FlakyShare, fault

DEFAULT_INTERVAL = NasSettings.model_fields["sensor_interval_seconds"].default
PATIENTS, STUDIES = 8, 4  # per day, per patient: 1 + 8 + 32 = 41 folders a day
FILLED_DAYS = 2  # the newest days hold a file per study
LANDING_FILES = 3
MAX_TICKS = 10  # landing not seen after this many ticks: a failure


def make_tree(root: Path, n_folders: int, template: bytes) -> tuple[int, int, int]:
    """Days back from today until ``n_folders`` folders exist; each folder's mtime is that of its newest
    content, as on a NAS written day by day. Returns (folders, files, recent folders)."""
    now = time.time()
    mtimes: dict[Path, float] = {root: now}
    files = day = 0
    root.mkdir()
    while len(mtimes) < n_folders:
        when = now - day * 86400
        date = dt.date.fromtimestamp(when)
        year, month = root / f"{date:%Y}", root / f"{date:%Y}" / f"{date:%m}"
        for folder in (year, month):
            if folder not in mtimes:  # newest first: its first day is its newest
                folder.mkdir()
                mtimes[folder] = when
        folder = month / f"{date:%d}"
        folder.mkdir()
        mtimes[folder] = when
        for p in range(PATIENTS):
            patient = folder / f"P{p:02d}"
            patient.mkdir()
            mtimes[patient] = when
            for s in range(STUDIES):
                study = patient / f"S{s}"
                study.mkdir()
                mtimes[study] = when
                if day < FILLED_DAYS:
                    (study / "IM1.dcm").write_bytes(template)
                    files += 1
        day += 1
    mtimes[root] = min(now, dt.datetime(dt.date.fromtimestamp(now).year, 1, 1).timestamp())
    for folder, when in mtimes.items():
        os.utime(folder, (when, when))
    recent = sum(when >= now - RECENT_SECONDS + 3600 for when in mtimes.values())  # an hour's margin
    return len(mtimes), files, recent


def tick(watch: NasWatch, today: dt.date) -> tuple[float, object]:
    started = time.perf_counter()
    result = watch.tick(TICK_BUDGET_SECONDS, today)
    return time.perf_counter() - started, result


def ticks_until_seen(watch: NasWatch, today: dt.date, landed: set[str]) -> tuple[int | None, float]:
    """Ticks (and their seconds in all) until every landed file is reported; None if never within MAX_TICKS."""
    seen, seconds = set(), 0.0
    for n in range(1, MAX_TICKS + 1):
        took, result = tick(watch, today)
        seconds += took
        seen |= {path for changes in result.changes.values() for path, _ in changes} & landed
        if seen == landed:
            return n, seconds
    return None, seconds


def import_run(work: Path, label: str, nas_root: Path, folders: list[str], today: dt.date, server) -> tuple[float, int]:
    """The run the sensor asks for, for the landed folders (``ct_job``, today's partition), in-process into
    ``server``: (seconds, instances Orthanc holds after it). Orthanc is emptied afterwards for the next run."""
    from dagster import DagsterInstance

    from pacs_assets.config import load_config
    from pacs_assets.defs.site import build_definitions

    config = work / f"{label}.yaml"
    config.write_text(yaml.safe_dump({
        "nas": [{"id": "ct", "kind": "dicom_folder", "root": str(nas_root),
                 "partitions_start": (today - dt.timedelta(days=40 * 365)).isoformat()}],
        "orthanc": {"url": server.url}, "index": {"path": str(work / f"{label}.duckdb")}}))
    os.environ["ORTHANC_USERNAME"], os.environ["ORTHANC_PASSWORD"] = server.username, server.password
    defs = build_definitions(load_config(config))
    run_config = {"ops": {"ct__file_inventory": {"config": {"folders": folders}}}}
    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        result = defs.resolve_job_def("ct_job").execute_in_process(run_config=run_config, instance=instance,
                                                                  partition_key=today.isoformat())
        seconds = time.perf_counter() - started
    held = requests.get(f"{server.url}/statistics", auth=server.auth, timeout=30).json()["CountInstances"]
    for patient in requests.get(f"{server.url}/patients", auth=server.auth, timeout=30).json():
        requests.delete(f"{server.url}/patients/{patient}", auth=server.auth, timeout=30).raise_for_status()
    return (seconds if result.success else float("nan")), held


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seconds: 200 folders, 2 ticks (figures mean nothing)")
    ap.add_argument("--folders", type=int, help="default 200000")
    ap.add_argument("--latency-ms", type=float, default=1.0)
    ap.add_argument("--ticks", type=int, help="steady ticks through the share (default 5)")
    args = ap.parse_args(argv)
    args.folders = args.folders or (200 if args.quick else 200_000)
    args.ticks = args.ticks or (2 if args.quick else 5)
    today = dt.date.today()
    problems = []
    with tempfile.TemporaryDirectory(prefix="pacs-bench-slow-watch-") as tmp, \
            throwaway_orthanc(Path(tmp)) as server:
        tmp = Path(tmp)
        make_bulk_dicom_nas(tmp / "template", 1)
        template = next((tmp / "template").rglob("*.dcm")).read_bytes()
        root = tmp / "nas"
        started = time.perf_counter()
        folders, files, recent = make_tree(root, args.folders, template)
        made = time.perf_counter() - started

        def open_watch(state: str, where: Path) -> NasWatch:
            return NasWatch(tmp / state, where, partitions_start=today - dt.timedelta(days=40 * 365),
                            read_dates=DICOM_FOLDER.read_dates)

        watch = open_watch("slow.sqlite", root)
        started = time.perf_counter()
        looks = 1
        while not watch.tick(3600, today).complete:
            looks += 1
        first = time.perf_counter() - started
        old = watch.db.execute("SELECT path FROM dirs WHERE mtime_ns < ? ORDER BY checked, path LIMIT 5000",
                               (time.time_ns() - int(RECENT_SECONDS * 1e9),)).fetchall()
        leaves = ["/" + p for (p,) in old if p.count("/") == 4]  # study folders the next slice checks
        watch.close()
        landing_day = root / f"{today:%Y}" / f"{today:%m}" / f"{today:%d}"
        with FlakyShare(root, tmp / "fuse", latency=args.latency_ms / 1000) as share:
            share.set(*[fault("getattr", p, times=1) for p in leaves[:3]], fault("getattr", leaves[3]),
                      fault("readdir", "/" + str(landing_day.relative_to(root)), times=2))
            watch = open_watch("slow.sqlite", share.mountpoint)  # paths are kept relative: same state
            rows = [tick(watch, today) for _ in range(args.ticks)]
            watch.close()
            shutil.copy(tmp / "slow.sqlite", tmp / "plain.sqlite")
            staging = tmp / "staging"
            make_bulk_dicom_nas(staging, LANDING_FILES, files_per_series=LANDING_FILES, days=1, start_date=today)
            patient = next(staging.iterdir())
            landed = {str(landing_day.relative_to(root) / p.relative_to(staging)) for p in patient.rglob("*.dcm")}
            shutil.move(patient, landing_day / patient.name)
            watch = open_watch("slow.sqlite", share.mountpoint)
            slow_ticks, slow_seconds = ticks_until_seen(watch, today, landed)
            watch.close()
            landed_folders = sorted({path.rpartition("/")[0] for path in landed})  # what the sensor names
            slow_run = import_run(tmp, "slow", share.mountpoint, landed_folders, today, server)
            injected = (tmp / "fuse" / "flaky_fs.log").read_text(errors="replace").count("fault ")
        watch = open_watch("plain.sqlite", root)
        plain_ticks, plain_seconds = ticks_until_seen(watch, today, landed)
        watch.close()
        plain_run = import_run(tmp, "plain", root, landed_folders, today, server)

    print(f"new-files sensor through a share with {args.latency_ms:g} ms per call and injected EIO "
          f"({os.cpu_count()} cores):")
    print(f"  NAS: {folders} folders ({recent} recent), {files} files; made in {made:.1f} s; first look "
          f"(plain folder, {looks} ticks) {first:.1f} s")
    print(f"  EIO answered by the share: {injected} (each retried by the watch; one folder fails on every try)")
    print("  tick  seconds  statted  listed  not read  sweep")
    for i, (seconds, r) in enumerate(rows, 1):
        print(f"  {i:4}  {seconds:7.2f}  {r.folders_statted:7}  {r.folders_listed:6}  {r.not_read:8}  "
              f"{r.sweep_checked}/{r.sweep_total}")
        if r.folders_listed:
            problems.append(f"tick {i} listed {r.folders_listed} folders of an unchanged NAS")
    worst = max(seconds for seconds, _ in rows)
    print(f"  slowest tick {worst:.2f} s, budget {TICK_BUDGET_SECONDS:g} s   "
          f"{'MET' if worst <= TICK_BUDGET_SECONDS else 'BELOW'}")
    per_tick = sorted(r.folders_statted - recent for _, r in rows)[len(rows) // 2]
    sweep_ticks = -(-(rows[-1][1].sweep_total - recent) // max(per_tick, 1))
    stat_ms = 1000 * sum(seconds for seconds, _ in rows) / sum(r.folders_statted for _, r in rows)
    print(f"  {stat_ms:.1f} ms of tick per folder statted (by name in its opened parent, several at once; the share "
          "caches no lookups)")
    print(f"  sweep: {per_tick} older folders a tick => a full sweep in {sweep_ticks} ticks = "
          f"{sweep_ticks * DEFAULT_INTERVAL / 60:.0f} min at the default {DEFAULT_INTERVAL} s interval")
    for label, n, seconds in (("slow share", slow_ticks, slow_seconds), ("plain folder", plain_ticks, plain_seconds)):
        if n is None:
            problems.append(f"the landed study was not reported within {MAX_TICKS} ticks ({label})")
        print(f"  new study under today's folder -> reported settled, {label:12}: {n} ticks ({seconds:.2f} s)")
    print(f"  goal: <= 3 ticks through the slow share   {'MET' if slow_ticks and slow_ticks <= 3 else 'BELOW'}")
    for label, (seconds, held) in (("slow share", slow_run), ("plain folder", plain_run)):
        print(f"  then the run into Orthanc, {label:12}: {seconds:.2f} s, Orthanc holds {held} of {LANDING_FILES}")
        if held != LANDING_FILES:
            problems.append(f"the run from the {label} left {held} of {LANDING_FILES} instances in Orthanc")
    print(f"  run through the slow share / from the plain folder: {slow_run[0] / plain_run[0]:.2f}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
