"""Issue #9 through the real automation: a new procedure reaching the PACS by the daemon, and one whole backfill.

1) new procedure -> PACS: ``dagster-daemon run`` (a private DAGSTER_HOME holding the repo's dagster.yaml) runs
   ``ct_new_files_sensor`` (sensor_interval_seconds 5) over a bulk NAS of --sizes small files spread over
   2 years, indexed and marked imported beforehand. Once the sensor's first look has ended (a tick with
   nothing queued or pending, every run it asked for finished), each round lands a new 200-file 512x512 CT
   study: each file copied to a temporary folder on the same disk and renamed into the new study folder, as
   a modality export does; timed until Orthanc's /statistics counts all 200. Goal <= 10 s on the small NAS
   (issue 15), large / small <= 1.15. ``storescu`` of the same 200 files is printed for reference.
2) whole backfill: --backfill-files 512x512 CT files over 730 daily partitions. ``storescu`` of them into a
   fresh Orthanc, divided by the wall time of ``dagster asset materialize -m pacs_assets.definitions --select
   group:ct --partition-range FIRST...LAST`` (one run) into another. Goal >= 0.8. Also prints the
   materialization events the run wrote and where its time went (its event log).

    python -m benchmarks.bench_daemon [--quick] [--sizes 5000,50000] [--rounds 3] [--study-files 200]
        [--backfill-files 6000] [--backfill-days 730]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from benchmarks.bench_incremental import (
    STUDY_FILES,
    partition_events,
    seed_index,
    storescu,
    write_ct_study,
)
from benchmarks.common import throwaway_orthanc

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAYS = 730
GOAL_SECONDS, GOAL_GROWTH, GOAL_BACKFILL = 10.0, 1.15, 0.8  # landing -> Orthanc: issue 15
SENSOR = "ct_new_files_sensor"


def _log(msg: str) -> None:
    print(f"[bench_daemon {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()  # the site's timezone is UTC (see make_site)


def orthanc_count(server) -> int:
    return requests.get(f"{server.url}/statistics", auth=server.auth, timeout=10).json()["CountInstances"]


def make_site(site: Path, root: Path, start: dt.date, server, dagster_queue: bool = False,
              **nas) -> tuple[Path, dict, Path]:
    """pacs.yaml, a DAGSTER_HOME with the repo's dagster.yaml (storage created once, first), the environment.
    ``dagster_queue``: without the file's ``run_queue`` block, i.e. Dagster's default queue (polled every 5 s)."""
    from dagster import DagsterInstance

    config = site / "pacs.yaml"
    config.write_text(yaml.safe_dump({
        "nas": [{"id": "ct", "kind": "dicom_folder", "root": str(root), "partitions_start": start.isoformat(), **nas}],
        "orthanc": {"url": server.url, "run_retries": 0}, "index": {"path": str(site / "index.duckdb")},
        "timezone": "UTC"}))
    home = site / "dagster_home"
    home.mkdir()
    instance_yaml = yaml.safe_load((REPO / "dagster.yaml").read_text())
    if dagster_queue:
        instance_yaml.pop("run_queue", None)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    with DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(), instance.all_instigator_state()
    return config, {**server.env(), "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home)}, home


@contextlib.contextmanager
def running_daemon(env: dict, log: Path):
    """dagster-daemon in its own session with default signals; stopped by PID, and every process it had too."""
    from pacs_assets_tests.services.process import ProcessTree, spawn, stop_pid

    proc = spawn(["env", "--default-signal=INT,TERM", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                 log, env=env, cwd=REPO, new_session=True)
    tree = ProcessTree(proc.pid)
    try:
        yield proc, tree
    finally:
        tree.snapshot()
        stop_pid(proc.pid, timeout=30, sig=signal.SIGINT)
        proc.poll()
        for line in tree.alive():
            stop_pid(int(line.split()[0]), timeout=10)
        if tree.alive():
            _log(f"still running after the daemon stopped: {tree.alive()}")


def sensor_ticks(instance) -> list:
    """The new-files sensor's ticks, newest first."""
    state = next(s for s in instance.all_instigator_state() if s.instigator_name == SENSOR)
    return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=500))


