"""The identity guard: before an upload sends anything, which files go, under which patient identity, and
which are held because sending them would put one person's images under another person's name.

Orthanc merges whatever shares a PatientID, so the guard compares, for every PatientID the staged files
would be sent as, every person record that would meet under it: the index's records on every NAS, and what
Orthanc already holds under that ID (earlier imports, modality arrivals, another machine's NAS). Records of
*different* people that no decision covers are held; the rest flow on, each under the ID its NAS's domain
(prefix, issuer) or an operator's decision gives it. Its cost follows the staged files: one index query and
one ``/tools/find`` per 100 patient IDs of the run, nothing per file.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping

from pacs_assets.identity.collisions import DIFFERENT, ORTHANC, UID_KINDS, Collision, Member, find_collisions
from pacs_assets.identity.decisions import DecisionBook, decisions_path
from pacs_assets.identity.model import PersonRecord
from pacs_assets.index import patient_records
from pacs_assets.index.connection import session
from pacs_assets.index.ledger import iter_staged
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, IdDomain, SendAs
from pacs_assets.orthanc.api import OrthancApi


@dataclasses.dataclass(frozen=True)
class Route:
    """What the upload does with one file: send it (as ``send_as``, or as it is), or hold it (``held``)."""

    send_as: SendAs | None = None
    held: Collision | None = None


class IdentityGuard:
    """The site's identity rules: each NAS's ID domain and the decisions in force."""

    def __init__(self, domains: Mapping[str, IdDomain | None], book: DecisionBook):
        self.domains = dict(domains)
        self.book = book

    @classmethod
    def load(cls, domains: Mapping[str, IdDomain | None], index_path: str | os.PathLike,
             decisions_file: str | os.PathLike | None = None) -> IdentityGuard:
        return cls(domains, DecisionBook.load(decisions_path(index_path, decisions_file)))

    def sent_id(self, record: PersonRecord) -> str:
        """The PatientID Orthanc would receive for this record."""
        if record.source == ORTHANC:
            return record.patient_id
        decided = self.book.send_as(record.key)
        if decided:
            return decided
        domain = self.domains.get(record.source)
        return f"{domain.prefix}{record.patient_id}" if domain else record.patient_id

    def send_as(self, record: PersonRecord, raw_id: str | None) -> SendAs | None:
        """What the upload writes into the DICOM for this record; None when the file goes as it is."""
        sent = self.sent_id(record)
        domain = self.domains.get(record.source)
        if domain is None and sent == (raw_id or ""):
            return None
        issuer = domain.issuer if domain else record.source
        return SendAs(patient_id=sent, issuer=issuer, original_id=raw_id or "", original_issuer=issuer)

    def member(self, row: tuple) -> Member:
        """A Member from a ``index.identity.RECORD_SQL`` row."""
        nas_id, patient_id, name, birth, sex, studies, files, first, last = row
        record = PersonRecord.of(nas_id, patient_id, name, birth, sex)
        return Member(record, self.sent_id(record), name or "", birth or "", studies or 0, files or 0, first, last)

    def plan(self, staging: Staging, index_path: str | os.PathLike, nas_id: str, client: OrthancApi,
             window: tuple | None = None) -> Plan:
        return plan_uploads(self, staging, index_path, nas_id, client, window)

    def candidate_ids(self, sent_ids: set[str]) -> set[str]:
        """The raw patient IDs whose records could be sent as one of ``sent_ids`` (a prefix taken off)."""
        raw = set(sent_ids)
        for domain in self.domains.values():
            if domain and domain.prefix:
                raw |= {s[len(domain.prefix):] for s in sent_ids if s.startswith(domain.prefix)}
        return raw


def guard_for(config) -> IdentityGuard:
    """The guard a site's configuration (a ``PacsConfig``) describes: its NAS devices' ID domains, its decisions."""
    return IdentityGuard.load({nas.id: nas.id_domain for nas in config.nas}, config.index.path,
                              config.identity.decisions_path)


def orthanc_members(client: OrthancApi, sent_ids: list[str]) -> list[Member]:
    """One member per distinct person Orthanc holds under these PatientIDs (study-level patient tags). The empty
    ID is not asked: files without an ID are compared among the index's records only."""
    sent_ids = [i for i in sent_ids if i]
    seen: dict[PersonRecord, Member] = {}
    for study in client.find_patient_studies(sent_ids):
        record = PersonRecord.of(ORTHANC, study["PatientID"], study["PatientName"], study["PatientBirthDate"],
                                 study["PatientSex"])
        member = seen.setdefault(record, Member(record, record.patient_id, study["PatientName"] or "",
                                                study["PatientBirthDate"] or ""))
        member.studies += 1
    return list(seen.values())


