"""An operator's decisions about patient identity, in an append-only file that outlives the index.

``pacs identity decide`` appends one JSON line per decision: which records (``PersonRecord.key``) it covers,
the verdict (``same``: one person, let Orthanc merge them; ``different``: different people, each keeps or
gets its own PatientID in Orthanc), the PatientID each record is sent as, who decided, when and why. The file
sits beside the index (``<index dir>/identity_decisions.jsonl``, or ``identity.decisions_path``) and is not
part of it: deleting or rebuilding the index keeps every decision. Lines are written whole and fsynced; a
line cut off by a crash is ignored (and reported by ``load``), never half-trusted. A later decision about
a record overrides an earlier one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

from pacs_assets.identity.model import DIFFERENT, SAME

DECISIONS_FILE = "identity_decisions.jsonl"


@dataclasses.dataclass(frozen=True)
class Decision:
    number: int  # 1, 2, ... in the order made
    verdict: str  # SAME | DIFFERENT
    send_as: dict[str, str]  # record key -> the PatientID Orthanc receives for it
    by: str
    why: str
    made_at: str  # ISO timestamp, UTC
    collision: str = ""  # the collision it settled
    released: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # nas id -> procedure dates


def decisions_path(index_path: str | os.PathLike, configured: str | os.PathLike | None = None) -> Path:
    return Path(configured) if configured else Path(index_path).parent / DECISIONS_FILE


class DecisionBook:
    """The decisions in force: per record, the latest decision about it."""

    def __init__(self, decisions: list[Decision], damaged_lines: int = 0):
        self.decisions = decisions
        self.damaged_lines = damaged_lines
        self._latest: dict[str, Decision] = {}
        for decision in decisions:
            for key in decision.send_as:
                self._latest[key] = decision

    @classmethod
    def load(cls, path: str | os.PathLike) -> DecisionBook:
        path = Path(path)
        decisions, damaged = [], 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    decisions.append(Decision(**raw))
                except (ValueError, TypeError):
                    damaged += 1  # a line cut off by a crash: never half-trusted
        return cls(decisions, damaged)

    def decision_for(self, key: str) -> Decision | None:
        return self._latest.get(key)

    def send_as(self, key: str) -> str | None:
        """The PatientID a *different people* decision gave this record, if any."""
        decision = self._latest.get(key)
        return decision.send_as.get(key) if decision and decision.verdict == DIFFERENT else None

    def decided_same(self, a: str, b: str) -> bool:
        """Both records are covered by one *same person* decision still in force for both."""
        da, db = self._latest.get(a), self._latest.get(b)
        return da is not None and da is db and da.verdict == SAME

    @property
    def last_made_at(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.decisions[-1].made_at) if self.decisions else None


def append_decision(path: str | os.PathLike, *, verdict: str, send_as: dict[str, str], by: str, why: str,
                    collision: str = "", released: dict[str, list[str]] | None = None) -> Decision:
    """Append one decision (whole line, fsynced; the file is 0600 like the index: it holds patient IDs)."""
    if verdict not in (SAME, DIFFERENT):
        raise ValueError(f"verdict must be '{SAME}' or '{DIFFERENT}'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    book = DecisionBook.load(path)
    decision = Decision(number=len(book.decisions) + book.damaged_lines + 1, verdict=verdict, send_as=send_as,
                        by=by, why=why, collision=collision, released=released or {},
                        made_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds"))
    line = json.dumps(dataclasses.asdict(decision), ensure_ascii=False) + "\n"
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        line = "\n" + line  # after a line a crash cut off: start a fresh line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return decision
