"""`pacs search`: where a patient's images are, across every NAS, and whether they are in Orthanc.

Patients are found by name (case- and accent-insensitive, partial, any word order: 'jurgen muller',
'MÜLLER', 'mull' and 'mueller' all find 'Müller^Jürgen'), by patient ID (exact or prefix), and their
studies filtered by modality and procedure date. Each study shows where its files are (NAS, folder,
formats, files) and how many of them are in Orthanc (imported or already there).

The output names patients: it is for the operator at the terminal, never written to a log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pacs_assets.cli.output import print_json, write_output
from pacs_assets.cli.remembered_config import load_validated
from pacs_assets.nas.names import shown as shown_path

if TYPE_CHECKING:
    from pacs_assets.cli.remembered_config import ConfigView
    from pacs_assets.config import PacsConfig

# A search is a new process each time: it imports only what it uses, when it runs. The index modules load in
# ``run``; the configuration comes validated from its cache (cli/remembered_config.py), so pydantic loads only when the
# file or the code changed.


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date: use YYYY-MM-DD") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"'{text}' must be a whole number from 1 to 10000")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find patients and where their studies are (NAS folders, Orthanc)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="*", help="patient name or part of it, any order ('jurgen muller', 'mull')")
    p.add_argument("--patient-id", help="patient ID, exact or its beginning")
    p.add_argument("--modality", help="only studies with this modality (CT, MR, ...)")
    p.add_argument("--from", dest="date_from", type=iso_date, metavar="YYYY-MM-DD",
                   help="only studies on or after this procedure date")
    p.add_argument("--to", dest="date_to", type=iso_date, metavar="YYYY-MM-DD",
                   help="only studies on or before this procedure date")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many patients (default 50)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pacs_assets.index import queries

    query = queries.SearchQuery(name=" ".join(args.name) or None, patient_id=args.patient_id,
                                modality=args.modality, date_from=args.date_from, date_to=args.date_to,
                                limit=args.limit)
    if query.is_empty():
        print("pacs search: give a name, --patient-id, --modality or a date range (--from/--to).", file=sys.stderr)
        return 2
    if query.date_from and query.date_to and query.date_from > query.date_to:
        print(f"pacs search: --from {query.date_from} is after --to {query.date_to}.", file=sys.stderr)
        return 2
    config = load_validated(args.config)
    try:
        result = search(config, query)
    except FileNotFoundError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    write_output(print_json if args.json else print_result, result)
    return 0


def search(config: PacsConfig | ConfigView, query) -> dict:
    """The search (a ``queries.SearchQuery``) as a JSON-ready document; the index is open only while it runs."""
    from pacs_assets.index import connection, queries

    started = time.perf_counter()
    with connection.session(config.index.path, read_only=True) as con:
        patients, total = queries.find_patients(con, query)
    roots = {nas.id: Path(nas.root) for nas in config.nas}
    people = [person for p in patients for person in split_people(p)]
    return {
        "query": {"name": query.name, "patient_id": query.patient_id, "modality": query.modality,
                  "from": query.date_from, "to": query.date_to, "limit": query.limit},
        "patients_found": total - len(patients) + len(people),
        "patients_shown": len(people),
        "seconds": round(time.perf_counter() - started, 4),
        "patients": [_patient(p, roots) for p in people],
    }


def split_people(patient: dict) -> list[dict]:
    """One patient ID's records as the people they are (identity/model.py): records that are the same person
    or a variant go together, different people apart. Each person gets only the studies its records carry,
    and only the people the query matched are returned; ``other_people`` says how many more share the ID."""
    from pacs_assets.identity.model import DIFFERENT, SAME, PersonRecord, compare

    records = patient.get("records") or []
    if not records:
        return [patient]
    people: list[list[dict]] = []
    for rec in records:
        rec["person"] = PersonRecord.of("", patient["patient_id"], rec["name"], rec["birth_date"], rec["sex"])
        for group in people:
            if all(compare(rec["person"], other["person"])[0] != DIFFERENT for other in group):
                group.append(rec)
                break
        else:
            people.append([rec])
    out = []
    for group in people:
        if not any(r["matched"] for r in group):
            continue
        keys = {(r["nas_id"], r["name"], r["birth_date"], r["sex"]) for r in group}
        studies = [st for st in patient["studies"]
                   if (st["nas_id"], st["patient_name"], st["patient_birth_date"], st["patient_sex"]) in keys]
        first = group[0]
        out.append({"patient_id": patient["patient_id"], "names": sorted({r["name"] for r in group} - {None}),
                    "birth_date": next((r["birth_date"] for r in group if r["birth_date"]), None),
                    "sex": next((r["sex"] for r in group if r["sex"]), None), "studies": studies,
                    "other_people_with_this_id": len(people) - 1,
                    "name_variants": any(compare(first["person"], r["person"])[0] != SAME for r in group[1:])})
    return out


def _patient(p: dict, roots: dict[str, Path]) -> dict:
    studies: dict[str, dict] = {}
    for s in p["studies"]:  # one entry per study UID, one location per NAS (and partition day) holding it
        study = studies.setdefault(s["study_instance_uid"], {
            "study_instance_uid": s["study_instance_uid"], "date": s["partition_date"],
            "date_source": s["date_source"], "study_date": s["study_date"],
            "description": s["study_description"], "accession_number": s["accession_number"],
            "modalities": [], "locations": []})
        study["modalities"] = sorted(set(study["modalities"]) | (set((s["modalities"] or "").split(",")) - {""}))
        files, in_orthanc = s["instance_count"], s["files_in_orthanc"]
        if s["nas_id"] == "orthanc":  # arrived in Orthanc itself: every file is there
            in_orthanc = files
        root = roots.get(s["nas_id"])
        study["locations"].append({
            "nas_id": s["nas_id"], "partition_date": s["partition_date"], "folder": s["folder"],
            "path": str(root / s["folder"]) if root is not None and s["folder"] is not None else None,
            "file_formats": sorted(set((s["file_formats"] or "").split(",")) - {""}),
            "series": s["series_count"], "files": files, "files_in_orthanc": in_orthanc})
    return {"patient_id": p["patient_id"], "names": p["names"], "birth_date": dicom_date(p["birth_date"]),
            "sex": p["sex"], "other_people_with_this_id": p.get("other_people_with_this_id", 0),
            "name_variants": p.get("name_variants", False), "studies": list(studies.values())}


def dicom_date(value: str | None) -> str | None:
    """'19840702' -> '1984-07-02'; anything else as it is."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or None


