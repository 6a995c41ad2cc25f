"""When two patient records are one person: the identity model, as plain functions.

A *record* is what one source says about a patient ID: a NAS (or Orthanc itself) and the demographics its
studies carry (name, birth date, sex). Orthanc keys a patient by PatientID alone, so two records that share
the ID Orthanc would receive must be compared before anything is sent. ``compare`` says:

- ``same``: the normalized names are equal (case, accents, DICOM ``^``/``=`` separators, punctuation and
  extra spaces do not count) and birth date and sex are both known and equal;
- ``variant``: nothing contradicts, but the evidence falls short of ``same``: the name is spelled differently
  (with or without umlaut, a typo, a missing middle name, the components in another order) or a birth date,
  sex or name is missing on one side. Listed for a person to look at, not held;
- ``different``: the birth dates differ, the sexes differ, or the names do not resemble each other. Held.

A missing value never makes two records the same: it can only lower ``same`` to ``variant``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

SAME, VARIANT, DIFFERENT = "same", "variant", "different"

# Letters NFKD does not decompose into a base letter plus a mark.
_SPELLED_OUT = str.maketrans({"ß": "ss", "ł": "l", "ø": "o", "æ": "ae", "œ": "oe", "đ": "d", "ı": "i", "þ": "th"})
_NON_WORD = re.compile(r"[\W_]+")
_UMLAUT_SPELLINGS = (("ae", "a"), ("oe", "o"), ("ue", "u"))


def normalize_name(name: str | None) -> str:
    """'Müller^Jürgen^^' -> 'muller jurgen'. Of a DICOM name with ideographic/phonetic groups
    ('Yamada^Tarou=山田^太郎=...') only the first non-empty group counts."""
    if not name:
        return ""
    group = next((g for g in name.split("=") if g.strip(" ^")), "")
    text = unicodedata.normalize("NFKD", group.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c)).translate(_SPELLED_OUT)
    return " ".join(_NON_WORD.sub(" ", text).split())


def normalize_date(value: str | None) -> str:
    """A DICOM date as 'YYYYMMDD', or '' when missing or unusable (a missing date is no evidence)."""
    digits = re.sub(r"\D", "", value or "")
    return digits if len(digits) == 8 and digits != "00000000" else ""


def normalize_sex(value: str | None) -> str:
    """'M' or 'F'; anything else ('O', empty, junk) is unknown: ''."""
    value = (value or "").strip().upper()[:1]
    return value if value in ("M", "F") else ""


def _fold_umlauts(word: str) -> str:
    for spelled, base in _UMLAUT_SPELLINGS:
        word = word.replace(spelled, base)
    return word


def _edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Levenshtein distance, computed only up to ``limit`` + 1 (names are short)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def _words_match(a: str, b: str) -> bool:
    """One name word spelled two ways: equal, the same without umlauts (mueller/muller), or one typo in a word
    of at least five letters (meier/meyer is one letter in five; jon/jan are different names)."""
    if a == b or _fold_umlauts(a) == _fold_umlauts(b):
        return True
    return min(len(a), len(b)) >= 5 and _edit_distance(a, b, 1) <= 1


def names_resemble(a: str, b: str) -> bool:
    """Two normalized names that plausibly spell one person's name: every word of the shorter one matches a
    distinct word of the longer (any order: components swapped), and at most one word is left over (a middle
    name on one side only)."""
    wa, wb = a.split(), b.split()
    if len(wa) > len(wb):
        wa, wb = wb, wa
    if not wa or len(wb) - len(wa) > 1:
        return False
    left = list(wb)
    for word in wa:
        match = next((w for w in left if _words_match(word, w)), None)
        if match is None:
            return False
        left.remove(match)
    return True


# A NamedTuple, not a dataclass: `pacs search` then never imports dataclasses (and inspect), ~9 ms of its start.
class PersonRecord(NamedTuple):
    """One source's view of one patient: ``source`` is a NAS id, or 'orthanc' for what Orthanc already holds."""

    source: str
    patient_id: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""

    @classmethod
    def of(cls, source: str, patient_id: str | None, name: str | None, birth_date: str | None,
           sex: str | None) -> PersonRecord:
        return cls(source, patient_id or "", normalize_name(name), normalize_date(birth_date), normalize_sex(sex))

    @property
    def key(self) -> str:
        """A stable short ID of this record (what decisions refer to): no name in it."""
        import hashlib  # here: `pacs search` compares records but needs no key, and hashlib loads OpenSSL (~3 ms)

        text = "\x1f".join((self.source, self.patient_id, self.name, self.birth_date, self.sex))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def compare(a: PersonRecord, b: PersonRecord) -> tuple[str, str]:
    """(verdict, reason): SAME, VARIANT or DIFFERENT, and a short reason without names or dates."""
    if a.birth_date and b.birth_date and a.birth_date != b.birth_date:
        return DIFFERENT, "birth dates differ"
    if a.sex and b.sex and a.sex != b.sex:
        return DIFFERENT, "sexes differ"
    if a.name and b.name and a.name != b.name and not names_resemble(a.name, b.name):
        return DIFFERENT, "names differ"
    missing = [what for what, x, y in (("name", a.name, b.name), ("birth date", a.birth_date, b.birth_date),
                                       ("sex", a.sex, b.sex)) if not (x and y)]
    if missing:
        return VARIANT, f"{' and '.join(missing)} missing on one side"
    if a.name != b.name:
        return VARIANT, "name spelled differently"
    return SAME, "name, birth date and sex agree"
