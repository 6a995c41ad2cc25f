"""The inventory: every file a walk met. Staged per run, then merged window by window in one transaction.

The scan cache (``scan_cache``) is what earlier walks read, whatever partition they ran for, so an
unchanged file is never parsed twice.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pacs_assets.index.connection import session
from pacs_assets.index.staging import Staging
from pacs_assets.nas.base import FileRecord, ScanCache

RECORD_COLUMNS = FileRecord.columns_()
_RECORD_FIELDS = operator.attrgetter(*RECORD_COLUMNS)
INVENTORY_COLUMNS = RECORD_COLUMNS + ["scanned_at"]


def records_frame(records: Sequence[FileRecord], scanned_at: dt.datetime):
    import pandas as pd  # here, not at module level: `pacs search` must start fast

    # attrgetter, not dataclasses.astuple: astuple deep-copies every field (~14x slower on this hot path).
    frame = pd.DataFrame([_RECORD_FIELDS(r) for r in records], columns=RECORD_COLUMNS)
    frame["procedure_date"] = frame["procedure_date"].astype("string")
    frame["scanned_at"] = scanned_at
    return frame


def add_records(staging: Staging, records: Sequence[FileRecord], scanned_at: dt.datetime) -> None:
    frame = records_frame(records, scanned_at)
    con = staging.con
    con.register("_frame", frame)
    try:
        cols = ", ".join(f'"{c}"' for c in INVENTORY_COLUMNS)
        con.execute(f"INSERT INTO inventory ({cols}) SELECT {cols} FROM _frame")
    finally:
        con.unregister("_frame")


def known_file_count(index_path: str | os.PathLike, nas_id: str) -> int:
    if not Path(index_path).exists():
        return 0
    with session(index_path) as con:
        return con.execute("SELECT count(*) FROM scan_cache WHERE nas_id = ?", [nas_id]).fetchall()[0][0]


def load_cache(staging: Staging, nas_id: str) -> int:
    """Copy the NAS's scan cache from the index (one short lock). Returns how many files it knew."""
    with staging.attached_to_index() as con:
        con.execute("INSERT INTO staging.cache SELECT * FROM scan_cache WHERE nas_id = ?", [nas_id])
    return staging.count("cache")


def merge_inventory(staging: Staging, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    """Replace the window [start, end) of the NAS's inventory, and refresh its scan cache, in one transaction."""
    with staging.attached_to_index(atomic=True) as con:
        # Files of the window that the complete walk no longer found anywhere: deleted on the NAS.
        con.execute("""
            INSERT INTO deleted_files
            SELECT o.nas_id, o.file_path, o.change_token, o.procedure_date, s.status, now()
            FROM inventory o LEFT JOIN file_status s USING (nas_id, file_path)
            WHERE o.nas_id = ? AND o.procedure_date >= ? AND o.procedure_date < ?
              AND o.file_path NOT IN (SELECT file_path FROM staging.inventory)""", [nas_id, start, end])
        # Files the walk found again (same path): no longer deleted. Their import history says the rest.
        con.execute("DELETE FROM deleted_files WHERE nas_id = ? "
                    "AND file_path IN (SELECT file_path FROM staging.inventory)", [nas_id])
        con.execute("DELETE FROM inventory WHERE nas_id = ? AND procedure_date >= ? AND procedure_date < ?",
                    [nas_id, start, end])
        con.execute("INSERT INTO inventory SELECT * FROM staging.inventory "
                    "WHERE procedure_date >= ? AND procedure_date < ?", [start, end])
        # The walk was complete: the cache becomes exactly what it saw.
        con.execute("DELETE FROM scan_cache WHERE nas_id = ?", [nas_id])
        con.execute("INSERT INTO scan_cache SELECT * FROM staging.inventory")
        counts = dict(con.execute(
            "SELECT status, count(*) FROM staging.inventory WHERE procedure_date >= ? AND procedure_date < ? "
            "GROUP BY status", [start, end]).fetchall())
    return counts


class StagingCache(ScanCache):
    """The scan cache as copied into a run's staging file."""

    def __init__(self, staging: Staging):
        self.staging = staging

    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        if not keys:
            return {}
        con = self.staging.con
        import pandas as pd

        probe = pd.DataFrame({"file_path": list(keys), "change_token": list(keys.values())})
        con.register("_probe", probe)
        try:
            cols = ", ".join(f'c."{c}"' for c in RECORD_COLUMNS)
            rows = con.execute(f"SELECT {cols} FROM cache c JOIN _probe p USING (file_path, change_token)").fetchall()
        finally:
            con.unregister("_probe")
        return {row[1]: FileRecord(*row) for row in rows}
