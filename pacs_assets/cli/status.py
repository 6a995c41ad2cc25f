"""`pacs status`: how far each NAS is, from the index, and what Orthanc holds, from Orthanc itself.

Per NAS: files found by the walk, files indexed (DICOM instances), and each file's current status
(imported, duplicate = already in Orthanc, uid_conflict = Orthanc holds a different file with the same
UIDs and kept that one, failed, held = its patient identity collides (`pacs identity`), skipped = not an
image, pending = still to import);
the import rate is the attempts finished in the last 10 minutes per minute (over the minutes they
span, at least one), and the ETA is the pending files at that rate.

With DAGSTER_HOME set, also the runs that hold or wait for a Dagster pool slot (nas_walk: one walk at a time,
orthanc_upload: one upload at a time): why an upload waits. Each run's process is alive, dead (the next run that
waits for the pool marks it failed and frees its slot), elsewhere (another machine or container: judged only
there) or unknown (not recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import TYPE_CHECKING

from pacs_assets.cli.output import print_json, write_output
from pacs_assets.errors import ConfigError

if TYPE_CHECKING:  # the settings models (pydantic) load when a command runs, not when `pacs` starts
    from pacs_assets.config import PacsConfig

RATE_WINDOW = dt.timedelta(minutes=10)
_EPOCH = dt.datetime.fromtimestamp(0, dt.timezone.utc)
COLUMNS = ["found", "indexed", "imported", "duplicate", "uid_conflict", "failed", "held", "skipped", "pending"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="per NAS: files found, indexed, imported, failed, pending; rate and ETA",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nas", help="only this NAS id")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pacs_assets.config import load_config

    config = load_config(args.config)
    try:
        result = status(config, args.nas)
    except FileNotFoundError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    write_output(print_json if args.json else print_result, result)
    return 0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # the ledger's timestamps are naive UTC


def status(config: PacsConfig, nas_id: str | None = None) -> dict:
    from pacs_assets.index import connection, queries

    now = _utcnow()
    with connection.session(config.index.path, read_only=True) as con:
        by_nas = queries.nas_status(con, nas_id, now - RATE_WINDOW)
    known = [n.id for n in config.nas]
    if nas_id is not None and nas_id not in known and nas_id not in by_nas:
        raise ConfigError(f"No NAS with id '{nas_id}' in {config.source_file} or in the index; "
                          f"known: {', '.join(known + sorted(set(by_nas) - set(known)))}.")
    order = [n for n in known if nas_id in (None, n)] + sorted(set(by_nas) - set(known))
    rows = [_nas_row(n, by_nas.get(n, {}), now) for n in order]
    return {"generated_at": now.isoformat(timespec="seconds") + "Z", "index": str(config.index.path),
            "nas": rows, "orthanc": orthanc_statistics(config), "pool_slots": pool_slots(config)}


def pool_slots(config: PacsConfig) -> dict:
    """{'instance', 'runs': [...]} from the Dagster instance of $DAGSTER_HOME, or {'error'} with one sentence.
    Per pool, the runs holding a slot first, then those waiting, oldest first."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return {"error": "Pool slots: not shown, DAGSTER_HOME is not set."}
    from dagster import DagsterInstance  # only here: importing Dagster costs a second

    from pacs_assets.process_identity import DEAD, HOST_TAG, PID_TAG, process_state

    known, runs = {n.id for n in config.nas}, []
    try:
        instance = DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - any reason the instance cannot be opened, said in one sentence
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"error": f"Pool slots: the Dagster instance in {home} could not be opened ({first})."}
    with instance:
        storage = instance.event_log_storage
        pools = sorted(storage.get_concurrency_keys()) if storage.supports_global_concurrency_limits else []
        for pool in pools:
            info = storage.get_concurrency_info(pool)
            held = {(s.run_id, s.step_key) for s in info.claimed_slots}
            # A step's queue entry stays while it holds its slot: assigned_timestamp is when it got the slot.
            queued = {(p.run_id, p.step_key): p for p in info.pending_steps}
            since = {k: (p.assigned_timestamp if k in held else p.enqueued_timestamp) for k, p in queued.items()}
            for key in sorted(held | set(queued), key=lambda k: (k not in held, since.get(k) or _EPOCH)):
                run_id, step = key
                run = instance.get_run_by_id(run_id)
                tags = run.tags if run else {}
                nas = step.split("__")[0]  # an asset step's key starts with its NAS id
                runs.append({
                    "pool": pool, "nas_id": nas if nas in known else None, "run_id": run_id, "step": step,
                    "holds": key in held, "since": _iso(since.get(key)),
                    "run_status": run.status.value if run else None,
                    "process": process_state(tags) if run else DEAD,
                    "pid": tags.get(PID_TAG), "host": tags.get(HOST_TAG)})
        return {"instance": home, "runs": runs}


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z") if when else None