def print_result(result: dict) -> None:
    out = sys.stdout
    for p in result["patients"]:
        names = " / ".join(p["names"]) or "(no name)"
        facts = [f"ID {p['patient_id']}" if p["patient_id"] is not None else "(no patient ID)"]
        if p["birth_date"]:
            facts.append(f"born {p['birth_date']}")
        if p["sex"]:
            facts.append(p["sex"])
        out.write(f"{names}   {'   '.join(facts)}\n")
        if p["other_people_with_this_id"]:
            n = p["other_people_with_this_id"]
            out.write(f"  ! ID COLLISION: this patient ID also names {n} other person{'s' if n > 1 else ''} "
                      "(not shown here; see `pacs identity`)\n")
        if p["name_variants"]:
            out.write("  ~ name variants: the records differ in spelling or miss a value (see `pacs identity`)\n")
        for s in p["studies"]:
            date = str(s["date"])
            if s["date_source"] and s["date_source"] != "study_date":
                date += f" (date from {s['date_source'].replace('_', ' ')})"
            what = "  ".join(x for x in [",".join(s["modalities"]) or "?", s["description"] or ""] if x)
            acc = f"  acc. {s['accession_number']}" if s["accession_number"] else ""
            out.write(f"  {date}  {what}{acc}  study {s['study_instance_uid']}\n")
            for loc in s["locations"]:
                where = shown_path(loc["path"] or loc["folder"] or "") or "(no folder)"  # odd names escaped
                formats = ",".join(loc["file_formats"]) or "?"
                files = f"{loc['files']} file{'s' if loc['files'] != 1 else ''}"
                out.write(f"      {loc['nas_id']}: {where}  [{formats}]  {files}, "
                          f"in Orthanc {loc['files_in_orthanc']}/{loc['files']}\n")
        out.write("\n")
    found, shown = result["patients_found"], result["patients_shown"]
    if found == 0:
        out.write("No patient found.\n")
    elif shown < found:
        out.write(f"Showing {shown} of {found} patients: narrow the search or raise --limit.\n")
    else:
        out.write(f"{found} patient{'s' if found != 1 else ''} found.\n")
