"""Worker processes for test_concurrency.py: each role runs as its own Python process, as runs, sensors and
searches do in production. Not a test module (pytest does not collect it).

    python -m pacs_assets_tests.automation.workers --ready R --go G materialize CONFIG NAS [FIRST LAST]
    python -m pacs_assets_tests.automation.workers --ready R --go G sensor CONFIG NAS STOP
    python -m pacs_assets_tests.automation.workers --ready R --go G search CONFIG STOP

Every worker does its imports and setup first, touches READY, then waits for GO, so that all of them
start their real work at the same moment. Each prints one JSON line ``RESULT {...}`` at the end and
exits non-zero on any error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _barrier(ready: Path, go: Path, timeout: float = 120.0) -> None:
    ready.touch()
    deadline = time.monotonic() + timeout
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no GO signal within {timeout:.0f} s")
        time.sleep(0.01)


def materialize(args, ready: Path, go: Path) -> dict:
    from dagster import DagsterInstance

    from pacs_assets_tests.harness import materialize_nas

    # DAGSTER_HOME set: the shared instance (its pools serialize the upload steps of concurrent runs,
    # as for runs the daemon launches); unset: a private ephemeral instance per process.
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    with instance:
        _barrier(ready, go)
        started = time.monotonic()
        result = materialize_nas(Path(args.config), args.nas, first=args.first, last=args.last,
                                 raise_on_error=False, instance=instance)
        failures = [str(e.step_failure_data.error.message if e.step_failure_data.error else e.message)
                    for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        failed_checks = [{"check": e.event_specific_data.check_name,
                          "metadata": {k: v.value for k, v in e.event_specific_data.metadata.items()}}
                         for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                         and not e.event_specific_data.passed]
        return {"success": result.success, "run_id": result.run_id, "failures": failures,
                "failed_checks": failed_checks,
                "seconds": round(time.monotonic() - started, 2)}


def sensor(args, ready: Path, go: Path) -> dict:
    from dagster import DagsterInstance, build_sensor_context

    from pacs_assets.config import load_config
    from pacs_assets.defs.site import build_definitions

    defs = build_definitions(load_config(args.config))
    sensor_def = defs.resolve_sensor_def(f"{args.nas}_new_files_sensor")
    cursor, ticks, requests, skips = None, 0, [], []
    with DagsterInstance.ephemeral() as instance:
        _barrier(ready, go)
        stop = Path(args.stop)
        while True:
            last = stop.exists()  # one more tick after STOP: the sensor still works once the runs are done
            with build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
                data = sensor_def.evaluate_tick(context)
            cursor, ticks = data.cursor, ticks + 1
            requests += [{"partition_key": r.partition_key, "job_name": r.job_name, "run_key": r.run_key,
                          "tags": dict(r.tags)}
                         for r in data.run_requests or []]
            if data.skip_message:
                skips.append(data.skip_message)
            if last:
                break
            time.sleep(0.5)
    return {"ticks": ticks, "run_requests": requests, "skips": skips[-3:]}


def search(args, ready: Path, go: Path) -> dict:
    """Repeated searches: `pacs search` (a new process each, as an operator runs it) when the package has
    it, else a read-only query through connection.session. Every answer must be complete and never shrink."""
    import importlib.util
    import subprocess

    from pacs_assets.config import load_config

    config = load_config(args.config)
    use_cli = importlib.util.find_spec("pacs_assets.cli.search") is not None
    pacs = str(Path(sys.executable).parent / "pacs")
    searches, before_index, found, errors = 0, 0, [], []
    _barrier(ready, go)
    stop = Path(args.stop)
    while True:
        last = stop.exists()  # one more search after STOP: the final index answers too
        if use_cli:
            done = subprocess.run([pacs, "--config", args.config, "search", "--patient-id", "S", "--json",
                                   "--limit", "1000"], check=False, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                found.append(json.loads(done.stdout)["patients_found"])
                searches += 1
            elif "does not exist yet" in done.stderr and not found:
                before_index += 1  # no run has created the index yet
            else:
                errors.append(f"exit {done.returncode}: {done.stderr.strip()[-500:]}")
                print(done.stderr, file=sys.stderr, flush=True)
        else:
            from pacs_assets.index import connection

            try:
                with connection.session(config.index.path, read_only=True) as con:
                    found.append(con.execute("SELECT count(DISTINCT patient_id) FROM patients").fetchall()[0][0])
                searches += 1
            except FileNotFoundError:
                before_index += 1
        if last:
            break
        time.sleep(0.05)
    return {"success": not errors, "via": "pacs search" if use_cli else "connection.session(read_only=True)",
            "searches": searches, "before_index_existed": before_index, "patients_found": found,
            "errors": errors[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("materialize")
    p.add_argument("config")
    p.add_argument("nas")
    p.add_argument("first", nargs="?")
    p.add_argument("last", nargs="?")
    p = sub.add_parser("sensor")
    p.add_argument("config")
    p.add_argument("nas")
    p.add_argument("stop")
    p = sub.add_parser("search")
    p.add_argument("config")
    p.add_argument("stop")
    args = parser.parse_args(argv)
    role = {"materialize": materialize, "sensor": sensor, "search": search}[args.role]
    result = role(args, Path(args.ready), Path(args.go))
    print("RESULT " + json.dumps(result, default=str), flush=True)
    return 0 if result.get("success", True) else 1


if __name__ == "__main__":
    sys.exit(main())
