"""The upload's ledger rows, written in batches with what a row alone cannot say: which file Orthanc kept
for each ``uid_conflict``, and whether an import confirmed after a lost answer was really ours.

Used by pipeline/upload.py, which hands it every batch of answered attempts and closes it at the end.
"""

from __future__ import annotations

import os

from pacs_assets.index import ledger
from pacs_assets.orthanc.client import CONFIRMED

NOT_FROM_A_NAS = "a file Orthanc already held (not from a NAS)"
CONFIRMED_ELSEWHERE = "AlreadyStored after a lost answer, but another file's upload had stored these bytes"


class LedgerWriter:
    """Writes an upload's ledger rows in batches, giving each ``uid_conflict`` the file Orthanc kept as its
    reason: the NAS and path of the upload that created the instance (this run's rows, else the ledger, any
    NAS), else ``NOT_FROM_A_NAS``. A conflict whose kept file is not known yet may be an upload of this run still in
    flight: it waits for the next batch, and for ``close`` at the latest.

    An import ``CONFIRMED`` after a lost answer is only probably ours: another file of the same instance may
    have stored it meanwhile. Such rows (a handful per failover) wait for ``close``, when every answer of the
    run is in: the instance's first clean import (this run or the ledger) makes them ``duplicate``."""

    def __init__(self, index_path: str | os.PathLike):
        self.index_path = index_path
        self.imported: dict[str, tuple[str, str]] = {}  # this run's imports: Orthanc ID -> (nas, path)
        self.waiting: list[dict] = []
        self.confirmed: list[dict] = []
        self.demoted = 0  # confirmed imports recorded duplicate at close

    def __call__(self, rows: list[dict]) -> None:
        confirmed = [r for r in rows if r["status"] == "imported" and CONFIRMED in (r["error_message"] or "")]
        self.confirmed += confirmed
        held = {id(r) for r in confirmed}
        self._write([r for r in rows if id(r) not in held] if held else rows)

    def _write(self, rows: list[dict], final: bool = False) -> None:
        self.imported.update({r["orthanc_instance_id"]: (r["nas_id"], r["file_path"])
                              for r in rows if r["status"] == "imported"})
        conflicts = self.waiting + [r for r in rows if r["status"] == "uid_conflict"]
        unknown = {r["orthanc_instance_id"] for r in conflicts} - set(self.imported)
        kept = {**ledger.kept_files(self.index_path, sorted(unknown)), **self.imported}
        held = [] if final else [r for r in conflicts if r["orthanc_instance_id"] not in kept]
        held_ids = {id(r) for r in held}
        for row in conflicts:
            if id(row) not in held_ids:
                row["error_message"] = _kept_reason(row, kept.get(row["orthanc_instance_id"]))
        ledger.append_ledger(self.index_path, [r for r in self.waiting + rows if id(r) not in held_ids])
        self.waiting = held

    def close(self) -> None:
        rows, self.confirmed = self.confirmed, []
        ids = {r["orthanc_instance_id"] for r in rows}
        held = {**ledger.kept_files(self.index_path, sorted(ids - set(self.imported))), **self.imported}
        for row in rows:
            oid = row["orthanc_instance_id"]
            if oid in held:  # imported from another file (the ledger, this run, a confirmed row before it)
                row["status"], row["error_message"] = "duplicate", CONFIRMED_ELSEWHERE
                self.demoted += 1
            else:
                held[oid] = (row["nas_id"], row["file_path"])
        if rows or self.waiting:
            self._write(rows, final=True)  # the confirmed imports first, so conflicts may name them as kept


def _kept_reason(row: dict, kept: tuple[str, str] | None) -> str:
    if kept is None:
        where = NOT_FROM_A_NAS
    elif kept == (row["nas_id"], row["file_path"]):
        where = f"an earlier version of this file (NAS '{kept[0]}', {kept[1]})"
    else:
        where = f"NAS '{kept[0]}', {kept[1]}"
    return f"same UIDs as another file, different bytes; Orthanc kept {where}"
