"""Collisions: records that would meet under one PatientID in Orthanc (or one study UID) and are not one person.

Orthanc keys a patient by the PatientID it receives, so records are grouped by the ID they would be *sent*
as (``Member.sent_id``: the NAS's ID domain prefix, or what a decision gave them), not by the ID on the NAS.
Within a group every pair is compared (identity/model.py). A pair of *different* people that no *same
person* decision covers makes the group a collision whose members are held; a group with only variants is
listed. The kinds, named after where the records come from:

- ``id_reused_within_nas``: one NAS gives one PatientID to different people (old archives reuse IDs);
- ``id_shared_across_nas``: two NAS devices (vendors numbering independently) give it to different people;
- ``orthanc_holds_other_person``: Orthanc already holds the ID for someone else (an earlier import, a modality,
  another machine's NAS);
- ``study_uid_under_two_patients``: one Study Instance UID carries different people (a misfiled study).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable

from pacs_assets.identity.model import DIFFERENT, SAME, VARIANT, PersonRecord, compare

ORTHANC = "orthanc"  # the source name of what Orthanc already holds
WITHIN_NAS, ACROSS_NAS = "id_reused_within_nas", "id_shared_across_nas"
IN_ORTHANC, STUDY_UID = "orthanc_holds_other_person", "study_uid_under_two_patients"
KINDS = (WITHIN_NAS, ACROSS_NAS, IN_ORTHANC, STUDY_UID)


@dataclasses.dataclass
class Member:
    """A record with the ID it would be sent as, and what the index knows of it (for the operator)."""

    record: PersonRecord
    sent_id: str
    raw_name: str = ""  # as written in the source, for the operator's terminal only
    raw_birth_date: str = ""
    studies: int = 0
    files: int = 0
    first_date: object = None
    last_date: object = None

    @property
    def key(self) -> str:
        return self.record.key


@dataclasses.dataclass
class Collision:
    kind: str
    verdict: str  # DIFFERENT (its members' files are held) or VARIANT (listed only)
    anchor: str  # the PatientID sent, or the Study Instance UID
    members: list[Member]
    pairs: list[tuple[int, int, str, str]]  # (i, j, verdict, reason) of the members' pairs that are not SAME
    held: frozenset[str] = frozenset()  # member keys held until someone decides

    @property
    def id(self) -> str:
        """Stable while its NAS records are (what Orthanc holds may come and go): 'C' + 8 hex digits, no
        patient data."""
        text = "|".join([self.kind, self.anchor, *sorted(m.key for m in self.members if m.record.source != ORTHANC)])
        return "C" + hashlib.sha1(text.encode()).hexdigest()[:8]

    def reason(self) -> str:
        """The one-line reason a held file carries (no names)."""
        what = {WITHIN_NAS: "its PatientID is used for a different person on the same NAS",
                ACROSS_NAS: "its PatientID is used for a different person on another NAS",
                IN_ORTHANC: "Orthanc already holds its PatientID for a different person",
                STUDY_UID: "its Study Instance UID also carries a different person"}[self.kind]
        return f"{self.kind}: {what} (collision {self.id}); decide with `pacs identity`"


def _kind_of(a: PersonRecord, b: PersonRecord) -> str:
    if ORTHANC in (a.source, b.source):
        return IN_ORTHANC
    return WITHIN_NAS if a.source == b.source else ACROSS_NAS


_RANK = {k: n for n, k in enumerate(KINDS)}


def _group_collision(anchor: str, members: list[Member], decided_same: Callable[[str, str], bool],
                     kind: str | None = None) -> Collision | None:
    pairs, held, kinds, worst = [], set(), set(), SAME
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            a, b = members[i].record, members[j].record
            if a == b or (kind == STUDY_UID and members[i].sent_id == members[j].sent_id):
                continue  # under one sent ID, a pair is the ID collision's business
            verdict, reason = compare(a, b)
            if verdict == SAME or decided_same(a.key, b.key):
                continue  # one person, by the evidence or by an operator's decision
            pairs.append((i, j, verdict, reason))
            if verdict == DIFFERENT:
                worst = DIFFERENT
                kinds.add(kind or _kind_of(a, b))
                held |= {k.key for k in (members[i], members[j]) if k.record.source != ORTHANC}
            elif worst == SAME:
                worst = VARIANT
                kinds.add(kind or _kind_of(a, b))
    if not pairs:
        return None
    return Collision(min(kinds, key=_RANK.get), worst, anchor, members, pairs, frozenset(held))


def find_collisions(members: Iterable[Member], decided_same: Callable[[str, str], bool] = lambda a, b: False,
                    studies: Iterable[tuple[str, list[Member]]] = ()) -> list[Collision]:
    """Collisions among ``members`` grouped by sent ID, and among the members of each ``(study UID, members)``
    whose members have different sent IDs (one study UID carrying different people). Variants included."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(member.sent_id, []).append(member)
    found = []
    for sent_id, group in sorted(groups.items()):
        if len(group) > 1:
            collision = _group_collision(sent_id, group, decided_same)
            if collision:
                found.append(collision)
    for study_uid, group in studies:
        collision = _group_collision(study_uid, group, decided_same, kind=STUDY_UID)
        if collision and collision.verdict == DIFFERENT:  # a variant across IDs is the ID collision's business
            found.append(collision)
    return found
