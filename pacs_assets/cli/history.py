"""`pacs history`: the import ledger (every upload attempt), newest first, one page at a time.

With --status failed or --status skipped, the files the walk itself failed (truncated, corrupt,
unreadable) or skipped (not DICOM, empty, links) are listed too, though no upload was ever tried: their
attempt column says 'walk', their time is the last walk that saw them, and the message is the reason.

Dates (--from/--to, inclusive) and the times shown are in the site's timezone (``timezone`` in the
configuration, UTC by default); the ledger itself stores UTC. A ``uid_conflict`` attempt's message names
the file Orthanc kept in its place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from typing import TYPE_CHECKING

from pacs_assets.cli.output import print_json, write_output
from pacs_assets.cli.search import iso_date, positive_int
from pacs_assets.nas.names import shown

if TYPE_CHECKING:  # the settings models (pydantic) load when a command runs, not when `pacs` starts
    from zoneinfo import ZoneInfo

    from pacs_assets.config import PacsConfig

STATUSES = ("imported", "duplicate", "uid_conflict", "failed", "skipped")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="the import ledger, newest first, paginated",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nas", help="only this NAS id")
    p.add_argument("--status", choices=STATUSES,
                   help="only attempts that ended so; failed and skipped also list the files the walk failed or "
                        "skipped")
    p.add_argument("--from", dest="date_from", type=iso_date, metavar="YYYY-MM-DD",
                   help="attempts finished on or after this day")
    p.add_argument("--to", dest="date_to", type=iso_date, metavar="YYYY-MM-DD",
                   help="attempts finished on or before this day")
    p.add_argument("--patient-id", help="patient ID, exact or its beginning")
    p.add_argument("--study", metavar="UID", help="Study Instance UID")
    p.add_argument("--page", type=positive_int, default=1)
    p.add_argument("--page-size", type=positive_int, default=50)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.date_from and args.date_to and args.date_from > args.date_to:
        print(f"pacs history: --from {args.date_from} is after --to {args.date_to}.", file=sys.stderr)
        return 2
    from pacs_assets.config import load_config

    config = load_config(args.config)
    try:
        result = history(config, nas_id=args.nas, status=args.status, date_from=args.date_from,
                         date_to=args.date_to, patient_id=args.patient_id, study_uid=args.study,
                         page=args.page, page_size=args.page_size)
    except FileNotFoundError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    write_output(print_json if args.json else print_result, result)
    return 0


def _utc(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    """Local midnight of ``day`` as naive UTC, the ledger's clock."""
    return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.timezone.utc).replace(tzinfo=None)


def history(config: PacsConfig, *, nas_id: str | None = None, status: str | None = None,
            date_from: dt.date | None = None, date_to: dt.date | None = None, patient_id: str | None = None,
            study_uid: str | None = None, page: int = 1, page_size: int = 50) -> dict:
    from zoneinfo import ZoneInfo

    from pacs_assets.index import connection, queries

    tz = ZoneInfo(config.timezone)
    q = queries.HistoryQuery(
        nas_id=nas_id, status=status, finished_from=_utc(date_from, tz) if date_from else None,
        finished_before=_utc(date_to + dt.timedelta(days=1), tz) if date_to else None,
        patient_id=patient_id, study_uid=study_uid, page=page, page_size=page_size)
    with connection.session(config.index.path, read_only=True) as con:
        rows, total = queries.history_page(con, q)
    for row in rows:
        for key in ("finished_at", "started_at"):
            if row[key] is not None:  # naive UTC -> the site's time, with its offset
                row[key] = row[key].replace(tzinfo=dt.timezone.utc).astimezone(tz).isoformat(timespec="seconds")
    return {"filters": {"nas_id": nas_id, "status": status, "from": date_from, "to": date_to,
                        "patient_id": patient_id, "study_instance_uid": study_uid},
            "walk_included": status in queries.WALK_STATUSES,  # rows of stage 'walk' may be listed
            "timezone": config.timezone, "total": total, "page": page, "page_size": page_size,
            "pages": max(1, math.ceil(total / page_size)), "attempts": rows}


def print_result(result: dict) -> None:
    total, page, pages = result["total"], result["page"], result["pages"]
    filters = ", ".join(f"{k} {v}" for k, v in result["filters"].items() if v is not None)
    noun = ("entry", "entries") if result["walk_included"] else ("attempt", "attempts")
    print(f"Import history: {total} {noun[total != 1]}"
          f"{' (' + filters + ')' if filters else ''}, newest first, times in {result['timezone']}")
    rows = result["attempts"]
    if rows:
        head = ["attempt", "finished", "NAS", "status", "HTTP", "file", "message"]
        cells = [[r["stage"] if r["attempt_id"] is None else str(r["attempt_id"]),
                  (r["finished_at"] or "")[:19].replace("T", " "), r["nas_id"], r["status"],
                  str(r["http_status"] or ""), shown(r["file_path"]), _message(r)] for r in rows]
        widths = [max(len(c[i]) for c in [head] + cells) for i in range(len(head) - 1)]
        for line in [head] + cells:
            middle = [c.ljust(w) for c, w in zip(line[1:-1], widths[1:], strict=False)]
            print("  ".join([line[0].rjust(widths[0])] + middle + [line[-1]]).rstrip())
    elif total:
        print(f"(no attempts on page {page}: the last page is {pages})")
    else:
        print("(no attempts match)")
    print(f"page {page} of {pages}")


def _message(row: dict) -> str:
    text = row["error_message"] or ""
    if row["status"] == "failed" and row["retryable"]:
        text += " (will be retried)"
    return text if len(text) <= 120 else text[:117] + "..."
