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
        return con.execute("SELECT coalesce(max(attempt_id), 0) FROM import_history WHERE nas_id = $nas",
                           {"nas": nas_id}).fetchall()[0][0]
