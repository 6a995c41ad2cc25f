"""The operator's side of patient identity: the open collisions with their evidence, a decision about one,
and separating people Orthanc already merged. Behind ``pacs identity``; names appear only at that terminal.

A decision covers the records of one collision (identity/decisions.py). *Same person*: they stay under one
PatientID and Orthanc merges them. *Different people*: one record keeps the PatientID (the one Orthanc already
holds, else the one the operator names with ``keep``, else the first), each other record is sent under a
qualified ID (``<ID>~<nas>``, with the birth date if that is not enough) with Issuer of Patient ID and the
original in Other Patient IDs Sequence. Either way the held files are released: the decision names their
procedure dates, and the identity sensor (or the nightly catch-up) uploads exactly those.
"""

from __future__ import annotations

import datetime as dt
import os

from pacs_assets.identity.collisions import DIFFERENT, IN_ORTHANC, ORTHANC, Collision, Member, find_collisions
from pacs_assets.identity.decisions import SAME, Decision, append_decision, decisions_path
from pacs_assets.identity.model import PersonRecord, compare
from pacs_assets.index import ledger, patient_records
from pacs_assets.index.connection import session
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.ids import orthanc_instance_id
from pacs_assets.pipeline.identity_guard import IdentityGuard, index_collisions, orthanc_members

MAX_ID = 64  # PatientID is LO: 64 characters at most


def held_people(index_path: str | os.PathLike) -> list[tuple]:
    """Person records (``RECORD_SQL`` rows) of the files held because Orthanc holds their ID for another."""
    with session(index_path, read_only=True) as con:
        ids = [r[0] for r in con.execute("""
            SELECT DISTINCT f.patient_id FROM identity_holds h
            JOIN inventory f USING (nas_id, file_path, change_token) WHERE h.kind = ?""", [IN_ORTHANC]).fetchall()]
        return patient_records.records_for_ids(con, ids)


def open_collisions(guard: IdentityGuard, index_path: str | os.PathLike,
                    client: OrthancApi | None = None) -> list[Collision]:
    """What the index shows, plus (given a client) the collisions with what Orthanc holds for held files."""
    found = index_collisions(guard, index_path)
    if client is not None:
        members = [guard.member(row) for row in held_people(index_path)]
        if members:
            members += orthanc_members(client, sorted({m.sent_id for m in members}))
            seen = {c.id for c in found}
            found += [c for c in find_collisions(members, guard.book.decided_same) if c.id not in seen]
    return found


def held_dates(index_path: str | os.PathLike, person_keys: set[str]) -> dict[str, list[str]]:
    """{nas id: procedure dates} of the files held now for these person records."""
    with session(index_path, read_only=True) as con:
        rows = con.execute("""
            SELECT DISTINCT nas_id, partition_date FROM identity_holds
            WHERE person_key IN (SELECT unnest($keys::VARCHAR[])) ORDER BY ALL""",
                           {"keys": sorted(person_keys)}).fetchall()
    out: dict[str, list[str]] = {}
    for nas_id, day in rows:
        out.setdefault(nas_id, []).append(day.isoformat())
    return out