class Plan:
    """The guard's answer for one upload: a route per staged file, and the collisions it found."""

    def __init__(self, guard: IdentityGuard, nas_id: str, collisions: list[Collision]):
        self.guard, self.nas_id, self.collisions = guard, nas_id, collisions
        self.held: dict[str, Collision] = {}  # person record key -> the collision that holds it
        # (study or series UID, record key) -> collision: only that study's or series' files are held
        self.held_in_uid: dict[tuple[str, str], Collision] = {}
        for collision in collisions:
            if collision.verdict != DIFFERENT:
                continue
            for key in collision.held:
                if collision.kind in UID_KINDS.values():
                    self.held_in_uid.setdefault((collision.anchor, key), collision)
                else:
                    self.held.setdefault(key, collision)

        self._people: dict[tuple, PersonRecord] = {}
        self._send_as: dict[PersonRecord, SendAs | None] = {}
        self.window_had_holds = False  # the upload's window had holds before: they must be replaced

    @property
    def variant_count(self) -> int:
        return sum(1 for c in self.collisions if c.verdict != DIFFERENT)

    def person_of(self, rec: FileRecord) -> PersonRecord:
        fields = (rec.patient_id, rec.patient_name, rec.patient_birth_date, rec.patient_sex)
        person = self._people.get(fields)
        if person is None:  # normalizing a name costs microseconds: once per person, not per file
            person = self._people[fields] = PersonRecord.of(self.nas_id, *fields)
        return person

    def route(self, rec: FileRecord) -> Route:
        person = self.person_of(rec)
        held = (self.held.get(person.key) or self.held_in_uid.get((rec.study_instance_uid, person.key))
                or self.held_in_uid.get((rec.series_instance_uid, person.key)))
        if held:
            return Route(held=held)
        return Route(send_as=self.guard.send_as(person, rec.patient_id))

    def send_as(self, rec: FileRecord) -> SendAs | None:
        if self.held_in_uid:  # a study's or series' holds depend on the file's UIDs: decided per file
            return self.route(rec).send_as
        # Otherwise the answer is the person's (held or sent as): once per person, not per file (4 SHA-1s each).
        person = self.person_of(rec)
        if person not in self._send_as:
            self._send_as[person] = self.route(rec).send_as
        return self._send_as[person]


def hold_files(plan: Plan, staging: Staging, index_path: str | os.PathLike, nas_id: str, start, end) -> Counter:
    """Take the files the plan holds out of staging and record them as the window's holds (replacing its
    earlier ones: a file released since is no longer held). Returns {collision kind: files held}."""
    rows: list[dict] = []
    if plan.held or plan.held_in_uid:
        for rec in iter_staged(staging):
            collision = plan.route(rec).held
            if collision is not None:
                rows.append({"nas_id": nas_id, "file_path": rec.file_path, "change_token": rec.change_token,
                             "partition_date": rec.procedure_date, "collision_id": collision.id,
                             "kind": collision.kind, "reason": collision.reason(),
                             "person_key": plan.person_of(rec).key})
    if rows or plan.window_had_holds:  # most uploads hold nothing, and had nothing held: no write at all
        patient_records.replace_holds(index_path, nas_id, start, end, rows)
    if rows:
        staging.drop_files([r["file_path"] for r in rows])
    return Counter(r["kind"] for r in rows)


def plan_uploads(guard: IdentityGuard, staging: Staging, index_path: str | os.PathLike, nas_id: str,
                 client: OrthancApi, window: tuple | None = None) -> Plan:
    """Compare the staged files' people with every record that would meet them in Orthanc."""
    people, uids = patient_records.staged_people(staging)
    staged = [PersonRecord.of(nas_id, *row) for row in people]
    sent = {guard.sent_id(r) for r in staged}
    with session(index_path, read_only=True) as con:
        rows = patient_records.records_for_ids(con, guard.candidate_ids(sent) | {r.patient_id for r in staged})
        uid_rows = {level: patient_records.uids_with_several_people(con, level, found) if found else []
                    for level, found in uids.items()}
        had_holds = window is not None and patient_records.holds_in_window(con, nas_id, *window)
    members = [m for m in map(guard.member, rows) if m.sent_id in sent]
    known = {m.record for m in members}
    members += [Member(r, guard.sent_id(r)) for r in staged if r not in known]  # not in `patients` yet
    members += orthanc_members(client, sorted(sent))
    plan = Plan(guard, nas_id, find_collisions(members, guard.book.decided_same, **_uid_groups(guard, uid_rows)))
    plan.window_had_holds = had_holds
    return plan


def _uid_groups(guard: IdentityGuard, uid_rows: dict[str, list[tuple]]) -> dict[str, list]:
    """{'studies': [(UID, members)], 'series': [...]} of the UIDs whose people would be sent under different IDs
    (under one ID they are the ID collision's business)."""
    out = {}
    for level, rows in uid_rows.items():
        groups: dict[str, list[Member]] = {}
        for uid, *row in rows:
            record = PersonRecord.of(*row)
            groups.setdefault(uid, []).append(Member(record, guard.sent_id(record)))
        out["studies" if level == "study" else "series"] = [
            (uid, group) for uid, group in groups.items() if len({m.sent_id for m in group}) > 1]
    return out


def index_collisions(guard: IdentityGuard, index_path: str | os.PathLike) -> list[Collision]:
    """Every collision and variant the index alone shows (all NAS devices, all dates): the patient IDs that
    more than one person record shares, and the study and series UIDs carrying more than one person. Reads the
    ``patients``, ``studies`` and ``series`` tables (one row per person and day or UID), not the inventory.
    What Orthanc holds is the upload's to compare."""
    with session(index_path, read_only=True) as con:
        rows = patient_records.shared_ids(con)
        uid_rows = {level: patient_records.uids_with_several_people(con, level) for level in ("study", "series")}
    members = [guard.member(row) for row in rows]
    return find_collisions(members, guard.book.decided_same, **_uid_groups(guard, uid_rows))
