"""The SQL of ``orthanc_sweeps``: what the last clean whole-NAS Orthanc sweep saw (see pipeline/orthanc_sweep.py).

The same concept on two layers: the work (pipeline/orthanc_sweep.py) and the SQL (index/orthanc_sweeps.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

from pacs_assets.index.connection import session, transaction


@dataclasses.dataclass(frozen=True)
class SweepMark:
    orthanc: str  # the Orthanc URL(s) swept: another Orthanc proves nothing
    instance_count: int  # Orthanc's instances when its exact list was read
    last_seq: int  # Orthanc's last change Seq then
    last_attempt_id: int  # the ledger's last attempt the sweep covered
    full_at: dt.datetime  # when the last full (listing) sweep ran


def last_mark(index_path: str | os.PathLike, nas_id: str) -> SweepMark | None:
    with session(index_path, read_only=True) as con:
        row = con.execute("SELECT orthanc, instance_count, last_seq, last_attempt_id, full_at FROM orthanc_sweeps "
                          "WHERE nas_id = $nas", {"nas": nas_id}).fetchall()
    return SweepMark(*row[0]) if row else None


def save_mark(index_path: str | os.PathLike, nas_id: str, mark: SweepMark | None) -> None:
    """Replace the NAS's mark (None: forget it, so the next sweep is a full one)."""
    with transaction(index_path) as con:
        con.execute("DELETE FROM orthanc_sweeps WHERE nas_id = $nas", {"nas": nas_id})
        if mark is not None:
            con.execute("INSERT INTO orthanc_sweeps VALUES (?, ?, ?, ?, ?, ?)",
                        [nas_id, *dataclasses.astuple(mark)])


def last_attempt_id(index_path: str | os.PathLike, nas_id: str) -> int:
    with session(index_path, read_only=True) as con:
        return _last_attempt(con, nas_id)


def entries_since(index_path: str | os.PathLike, nas_id: str, after: int) -> tuple[int, list[tuple[str, str]]]:
    """(the ledger's last attempt, (SOP Instance UID, Orthanc ID) of the NAS's files in Orthanc by an attempt
    after ``after``), read together: an entry recorded later is after the returned attempt."""
    with session(index_path, read_only=True) as con:
        return _last_attempt(con, nas_id), con.execute("""
            SELECT DISTINCT i.sop_instance_uid, h.orthanc_instance_id FROM import_history h
            JOIN instances i ON h.nas_id = i.nas_id AND h.file_path = i.file_path AND h.change_token = i.change_token
            WHERE h.nas_id = $nas AND h.attempt_id > $after AND h.status IN ('imported', 'duplicate')
              AND h.orthanc_instance_id IS NOT NULL ORDER BY 1""", {"nas": nas_id, "after": after}).fetchall()


def _last_attempt(con, nas_id: str) -> int:
    return con.execute("SELECT coalesce(max(attempt_id), 0) FROM import_history WHERE nas_id = $nas",
                       {"nas": nas_id}).fetchall()[0][0]