def first_look_over(instance) -> bool:
    from dagster._core.scheduler.instigation import TickStatus

    ticks = [t for t in sensor_ticks(instance) if t.status in (TickStatus.SKIPPED, TickStatus.SUCCESS)]
    if not ticks or ticks[0].status != TickStatus.SKIPPED:
        return False
    cursor = json.loads(ticks[0].cursor or "{}")
    return cursor.get("queued") == 0 and cursor.get("pending") == 0 and all(r.is_finished for r in instance.get_runs())


def run_phases(instance, run_id: str) -> dict[str, float]:
    """Seconds of each phase of a run, in order, from its event log: queue, launch, each step (and the part
    of it spent writing its materialization events), the end. Keys starting with _ are timestamps."""
    at: dict[str, float] = {}
    steps: dict[str, list[float]] = {}  # step key -> [start, first materialization, end]
    planned: list[float] = []
    for e in instance.all_logs(run_id):
        if e.dagster_event is None:
            continue
        kind = e.dagster_event.event_type.name  # (the enum's values say PIPELINE_*)
        if kind == "STEP_START":
            steps[e.step_key] = [e.timestamp, 0.0, 0.0]
        elif kind == "ASSET_MATERIALIZATION" and e.step_key in steps and not steps[e.step_key][1]:
            steps[e.step_key][1] = e.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and e.step_key in steps:
            steps[e.step_key][2] = e.timestamp
        elif kind == "ASSET_MATERIALIZATION_PLANNED":
            planned.append(e.timestamp)
        else:
            at.setdefault(kind, e.timestamp)
    out: dict[str, float] = {}
    if len(planned) > 1:
        out["writing the planned-materialization events"] = planned[-1] - planned[0]
    if "RUN_ENQUEUED" in at and "RUN_STARTING" in at:  # 1.13 writes no RUN_DEQUEUED
        out["queued (enqueued -> dequeued and launching)"] = at["RUN_STARTING"] - at["RUN_ENQUEUED"]
    if "RUN_START" in at and "RUN_STARTING" in at:  # launched by the daemon, not run in the CLI's process
        out["launch (run worker process start-up)"] = at["RUN_START"] - at["RUN_STARTING"]
    if "RUN_START" in at:
        out["_start"] = at["RUN_START"]
    for key, (start, first_mat, end) in sorted(steps.items(), key=lambda kv: kv[1][0]):
        out[f"step {key}"] = end - start
        if first_mat and end - first_mat > 0.5:
            out[f"  of which writing materializations ({key.split('__')[-1]})"] = end - first_mat
    end = at.get("RUN_SUCCESS", at.get("RUN_FAILURE"))
    if end and steps:
        out["last step -> run end"] = end - max(v[2] for v in steps.values())
        out["_end"] = end
    return out