def qualified_id(member: Member, taken: set[str]) -> str:
    """The PatientID a record is sent under once decided a different person: ``<ID>~<nas>``, then with its
    birth date, then numbered, never longer than a PatientID may be, never one already taken."""
    raw, record = member.record.patient_id, member.record
    for suffix in (f"~{record.source}", f"~{record.source}~{record.birth_date or 'x'}"):
        candidate = raw[:MAX_ID - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    n = 2
    while True:
        suffix = f"~{record.source}~{n}"
        candidate = raw[:MAX_ID - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def decide(guard: IdentityGuard, index_path: str | os.PathLike, collision: Collision, *, verdict: str, by: str,
           why: str, keep: int | None = None, decisions_file: str | os.PathLike | None = None) -> Decision:
    """Record a decision about ``collision`` (its members by their record keys). ``keep`` (1-based) names the
    member that keeps the PatientID when they are different people."""
    if not by.strip() or not why.strip():
        raise ValueError("a decision needs who made it (--by) and why (--why)")
    members = collision.members
    if verdict == SAME:
        send_as = {m.key: m.sent_id for m in members}
    else:
        if keep is not None and not 1 <= keep <= len(members):
            raise ValueError(f"--keep must be a member number from 1 to {len(members)}")
        # Who keeps the ID: the operator's choice, else the person Orthanc already holds, else the record with
        # the most files (the hospital's main system, usually). Whoever is not a different person from the
        # keeper keeps it too (the same person on another NAS, a spelling variant).
        keeper = (members[keep - 1] if keep else
                  next((m for m in members if m.record.source == ORTHANC), None)
                  or max(members, key=lambda m: (m.files, m.record.source)))
        taken = {m.sent_id for m in members}
        send_as = {}
        for m in members:
            if m is keeper or m.record.source == ORTHANC or compare(m.record, keeper.record)[0] != DIFFERENT:
                send_as[m.key] = m.sent_id
            else:
                send_as[m.key] = qualified_id(m, taken)
                taken.add(send_as[m.key])
    return append_decision(decisions_path(index_path, decisions_file), verdict=verdict, send_as=send_as, by=by,
                           why=why, collision=collision.id, released=held_dates(index_path, set(send_as)))


def people_of_orthanc_patient(client: OrthancApi, patient_id: str) -> list[tuple[PersonRecord, list[dict]]]:
    """The people one Orthanc PatientID holds, each with its studies: studies whose patient tags are one
    person by the identity model (same or variant) are grouped together."""
    groups: list[tuple[PersonRecord, list[dict]]] = []
    for study in client.find_patient_studies([patient_id]):
        record = PersonRecord.of(ORTHANC, patient_id, study["PatientName"], study["PatientBirthDate"],
                                 study["PatientSex"])
        for person, studies in groups:
            if compare(person, record)[0] != DIFFERENT:
                studies.append(study)
                break
        else:
            groups.append((record, [study]))
    return groups


def separate(guard: IdentityGuard, index_path: str | os.PathLike, client: OrthancApi, patient_id: str, *,
             by: str, why: str, keep: int = 1, decisions_file: str | os.PathLike | None = None,
             dry_run: bool = False) -> list[dict]:
    """Give each person an Orthanc patient of its own: the studies of every person but the ``keep``-th (by
    number of studies, most first) move to a qualified PatientID, each instance copied by Orthanc's
    ``/instances/{id}/modify`` (UIDs kept) and the old study deleted after (instance counts unchanged). A
    *different people* decision records the new IDs, so later uploads follow, and the ledger records where
    each moved NAS file now is. Returns one dict per person (new ID, studies moved)."""
    groups = sorted(people_of_orthanc_patient(client, patient_id), key=lambda g: (-len(g[1]), repr(g[0])))
    if len(groups) < 2:
        return []
    if not 1 <= keep <= len(groups):
        raise ValueError(f"--keep must be a person number from 1 to {len(groups)}")
    with session(index_path, read_only=True) as con:
        records = [guard.member(row) for row in patient_records.records_for_ids(con, guard.candidate_ids({patient_id}))]
    records = [m for m in records if m.sent_id == patient_id]
    taken, plan, send_as = {patient_id}, [], {}
    for n, (person, studies) in enumerate(groups, 1):
        mine = [m for m in records if compare(m.record, person)[0] != DIFFERENT]
        if n == keep:
            send_as.update({m.key: patient_id for m in mine})
            plan.append({"person": n, "patient_id": patient_id, "studies": len(studies), "moved": 0})
            continue
        new_id = qualified_id(mine[0], taken) if mine else f"{patient_id[:MAX_ID - 3]}~{n}"
        taken.add(new_id)
        send_as.update({m.key: new_id for m in mine})
        plan.append({"person": n, "patient_id": new_id, "studies": len(studies), "moved": len(studies),
                     "study_ids": [s["ID"] for s in studies], "study_uids": [s["StudyInstanceUID"] for s in studies],
                     "records": mine})
    if dry_run:
        return plan
    decision = append_decision(decisions_path(index_path, decisions_file), verdict=DIFFERENT, send_as=send_as,
                               by=by, why=why, collision=f"orthanc:{patient_id}")
    for step in plan:
        replace = {"PatientID": step["patient_id"], "IssuerOfPatientID": "pacs_assets",
                   "OtherPatientIDsSequence": [{"PatientID": patient_id, "TypeOfPatientID": "TEXT"}]}
        for study_id in step.get("study_ids", []):
            # Copy every instance first, delete the study last: a run killed in between leaves both, and a
            # rerun finds the person still under the old ID and finishes (the copies answer AlreadyStored).
            for instance_id in client.study_instance_ids(study_id):
                client.copy_instance_as(instance_id, replace)
            client.delete_study(study_id)
        if step.get("records"):
            _record_moves(index_path, step["records"], step["study_uids"], step["patient_id"], decision)
    return plan


def _record_moves(index_path, members: list[Member], study_uids: list[str], new_id: str, decision: Decision) -> None:
    """Ledger rows for the NAS files whose instances moved to ``new_id``: the ledger names what Orthanc holds."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    keys = {m.key for m in members}
    with session(index_path, read_only=True) as con:
        rows = con.execute("""
            SELECT i.nas_id, i.file_path, i.change_token, i.partition_date, i.patient_id, i.study_instance_uid,
                   i.series_instance_uid, i.sop_instance_uid, f.patient_name, f.patient_birth_date, f.patient_sex
            FROM instances i JOIN inventory f USING (nas_id, file_path, change_token)
            WHERE i.study_instance_uid IN (SELECT unnest($uids::VARCHAR[]))
              AND i.patient_id IN (SELECT unnest($pids::VARCHAR[]))""",
                           {"uids": study_uids, "pids": sorted({m.record.patient_id for m in members})}).fetchall()
    ledger.append_ledger(index_path, [{
        "nas_id": nas, "file_path": path, "change_token": token, "partition_date": day, "patient_id": pid,
        "orthanc_instance_id": orthanc_instance_id(new_id, study, series, sop), "study_instance_uid": study,
        "series_instance_uid": series, "sop_instance_uid": sop, "status": "imported",
        "error_message": f"moved to its own patient by `pacs identity separate` (decision {decision.number})",
        "retryable": False, "attempts": 0, "http_status": 200, "started_at": now, "finished_at": now}
        for nas, path, token, day, pid, study, series, sop, name, birth, sex in rows
        if PersonRecord.of(nas, pid, name, birth, sex).key in keys])
