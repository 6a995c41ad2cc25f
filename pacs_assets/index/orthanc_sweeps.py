"""The SQL of ``orthanc_sweeps``: what the last clean whole-NAS Orthanc sweep saw (see pipeline/orthanc_sweep.py).

The same concept on two layers: the work (pipeline/orthanc_sweep.py) and the SQL (index/orthanc_sweeps.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

from pacs_assets.index.connection import session, transaction
from pacs_assets.index.consistency import STORED


@dataclasses.dataclass(frozen=True)
class SweepMark:
    orthanc: str  # the Orthanc URL(s) swept: another Orthanc proves nothing
    instance_count: int  # Orthanc's instances when its exact list was read
    last_seq: int  # Orthanc's last change Seq then
    last_attempt_id: int  # the ledger's last attempt the sweep covered
    full_at: dt.datetime  # as of when every entry was last verified: a full sweep, or a cycle's first night


@dataclasses.dataclass(frozen=True)
class SweepCycle:
    positions: int  # Orthanc's instance count when the cycle began: the offsets its slices cover
    last_attempt_id: int  # the ledger entries it verifies (later ones are the nightly check's)
    started_at: dt.datetime
    next_offset: int


def last_mark(index_path: str | os.PathLike, nas_id: str) -> SweepMark | None:
    return marks(index_path, nas_id)[0]


def marks(index_path: str | os.PathLike, nas_id: str) -> tuple[SweepMark | None, SweepCycle | None]:
    """The NAS's mark and its cycle in progress, in one short session."""
    with session(index_path, read_only=True) as con:
        row = con.execute("SELECT orthanc, instance_count, last_seq, last_attempt_id, full_at FROM orthanc_sweeps "
                          "WHERE nas_id = $nas", {"nas": nas_id}).fetchall()
        cycle = con.execute("SELECT positions, last_attempt_id, started_at, next_offset FROM orthanc_sweep_cycles "
                            "WHERE nas_id = $nas", {"nas": nas_id}).fetchall()
    return (SweepMark(*row[0]) if row else None), (SweepCycle(*cycle[0]) if cycle else None)


def save_mark(index_path: str | os.PathLike, nas_id: str, mark: SweepMark | None, *, full: bool = False) -> None:
    """Replace the NAS's mark (None: forget it, so the next sweep is a full one). A ``full`` sweep's mark, or
    none, also ends the cycle in progress: a cycle leans on the chain of marks since it began."""
    with transaction(index_path) as con:
        if full or mark is None:
            _forget_cycle(con, nas_id)
        con.execute("DELETE FROM orthanc_sweeps WHERE nas_id = $nas", {"nas": nas_id})
        if mark is not None:
            con.execute("INSERT INTO orthanc_sweeps VALUES (?, ?, ?, ?, ?, ?)",
                        [nas_id, *dataclasses.astuple(mark)])


def current_cycle(index_path: str | os.PathLike, nas_id: str) -> SweepCycle | None:
    return marks(index_path, nas_id)[1]


def ledger_extent(index_path: str | os.PathLike, nas_id: str) -> tuple[int, int]:
    """(the ledger's last attempt, the NAS's indexed instances: a bound of those in Orthanc, with no join)."""
    with session(index_path, read_only=True) as con:
        return _last_attempt(con, nas_id), con.execute("SELECT count(*) FROM instances WHERE nas_id = $nas",
                                                       {"nas": nas_id}).fetchall()[0][0]


def save_slice(index_path: str | os.PathLike, nas_id: str, cycle: SweepCycle, listed: list[str]) -> int | None:
    """Record a slice of Orthanc's list read and the cycle's progress. When that slice was the last: the
    ledger's entries of the cycle never listed, the cycle ended, and if none, the mark dated from the cycle's
    start (everything it covered was verified since). Else None."""
    with transaction(index_path) as con:
        # All listed IDs, not only the ledger's: a join with the ledger cost more than the rows (Orthanc holds
        # at most LIST_FACTOR times the NAS's instances when a cycle runs).
        import numpy as np  # a column, not a list parameter: a third of the time for a night's ~30,000 IDs

        con.register("_listed", {"orthanc_instance_id": np.array(listed, dtype=object)})
        con.execute("INSERT INTO orthanc_sweep_seen SELECT $nas, orthanc_instance_id FROM _listed", {"nas": nas_id})
        con.unregister("_listed")
        _forget_cycle(con, nas_id, seen=False)
        if cycle.next_offset < cycle.positions:
            con.execute("INSERT INTO orthanc_sweep_cycles VALUES (?, ?, ?, ?, ?)",
                        [nas_id, *dataclasses.astuple(cycle)])
            return None
        unseen = con.execute(f"""SELECT count(*) FROM ({_STORED}) s WHERE NOT EXISTS (SELECT 1 FROM orthanc_sweep_seen
                                 WHERE nas_id = $nas AND orthanc_instance_id = s.orthanc_instance_id)""",
                             {"nas": nas_id, "upto": cycle.last_attempt_id}).fetchall()[0][0]
        _forget_cycle(con, nas_id)
        if not unseen:
            con.execute("UPDATE orthanc_sweeps SET full_at = $at WHERE nas_id = $nas",
                        {"nas": nas_id, "at": cycle.started_at})
        return unseen


# The ledger's Orthanc IDs of the NAS's files in Orthanc, by an attempt up to $upto (or any).
_STORED = f"SELECT DISTINCT h.orthanc_instance_id {STORED} AND ($upto IS NULL OR h.attempt_id <= $upto)"


def _forget_cycle(con, nas_id: str, *, seen: bool = True) -> None:
    con.execute("DELETE FROM orthanc_sweep_cycles WHERE nas_id = $nas", {"nas": nas_id})
    if seen:
        con.execute("DELETE FROM orthanc_sweep_seen WHERE nas_id = $nas", {"nas": nas_id})


def last_attempt_id(index_path: str | os.PathLike, nas_id: str) -> int:
    with session(index_path, read_only=True) as con:
        return _last_attempt(con, nas_id)


def entries_since(index_path: str | os.PathLike, nas_id: str, after: int) -> tuple[int, list[tuple[str, str]]]:
    """(the ledger's last attempt, (SOP Instance UID, Orthanc ID) of the NAS's files in Orthanc by an attempt
    after ``after``), read together: an entry recorded later is after the returned attempt."""
    with session(index_path, read_only=True) as con:
        return _last_attempt(con, nas_id), con.execute(
            f"SELECT DISTINCT i.sop_instance_uid, h.orthanc_instance_id {STORED} AND h.attempt_id > $after ORDER BY 1",
            {"nas": nas_id, "after": after}).fetchall()


def _last_attempt(con, nas_id: str) -> int:
    return con.execute("SELECT coalesce(max(attempt_id), 0) FROM import_history WHERE nas_id = $nas",
                       {"nas": nas_id}).fetchall()[0][0]