def bench_new_procedure(n: int, rounds: int, work: Path, template: bytes, study_files: int = STUDY_FILES,
                        dagster_queue: bool = False) -> dict:
    from dagster import DagsterInstance, RunsFilter

    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
    from pacs_assets_tests.services.process import wait_until

    start = today() - dt.timedelta(days=DAYS)
    site = work / f"sensor{n}{'-dagster-queue' if dagster_queue else ''}"
    root = site / "nas"
    t = time.perf_counter()
    make_bulk_dicom_nas(root / "bulk", n, files_per_series=100, days=DAYS - 10, start_date=start)
    studies = [write_ct_study(site / "exports" / f"r{r}", template, today() - dt.timedelta(days=1 + r), study_files)
               for r in range(rounds)]
    _log(f"{n}: bulk NAS and {rounds} studies written in {time.perf_counter() - t:.0f} s")
    out: dict = {"files": n, "rounds": [], "dagster_queue": dagster_queue}
    with throwaway_orthanc(site) as server:
        config, env, home = make_site(site, root, start, server, dagster_queue, sensor_interval_seconds=5)
        out["seed_seconds"] = seed_index(root, config)
        _log(f"{n}: index seeded and marked imported in {out['seed_seconds']:.0f} s")
        started = subprocess.run([str(BIN / "dagster"), "sensor", "start", SENSOR, "-w", "workspace.yaml"], cwd=REPO,
                                 env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False)
        assert started.returncode == 0, started.stderr[-2000:]
        log = site / "daemon.log"
        with running_daemon(env, log) as (proc, tree), DagsterInstance.from_config(str(home)) as instance:
            def wait(pred, timeout, what, interval=0.5):
                return wait_until(lambda: tree.snapshot() or pred(), timeout, what, log_path=log, process=proc,
                                  interval=interval)

            out["first_look_seconds"] = wait(lambda: first_look_over(instance), 1800, "the sensor's first look", 2)
            out["first_look_runs"] = len(instance.get_runs())
            _log(f"{n}: first look over in {out['first_look_seconds']:.0f} s ({out['first_look_runs']} runs)")
            for r, files in enumerate(studies):
                base = orthanc_count(server)
                incoming, dest = site / "incoming" / f"r{r}", (root / f"NEWPAT{r:02d}" /
                                    f"{today() - dt.timedelta(days=1 + r):%Y%m%d}_CT" / "S001")
                incoming.mkdir(parents=True)
                t0 = time.time()
                dest.mkdir(parents=True)
                for f in files:  # copied to a temporary name on the same disk, renamed into place
                    shutil.copyfile(f, incoming / f.name)
                    os.rename(incoming / f.name, dest / f.name)
                landed = time.time()
                want = base + len(files)
                wait(lambda want=want: orthanc_count(server) >= want, 600, "the new study in Orthanc")
                t_in = time.time()
                runs = [x for x in instance.get_run_records(RunsFilter(job_name="ct_job"))
                        if x.create_timestamp.timestamp() >= t0]
                ids = [y.dagster_run.run_id for y in runs]
                wait(lambda ids=ids: all(x.dagster_run.is_finished
                                         for x in instance.get_run_records(RunsFilter(run_ids=ids))),
                     600, "the run to end")
                run = min(runs, key=lambda x: x.create_timestamp)
                ticks = sensor_ticks(instance)
                asked = next(t for t in ticks if run.dagster_run.run_id in t.run_ids)
                phases = run_phases(instance, run.dagster_run.run_id)
                row = {"seconds": t_in - t0, "landing": landed - t0, "runs": len(runs),
                       "ticks started after landing, the requesting one too":
                           sum(1 for t in ticks if landed <= t.timestamp <= asked.timestamp),
                       "landed -> requesting tick": asked.timestamp - landed,
                       "requesting tick start -> run created": run.create_timestamp.timestamp() - asked.timestamp,
                       **{k: v for k, v in phases.items() if not k.startswith("_")}}
                row["requesting tick -> all in Orthanc"] = t_in - asked.timestamp  # no tick-phase luck
                if "_start" in phases:
                    row["run started -> all in Orthanc"] = t_in - phases["_start"]
                stamps = sorted(t.timestamp for t in ticks)
                row["tick spacing (median)"] = statistics.median(b - a for a, b in itertools.pairwise(stamps))
                out["rounds"].append(row)
                _log(f"{n}: round {r}: {row['seconds']:.1f} s landing -> Orthanc; " +
                     ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "seconds"))
    out["storescu_seconds"] = storescu(studies[0], work)
    out["study_files"] = study_files
    out["seconds"] = statistics.median(r["seconds"] for r in out["rounds"])
    shutil.rmtree(site, ignore_errors=True)
    return out


