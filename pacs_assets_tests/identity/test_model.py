"""The identity model: when two records are the same person, a variant, or different people; the decisions
book; collisions grouped by the ID Orthanc would receive."""

from __future__ import annotations

import json

import pytest

from pacs_assets.identity.collisions import ACROSS_NAS, IN_ORTHANC, STUDY_UID, WITHIN_NAS, Member, find_collisions
from pacs_assets.identity.decisions import DecisionBook, append_decision
from pacs_assets.identity.model import DIFFERENT, SAME, VARIANT, PersonRecord, compare, normalize_name
from pacs_assets.nas.base import IdDomain
from pacs_assets.pipeline.identity_guard import IdentityGuard
from pacs_assets.pipeline.identity_review import qualified_id

P = PersonRecord.of


@pytest.mark.parametrize("raw, normalized", [
    ("Müller^Jürgen", "muller jurgen"),
    ("MÜLLER^JÜRGEN^^^ ", "muller jurgen"),
    ("  müller  jürgen ", "muller jurgen"),
    ("Strauß^Łukasz", "strauss lukasz"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada tarou"),
    ("=山田^太郎", "山田 太郎"),
    ("O'Brien-Smith^Anne", "o brien smith anne"),
    ("", ""), (None, ""),
])
def test_names_are_normalized_for_case_accents_separators_and_spaces(raw, normalized):
    assert normalize_name(raw) == normalized


@pytest.mark.parametrize("a, b, verdict", [
    # same: normalized name, birth date and sex all agree
    (("Müller^Jürgen", "19800101", "M"), ("MULLER^JURGEN ", "19800101", "M"), SAME),
    (("Doe^Jane^^", "19800101", "F"), ("doe jane", "1980-01-01", "f"), SAME),
    # variants: nothing contradicts, the name is spelled differently or a value is missing
    (("Müller^Jürgen", "19800101", "M"), ("Mueller^Juergen", "19800101", "M"), VARIANT),
    (("Meier^Johannes", "19800101", "M"), ("Meyer^Johannes", "19800101", "M"), VARIANT),
    (("Smith^John^A", "19800101", "M"), ("SMITH^JOHN", "19800101", "M"), VARIANT),
    (("Smith^John", "19800101", "M"), ("John^Smith", "19800101", "M"), VARIANT),
    (("Doe^Jane", "19800101", "F"), ("Doe^Jane", "", "F"), VARIANT),
    (("Doe^Jane", "19800101", "F"), ("Doe^Jane", "19800101", ""), VARIANT),
    (("Doe^Jane", "19800101", "F"), ("Doe^Jane", "19800101", "O"), VARIANT),
    (("Doe^Jane", "", ""), ("Doe^Jane", "", ""), VARIANT),
    (("", "19800101", "F"), ("Doe^Jane", "19800101", "F"), VARIANT),
    # different: birth date or sex differ, or the names do not resemble each other
    (("Doe^Jane", "19800101", "F"), ("Doe^Jane", "19800102", "F"), DIFFERENT),
    (("Doe^Jane", "19800101", "F"), ("Doe^Jane", "19800101", "M"), DIFFERENT),
    (("Smith^John", "19800101", "M"), ("Smith^James", "19800101", "M"), DIFFERENT),  # twins
    (("Smith^John", "19800101", "M"), ("Smith^Joan", "19800101", "M"), DIFFERENT),  # short names: no typo rule
    (("Weber^Klaus", "", ""), ("Παπαδοπούλου^Ελένη", "", ""), DIFFERENT),
])
def test_compare(a, b, verdict):
    ra, rb = P("n", "1", *a), P("n", "1", *b)
    assert compare(ra, rb)[0] == verdict
    assert compare(rb, ra)[0] == verdict  # symmetric


def test_missing_values_never_make_two_records_the_same():
    full = P("n", "1", "Doe^Jane", "19800101", "F")
    for partial in (P("n", "1", "Doe^Jane", "", "F"), P("n", "1", "Doe^Jane", "19800101", ""),
                    P("n", "1", "", "19800101", "F"), P("n", "1", "", "", "")):
        assert compare(full, partial)[0] != SAME
        assert compare(partial, partial)[0] != SAME


def _member(source, pid, name, birth, sex, guard=None):
    record = P(source, pid, name, birth, sex)
    return Member(record, guard.sent_id(record) if guard else pid)


def test_collisions_are_grouped_by_the_id_orthanc_would_receive():
    a = _member("ct", "1", "Doe^Jane", "19800101", "F")
    b = _member("archive", "1", "Weber^Klaus", "19610714", "M")
    c = _member("archive", "7", "Fischer^Paul", "19720911", "M")
    d = _member("archive", "7", "Hoffmann^Lena", "19880120", "F")
    e = _member("ct", "9", "Smith^John^A", "19700101", "M")
    f = _member("archive", "9", "SMITH^JOHN", "19700101", "M")
    g = _member("ct", "4", "Doe^John", "19500101", "M")
    h = _member("archive", "4", "doe^john", "19500101", "M")  # the same person: no collision at all
    found = {c.anchor: c for c in find_collisions([a, b, c, d, e, f, g, h])}
    assert set(found) == {"1", "7", "9"}
    assert (found["1"].kind, found["1"].verdict) == (ACROSS_NAS, DIFFERENT)
    assert (found["7"].kind, found["7"].verdict) == (WITHIN_NAS, DIFFERENT)
    assert (found["9"].kind, found["9"].verdict) == (ACROSS_NAS, VARIANT)
    assert found["1"].held == {a.key, b.key} and found["9"].held == frozenset()

    # An ID domain on the archive: its IDs are sent prefixed, so only its own reuse still collides.
    guard = IdentityGuard({"archive": IdDomain(issuer="ARCHIVE", prefix="AR-")}, DecisionBook([]))
    members = [Member(m.record, guard.sent_id(m.record)) for m in (a, b, c, d)]
    assert {c.anchor: c.kind for c in find_collisions(members)} == {"AR-7": WITHIN_NAS}


def test_orthanc_and_study_collisions_hold_only_nas_records():
    ours = _member("ct", "1", "Doe^Jane", "19800101", "F")
    theirs = _member("orthanc", "1", "Roe^Richard", "19400101", "M")
    (collision,) = find_collisions([ours, theirs])
    assert collision.kind == IN_ORTHANC and collision.held == {ours.key}
    x, y = _member("ct", "1", "Doe^Jane", "19800101", "F"), _member("ct", "2", "Roe^Richard", "19400101", "M")
    (study,) = find_collisions([], studies=[("1.2.3", [x, y])])
    assert study.kind == STUDY_UID and study.held == {x.key, y.key} and study.anchor == "1.2.3"


def test_decisions_survive_a_crash_mid_line_and_the_latest_wins(tmp_path):
    path = tmp_path / "decisions.jsonl"
    a, b = P("ct", "1", "Doe^Jane", "19800101", "F"), P("archive", "1", "Weber^Klaus", "19610714", "M")
    append_decision(path, verdict=SAME, send_as={a.key: "1", b.key: "1"}, by="op", why="checked in the RIS")
    with path.open("a") as fh:
        fh.write('{"number": 2, "verdict": "diff')  # a write a crash cut off
    book = DecisionBook.load(path)
    assert book.decided_same(a.key, b.key) and book.damaged_lines == 1
    append_decision(path, verdict=DIFFERENT, send_as={a.key: "1", b.key: "1~archive"}, by="op2", why="RIS again")
    book = DecisionBook.load(path)
    assert not book.decided_same(a.key, b.key) and book.send_as(b.key) == "1~archive"
    assert [d.number for d in book.decisions] == [1, 3] and book.damaged_lines == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert all(json.loads(line) for line in path.read_text().splitlines()[-1:])
    with pytest.raises(ValueError):
        append_decision(path, verdict="maybe", send_as={}, by="x", why="y")


def test_qualified_ids_are_unique_and_fit_a_patient_id():
    m = Member(P("archive", "X" * 64, "Doe^Jane", "19800101", "F"), "X" * 64)
    first = qualified_id(m, set())
    second = qualified_id(m, {first})
    third = qualified_id(m, {first, second})
    assert len({first, second, third}) == 3 and all(len(i) <= 64 for i in (first, second, third))
    assert qualified_id(Member(P("archive", "123", "a", "", ""), "123"), set()) == "123~archive"