def _nas_row(nas_id: str, s: dict, now: dt.datetime) -> dict:
    row = {"nas_id": nas_id, **{c: s.get(c, 0) for c in COLUMNS}}
    attempts, first = s.get("recent_attempts", 0), s.get("recent_first")
    rate = None
    if attempts:
        minutes = min(max((now - first).total_seconds() / 60, 1.0), RATE_WINDOW.total_seconds() / 60)
        rate = attempts / minutes
    row["rate_per_minute"] = round(rate, 1) if rate is not None else None
    row["eta_seconds"] = round(row["pending"] / rate * 60) if rate and row["pending"] else None
    last = s.get("last_attempt")
    row["last_attempt_at"] = last.isoformat(timespec="seconds") + "Z" if last else None
    return row


def orthanc_statistics(config: PacsConfig) -> dict:
    """Orthanc's own counts (GET /statistics), or {'url', 'error'} with one sentence."""
    import requests

    from pacs_assets.orthanc.client import OrthancUnavailable
    from pacs_assets.orthanc.connect import connect

    o = config.orthanc
    client = connect(o, *o.credentials_from_environment(), timeout=min(o.timeout_seconds, 10.0), retries=0)
    try:
        version = client.system().get("Version")
        stats = client.statistics()
    except OrthancUnavailable as exc:
        return {"url": o.url, "error": str(exc)}
    except (requests.RequestException, ValueError):
        return {"url": o.url, "error": f"Orthanc at {o.url} answered GET /statistics with something unexpected."}
    return {"url": o.url, "version": version, "patients": stats.get("CountPatients"),
            "studies": stats.get("CountStudies"), "series": stats.get("CountSeries"),
            "instances": stats.get("CountInstances"), "disk_size_bytes": _int(stats.get("TotalDiskSize"))}


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _eta(seconds: int | None, pending: int, rate: float | None) -> str:
    if not pending:
        return "-"
    if not rate:
        return "no imports in the last 10 min"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "< 1 min"
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def print_result(result: dict) -> None:
    head = ["NAS"] + COLUMNS + ["rate/min", "ETA"]
    lines = []
    for r in result["nas"]:
        rate = f"{r['rate_per_minute']:.1f}" if r["rate_per_minute"] is not None else "-"
        lines.append([r["nas_id"]] + [str(r[c]) for c in COLUMNS]
                     + [rate, _eta(r["eta_seconds"], r["pending"], r["rate_per_minute"])])
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        # NAS id left-aligned, numbers right-aligned, the ETA as it comes.
        middle = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=False)]
        parts = [cells[0].ljust(widths[0])] + middle + [cells[-1]]
        return "  ".join(parts).rstrip()

    print(f"Index {result['index']} at {result['generated_at']}")
    print(fmt(head))
    for line in lines:
        print(fmt(line))
    if not lines:
        print("(no NAS has been indexed yet)")
    print_pool_slots(result["pool_slots"])
    o = result["orthanc"]
    if "error" in o:
        print(o["error"])  # one sentence, naming Orthanc's address
    else:
        size = f", {_size(o['disk_size_bytes'])} stored" if o.get("disk_size_bytes") is not None else ""
        print(f"Orthanc {o['version']} at {o['url']}: {o['patients']} patients, {o['studies']} studies, "
              f"{o['series']} series, {o['instances']} instances{size}")


def print_pool_slots(slots: dict) -> None:
    if "error" in slots:
        print(slots["error"])
        return
    if not slots["runs"]:
        print("Pool slots: none held, no step waiting.")
        return
    head = ["POOL", "NAS", "RUN", "SLOT", "SINCE", "RUN STATUS", "PROCESS"]
    lines = [[r["pool"], r["nas_id"] or "-", r["run_id"], "held" if r["holds"] else "waiting", r["since"] or "?",
              r["run_status"] or "deleted", r["process"] + (f" (PID {r['pid']} on {r['host']})" if r["pid"] else "")]
             for r in slots["runs"]]
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    print("Pool slots:")
    for cells in [head] + lines:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