def bench_backfill(n: int, rounds: int, work: Path, template: bytes, days: int = DAYS) -> dict:
    from dagster import DagsterEventType, DagsterInstance

    first, last = today() - dt.timedelta(days=days - 1), today()
    base = work / "backfill"
    root = base / "nas"
    t = time.perf_counter()
    files: list[Path] = []
    for i in range(days):  # one study a day, n spread evenly over the days
        day, k = first + dt.timedelta(days=i), n * (i + 1) // days - n * i // days
        if k:
            files += write_ct_study(root / f"P{i:04d}" / f"{day:%Y%m%d}_CT" / "S001", template, day, k)
    size = sum(f.stat().st_size for f in files)
    _log(f"backfill: {len(files)} files, {size / 1e9:.2f} GB, written in {time.perf_counter() - t:.0f} s")
    out: dict = {"files": len(files), "bytes": size, "partitions": days, "rounds": []}
    for r in range(rounds):
        baseline = storescu(files, work)
        site = base / f"r{r}"
        site.mkdir()
        with throwaway_orthanc(site) as server:
            _config, env, home = make_site(site, root, first, server)
            cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "pacs_assets.definitions", "--select",
                   "group:ct", "--partition-range", f"{first}...{last}"]
            t0 = time.time()
            with open(site / "materialize.log", "wb") as log:
                done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                      check=False)
            seconds = time.time() - t0
            in_orthanc = orthanc_count(server)
        assert done.returncode == 0 and in_orthanc == len(files), (done.returncode, in_orthanc,
                                                                  (site / "materialize.log").read_text()[-3000:])
        with DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            parts, total = partition_events(instance, run.run_id)
            planned = len(instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED))
            phases = run_phases(instance, run.run_id)
        row = {"seconds": seconds, "storescu_seconds": baseline, "ratio": baseline / seconds,
               "materializations": total, "partition_materializations": parts, "planned": planned,
               "CLI start -> run started": phases.get("_start", t0) - t0,
               **{k: v for k, v in phases.items() if not k.startswith("_")},
               "run end -> CLI exit": t0 + seconds - phases.get("_end", t0 + seconds)}
        out["rounds"].append(row)
        _log(f"backfill round {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
        shutil.rmtree(site, ignore_errors=True)
    out["ratio"] = statistics.median(r["ratio"] for r in out["rounds"])
    shutil.rmtree(base, ignore_errors=True)
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "BELOW"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one NAS of 200 files, 1 round of a 5-file study, a 10-file backfill over 10 days")
    ap.add_argument("--sizes", default=None, help="bulk NAS sizes for 1) (default 5000,50000)")
    ap.add_argument("--rounds", type=int, default=None, help="new studies per NAS (default 3)")
    ap.add_argument("--study-files", type=int, default=None, help=f"files of each new study (default {STUDY_FILES})")
    ap.add_argument("--backfill-files", type=int, default=None, help="512x512 CT files for 2) (default 6000, ~3.1 GB)")
    ap.add_argument("--backfill-days", type=int, default=None, help=f"daily partitions of 2) (default {DAYS})")
    ap.add_argument("--backfill-rounds", type=int, default=None, help="default 2")
    ap.add_argument("--skip-sensor", action="store_true")
    ap.add_argument("--dagster-queue-too", action="store_true",
                    help="also 1) on the smallest NAS with Dagster's default run queue (5 s polls), for comparison")
    ap.add_argument("--skip-backfill", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    sizes = [int(s) for s in (a.sizes or ("200" if a.quick else "5000,50000")).split(",")]
    rounds = a.rounds or (1 if a.quick else 3)
    study_files = a.study_files or (5 if a.quick else STUDY_FILES)
    bf_files, bf_rounds = a.backfill_files or (10 if a.quick else 6000), a.backfill_rounds or (1 if a.quick else 2)
    bf_days = a.backfill_days or (10 if a.quick else DAYS)
    from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas

    work = Path(tempfile.mkdtemp(prefix="bench-daemon-", dir=a.workdir))
    results: dict = {"load_before": os.getloadavg()}
    try:
        make_bulk_dicom_nas(work / "template", 1)
        template = next((work / "template").rglob("*.dcm")).read_bytes()
        if not a.skip_sensor:
            results["new_procedure"] = [bench_new_procedure(n, rounds, work, template, study_files) for n in sizes]
            if a.dagster_queue_too:
                results["dagster_queue"] = bench_new_procedure(sizes[0], rounds, work, template, study_files, True)
        if not a.skip_backfill:
            results["backfill"] = bench_backfill(bf_files, bf_rounds, work, template, bf_days)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    lines = [f"load average before / after: {results['load_before'][0]:.1f} / {results['load_after'][0]:.1f} (2 cores)",
             f"{'what':62} {'ours':>8} {'baseline':>9} {'ratio':>6}  goal"]
    sens = results.get("new_procedure", [])
    for r in sens:
        what = f"new {r['study_files']}-file CT study -> Orthanc via the daemon, NAS of {r['files']:,}"
        lines.append(f"{what:62} "
                     f"{r['seconds']:7.1f}s {r['storescu_seconds']:8.1f}s {'':>6}  <= {GOAL_SECONDS:.0f} s "
                     f"{verdict(r['seconds'] <= GOAL_SECONDS) if r is sens[0] else ''}")
    if len(sens) > 1:
        g = sens[-1]["seconds"] / sens[0]["seconds"]
        lines.append(f"{'  growth, largest / smallest NAS':62} {'':>8} {'':>9} {g:6.2f}  <= {GOAL_GROWTH} "
                     f"{verdict(g <= GOAL_GROWTH)}")
        after = [statistics.median(x["requesting tick -> all in Orthanc"] for x in r["rounds"])
                 for r in (sens[0], sens[-1])]
        lines.append(f"{'  same, from the requesting tick on (no tick-phase luck)':62} "
                     f"{'':>8} {'':>9} {after[1] / after[0]:6.2f}")
    if "dagster_queue" in results:
        d, queued = results["dagster_queue"], "queued (enqueued -> dequeued and launching)"
        what = "  same NAS, Dagster's default run queue (polled every 5 s)"
        ratio = sens[0]["seconds"] / d["seconds"]  # ours against Dagster's default queue, same machine, same run
        lines.append(f"{what:62} {d['seconds']:7.1f}s {d['storescu_seconds']:8.1f}s {ratio:6.2f}"
                     f"  (queued: {statistics.median(x.get(queued, 0) for x in d['rounds']):.1f} s vs "
                     f"{statistics.median(x.get(queued, 0) for x in sens[0]['rounds']):.1f} s)")
    for r in sens + ([results["dagster_queue"]] if "dagster_queue" in results else []):
        keys = [k for k in dict.fromkeys(k for x in r["rounds"] for k in x) if k != "seconds"]
        which = f"{r['files']:,}" + (", Dagster's default queue" if r["dagster_queue"] else "")
        lines.append(f"  where the time went, NAS of {which} (medians of {len(r['rounds'])} rounds; "
                     f"first look {r['first_look_seconds']:.0f} s, {r['first_look_runs']} runs):")
        lines += [f"    {k:58} {statistics.median(x.get(k, 0) for x in r['rounds']):7.1f}" for k in keys]
    if "backfill" in results:
        b = results["backfill"]
        ours = statistics.median(x["seconds"] for x in b["rounds"])
        base = statistics.median(x["storescu_seconds"] for x in b["rounds"])
        what = (f"whole backfill, {b['files']:,} CT files ({b['bytes'] / 1e9:.1f} GB), {b['partitions']} partitions, "
                "one run")
        lines.append(f"{what:62} {ours:7.1f}s {base:8.1f}s {b['ratio']:6.2f}  >= {GOAL_BACKFILL} "
                     f"{verdict(b['ratio'] >= GOAL_BACKFILL)}")
        x = b["rounds"][0]
        lines.append(f"  materialization events: {x['materializations']:,} ({x['partition_materializations']:,} with a "
                     f"partition), {x['planned']:,} planned")
        shown = ("seconds", "storescu_seconds", "ratio", "materializations", "partition_materializations", "planned")
        keys = [k for k in dict.fromkeys(k for y in b["rounds"] for k in y) if k not in shown]
        lines.append(f"  where the time went (medians of {len(b['rounds'])} rounds):")
        lines += [f"    {k:58} {statistics.median(y.get(k, 0) for y in b['rounds']):7.1f}" for k in keys]
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({**results, "table": lines}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
