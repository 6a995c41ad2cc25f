"""The SQL of ``orthanc_arrivals``: the instances Orthanc's /changes feed says arrived (see pipeline/arrivals.py).

One row per Orthanc instance. A write replaces the rows of the instances it carries (delete by id, insert)
in one transaction, so rewriting the same Seq range gives the same rows. If an instance arrived twice
(deleted from Orthanc and sent again), the row of its latest arrival (highest seq) wins, whatever order the
ranges are written in. ``from_nas`` is decided at write time by the SOP Instance UID in ``instances``.

The same concept on three layers: the asset and sensor (defs/arrivals.py), the work (pipeline/arrivals.py),
the SQL (index/arrivals.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from pacs_assets.index.connection import session, transaction

# The columns a writer supplies, with their SQL types (the frame is cast on insert: an all-NULL column of a
# pandas frame carries no type of its own).
ARRIVAL_COLUMNS: dict[str, str] = {
    "orthanc_instance_id": "VARCHAR", "seq": "BIGINT", "patient_id": "VARCHAR", "patient_name": "VARCHAR",
    "patient_birth_date": "VARCHAR", "patient_sex": "VARCHAR", "study_instance_uid": "VARCHAR",
    "study_date": "VARCHAR", "study_description": "VARCHAR", "accession_number": "VARCHAR",
    "series_instance_uid": "VARCHAR", "modality": "VARCHAR", "sop_instance_uid": "VARCHAR",
    "sop_class_uid": "VARCHAR", "transfer_syntax_uid": "VARCHAR", "origin": "VARCHAR", "remote_aet": "VARCHAR",
    "received_at": "TIMESTAMP",
}


def replace_arrivals(index_path: str | os.PathLike, rows: Sequence[Mapping]) -> dict[str, int]:
    """Write arrivals (one short transaction). Returns counts only: written, from_nas, kept_newer."""
    if not rows:
        return {"written": 0, "from_nas": 0, "kept_newer": 0}
    import pandas as pd  # here, not at module level: every run worker and code server imports this module

    frame = pd.DataFrame([[row.get(c) for c in ARRIVAL_COLUMNS] for row in rows], columns=list(ARRIVAL_COLUMNS))
    # Within one write, an instance that arrived twice keeps its latest arrival.
    frame = frame.sort_values("seq").drop_duplicates("orthanc_instance_id", keep="last")
    cols = ", ".join(ARRIVAL_COLUMNS)
    casts = ", ".join(f"CAST(b.{c} AS {t}) AS {c}" for c, t in ARRIVAL_COLUMNS.items())
    with transaction(index_path) as con:
        con.register("_arrivals", frame)
        try:
            con.execute(f"CREATE TEMP TABLE _batch AS SELECT {casts} FROM _arrivals b")
            con.execute("""
                DELETE FROM orthanc_arrivals a
                WHERE EXISTS (SELECT 1 FROM _batch b
                              WHERE b.orthanc_instance_id = a.orthanc_instance_id AND a.seq <= b.seq)""")
            kept_newer = con.execute("""
                SELECT count(*) FROM _batch b
                WHERE EXISTS (SELECT 1 FROM orthanc_arrivals a WHERE a.orthanc_instance_id = b.orthanc_instance_id)
            """).fetchall()[0][0]
            con.execute(f"""
                INSERT INTO orthanc_arrivals ({cols}, source, from_nas, last_updated)
                SELECT {', '.join(f'b.{c}' for c in ARRIVAL_COLUMNS)}, 'orthanc',
                       EXISTS (SELECT 1 FROM instances i WHERE i.sop_instance_uid = b.sop_instance_uid), now()
                FROM _batch b
                WHERE NOT EXISTS (SELECT 1 FROM orthanc_arrivals a WHERE a.orthanc_instance_id = b.orthanc_instance_id
                                  AND a.seq > b.seq)""")
            written, from_nas = con.execute("""
                SELECT count(*), count(*) FILTER (WHERE a.from_nas) FROM orthanc_arrivals a
                JOIN _batch b ON a.orthanc_instance_id = b.orthanc_instance_id AND a.seq = b.seq""").fetchall()[0]
            con.execute("DROP TABLE _batch")
        finally:
            con.unregister("_arrivals")
    return {"written": written, "from_nas": from_nas, "kept_newer": kept_newer}


def arrival_totals(index_path: str | os.PathLike) -> dict[str, int]:
    """Counts over the whole table: rows, from_nas, and arrivals not known on any NAS right now."""
    with session(index_path) as con:
        rows, from_nas, not_on_nas_now = con.execute("""
            SELECT count(*), count(*) FILTER (WHERE from_nas),
                   count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM instances i
                                                      WHERE i.sop_instance_uid = a.sop_instance_uid))
            FROM orthanc_arrivals a""").fetchall()[0]
    return {"rows": rows, "from_nas": from_nas, "not_on_nas_now": not_on_nas_now}
