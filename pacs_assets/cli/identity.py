"""`pacs identity`: patient ID collisions, the evidence side by side, and an operator's decisions.

  pacs identity                        the open collisions (different people: their files are held) and the
                                       name variants (listed, not held), each record with its NAS, ID, name,
                                       birth date, sex, studies, files and dates
  pacs identity decide C1234abcd --different --by NAME --why TEXT [--keep N]
  pacs identity decide C1234abcd --same --by NAME --why TEXT
                                       record a decision; the next run uploads what it released
  pacs identity decisions              every decision: who, when, why
  pacs identity separate PATIENT_ID --by NAME --why TEXT [--keep N] [--dry-run]
                                       give each person Orthanc already merged under one ID a patient of its own

The output names patients: it is for the operator at the terminal, never written to a log.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pacs_assets.cli.output import print_json, write_output
from pacs_assets.cli.search import dicom_date

if TYPE_CHECKING:  # the settings models (pydantic) load when a command runs, not when `pacs` starts
    from pacs_assets.config import PacsConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("identity", help="patient ID collisions, their evidence, and decisions about them",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run_list)
    actions = p.add_subparsers(dest="action")
    d = actions.add_parser("decide", help="record a decision about one collision")
    d.add_argument("collision", help="the collision's ID (C + 8 hex digits), as `pacs identity` shows it")
    verdict = d.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--same", dest="verdict", action="store_const", const="same",
                         help="one person: release the files, Orthanc merges them under one PatientID")
    verdict.add_argument("--different", dest="verdict", action="store_const", const="different",
                         help="different people: each gets its own PatientID in Orthanc, the files are released")
    _who_why(d)
    d.add_argument("--keep", type=int, help="with --different: the record (its number) that keeps the PatientID")
    d.set_defaults(func=run_decide)
    s = actions.add_parser("decisions", help="list every decision (who, when, why)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_decisions)
    m = actions.add_parser("separate", help="split an Orthanc patient that holds several people")
    m.add_argument("patient_id", help="the PatientID of the Orthanc patient")
    _who_why(m)
    m.add_argument("--keep", type=int, default=1, help="the person (its number) that keeps the PatientID")
    m.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    m.set_defaults(func=run_separate)


def _who_why(p: argparse.ArgumentParser) -> None:
    p.add_argument("--by", required=True, help="who decides (recorded with the decision)")
    p.add_argument("--why", required=True, help="the evidence (recorded with the decision)")


def _collisions(config: PacsConfig) -> tuple[object, list]:
    """(the site's identity guard, the open collisions): with what Orthanc holds when Orthanc answers."""
    from pacs_assets.orthanc.client import OrthancUnavailable
    from pacs_assets.orthanc.connect import connect
    from pacs_assets.pipeline.identity_guard import guard_for
    from pacs_assets.pipeline.identity_review import open_collisions

    o = config.orthanc
    client = connect(o, *o.credentials_from_environment(), timeout=30, retries=1)
    try:
        client.system()
    except OrthancUnavailable as exc:
        print(f"pacs identity: {exc} Collisions with what Orthanc holds are not shown.", file=sys.stderr)
        client = None
    guard = guard_for(config)
    return guard, open_collisions(guard, config.index.path, client)


def run_list(args: argparse.Namespace) -> int:
    from pacs_assets.config import load_config
    from pacs_assets.index import connection
    from pacs_assets.index.patient_records import held_by_person

    config = load_config(args.config)
    try:
        _, found = _collisions(config)
        with connection.session(config.index.path, read_only=True) as con:
            held = held_by_person(con)
    except FileNotFoundError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    document = {"collisions": [_collision_json(c, sum(held.get(m.key, 0) for m in c.members)) for c in found]}
    write_output(print_json if args.json else print_collisions, document)
    return 0


def _collision_json(c, held: int) -> dict:
    from pacs_assets.identity.collisions import UID_KINDS

    by_uid = c.kind in UID_KINDS.values()
    return {"id": c.id, "kind": c.kind, "verdict": c.verdict, "patient_id_sent": None if by_uid else c.anchor,
            "uid": c.anchor if by_uid else None,
            "files_held": held,
            "records": [{"number": n, "source": m.record.source, "patient_id": m.record.patient_id,
                         "sent_as": m.sent_id, "name": m.raw_name, "birth_date": m.raw_birth_date or None,
                         "sex": m.record.sex or None, "studies": m.studies, "files": m.files,
                         "first_date": m.first_date, "last_date": m.last_date}
                        for n, m in enumerate(c.members, 1)],
            "differences": [{"records": [i + 1, j + 1], "verdict": v, "reason": r} for i, j, v, r in c.pairs]}


def print_collisions(document: dict) -> None:
    out = sys.stdout
    collisions = document["collisions"]
    for c in sorted(collisions, key=lambda c: (c["verdict"] != "different", c["kind"], c["id"])):
        what = "DIFFERENT PEOPLE (files held)" if c["verdict"] == "different" else "variant (listed, not held)"
        anchor = (f"PatientID '{c['patient_id_sent']}' as Orthanc would receive it" if c["patient_id_sent"] is not None
                  else f"UID {c['uid']}")
        out.write(f"{c['id']}  {c['kind']}  {what}  {anchor}  files held: {c['files_held']}\n")
        out.write(f"   {'#':>2}  {'source':<12} {'patient ID':<16} {'name':<28} {'born':<10} {'sex':<3} "
                  f"{'studies':>7} {'files':>6}  dates\n")
        for r in c["records"]:
            dates = f"{r['first_date']}..{r['last_date']}" if r["first_date"] else ""
            out.write(f"   {r['number']:>2}  {r['source']:<12} {r['patient_id']:<16} {r['name'] or '(none)':<28} "
                      f"{dicom_date(r['birth_date']) or '(none)':<10} {r['sex'] or '?':<3} {r['studies']:>7} "
                      f"{r['files']:>6}  {dates}\n")
        for d in c["differences"]:
            out.write(f"   {d['records'][0]} vs {d['records'][1]}: {d['verdict']}, {d['reason']}\n")
        if c["verdict"] == "different":
            out.write(f"   decide: pacs identity decide {c['id']} --same|--different --by NAME --why TEXT\n")
        out.write("\n")
    held = sum(1 for c in collisions if c["verdict"] == "different")
    out.write(f"{held} collision{'s' if held != 1 else ''} of different people, "
              f"{len(collisions) - held} variant{'s' if len(collisions) - held != 1 else ''}.\n")


def run_decide(args: argparse.Namespace) -> int:
    from pacs_assets.config import load_config
    from pacs_assets.pipeline.identity_review import decide

    config = load_config(args.config)
    guard, collisions = _collisions(config)
    found = {c.id: c for c in collisions}
    collision = found.get(args.collision)
    if collision is None:
        print(f"pacs identity: no open collision '{args.collision}' (`pacs identity` lists them).", file=sys.stderr)
        return 2
    try:
        decision = decide(guard, config.index.path, collision, verdict=args.verdict, by=args.by, why=args.why,
                          keep=args.keep, decisions_file=config.identity.decisions_path)
    except ValueError as exc:
        print(f"pacs identity: {exc}.", file=sys.stderr)
        return 2
    dates = sum(len(d) for d in decision.released.values())
    verdict = "one person" if args.verdict == "same" else "different people"
    print(f"Decision {decision.number} recorded: {collision.id} is {verdict}.")
    for n, m in enumerate(collision.members, 1):
        print(f"   {n}  {m.record.source:<12} {m.record.patient_id} -> sent as {decision.send_as[m.key]}")
    print(f"Released: the held files of {dates} procedure date{'s' if dates != 1 else ''}; the identity sensor "
          "or the next reconciliation uploads them.")
    return 0


def run_decisions(args: argparse.Namespace) -> int:
    import dataclasses

    from pacs_assets.config import load_config
    from pacs_assets.identity.decisions import DecisionBook, decisions_path

    config = load_config(args.config)
    book = DecisionBook.load(decisions_path(config.index.path, config.identity.decisions_path))
    rows = [dataclasses.asdict(d) for d in book.decisions]
    if args.json:
        print_json({"decisions": rows, "damaged_lines": book.damaged_lines})
        return 0
    for d in rows:
        print(f"{d['number']:>4}  {d['made_at']}  {d['verdict']:<9}  {d['collision']:<20}  by {d['by']}: {d['why']}")
    print(f"{len(rows)} decision{'s' if len(rows) != 1 else ''}."
          + (f" {book.damaged_lines} damaged line(s) ignored." if book.damaged_lines else ""))
    return 0


def run_separate(args: argparse.Namespace) -> int:
    from pacs_assets.config import load_config
    from pacs_assets.orthanc.connect import connect
    from pacs_assets.pipeline.identity_guard import guard_for
    from pacs_assets.pipeline.identity_review import separate

    config = load_config(args.config)
    client = connect(config.orthanc, *config.orthanc.credentials_from_environment())
    try:
        plan = separate(guard_for(config), config.index.path, client, args.patient_id,
                        by=args.by, why=args.why, keep=args.keep, decisions_file=config.identity.decisions_path,
                        dry_run=args.dry_run)
    except ValueError as exc:
        print(f"pacs identity: {exc}.", file=sys.stderr)
        return 2
    if not plan:
        print(f"Orthanc's patient '{args.patient_id}' holds one person (or none): nothing to separate.")
        return 0
    for step in plan:
        verb = "would move" if args.dry_run else "moved"
        print(f"person {step['person']}: {step['studies']} stud{'ies' if step['studies'] != 1 else 'y'} under "
              f"'{step['patient_id']}'" + (f" ({verb} {step['moved']})" if step["moved"] else " (keeps the ID)"))
    return 0
