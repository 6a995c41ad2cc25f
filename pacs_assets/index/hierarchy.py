"""Patients / studies / series / instances of one NAS, rebuilt a window at a time from its inventory.

Written only by the ``dicom_index`` asset. Each window is replaced (delete, insert) in one transaction.

The same concept on two layers: this SQL, and the pipeline's one route to it (pipeline/hierarchy.py).
"""

from __future__ import annotations

import datetime as dt
import os

from pacs_assets.index.connection import transaction
from pacs_assets.index.queries import name_key_sql

HIERARCHY_TABLES = ("patients", "studies", "series", "instances")
# One row per person record, not per patient ID: a reused ID keeps each person's demographics and studies
# apart (identity/collisions.py reads them; `pacs search` shows each person with only their own studies).
PERSON = "patient_id, patient_name, patient_birth_date, patient_sex"

# Orthanc's deterministic instance ID (measured on 1.10.1): SHA-1 of the four identifiers, 5 groups of 8 hex digits.
ORTHANC_ID_SQL = """
    regexp_replace(sha1(coalesce(patient_id, '') || '|' || study_instance_uid || '|' ||
                        series_instance_uid || '|' || sop_instance_uid),
                   '^(.{8})(.{8})(.{8})(.{8})(.{8})$', '\\1-\\2-\\3-\\4-\\5')
"""


def rebuild_hierarchy(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    """Rewrite patients/studies/series/instances of one NAS's window from its inventory, in one transaction."""
    window = [nas_id, start, end]
    where = "nas_id = ? AND partition_date >= ? AND partition_date < ?"
    src = "FROM inventory WHERE nas_id = ? AND procedure_date >= ? AND procedure_date < ? AND status = 'ok'"
    with transaction(index_path) as con:
        for table in HIERARCHY_TABLES:
            con.execute(f"DELETE FROM {table} WHERE {where}", window)
        con.execute(f"""
            INSERT INTO instances
            SELECT nas_id, procedure_date, date_source, file_path, sop_instance_uid, sop_class_uid,
                   series_instance_uid, study_instance_uid, patient_id, instance_number, number_of_frames,
                   "rows", "columns", file_format, transfer_syntax_uid, compression_type, size, change_token,
                   {ORTHANC_ID_SQL}, now()
            {src}""", window)
        con.execute(f"""
            INSERT INTO series (nas_id, partition_date, series_instance_uid, study_instance_uid, modality,
                                series_number, series_description, instance_count, frame_count, folder,
                                last_updated, patient_id, patient_name, patient_birth_date, patient_sex)
            SELECT nas_id, procedure_date, series_instance_uid, any_value(study_instance_uid), mode(modality),
                   min(series_number), any_value(series_description), count(*),
                   sum(coalesce(number_of_frames, 1)), min(regexp_replace(file_path, '/[^/]*$', '')), now(),
                   {PERSON}
            {src} GROUP BY nas_id, procedure_date, series_instance_uid, {PERSON}""", window)
        con.execute(f"""
            INSERT INTO studies (nas_id, partition_date, study_instance_uid, patient_id, study_date, date_source,
                                 study_description, accession_number, modalities, series_count, instance_count,
                                 folder, file_formats, last_updated, patient_name, patient_birth_date, patient_sex)
            SELECT nas_id, procedure_date, study_instance_uid, patient_id, min(study_date),
                   min(date_source), any_value(study_description), any_value(accession_number),
                   string_agg(DISTINCT modality, ',' ORDER BY modality), count(DISTINCT series_instance_uid),
                   count(*), min(regexp_replace(file_path, '/[^/]*/[^/]*$', '')),
                   string_agg(DISTINCT file_format, ',' ORDER BY file_format), now(),
                   patient_name, patient_birth_date, patient_sex
            {src} GROUP BY nas_id, procedure_date, study_instance_uid, {PERSON}""", window)
        con.execute(f"""
            INSERT INTO patients
            SELECT nas_id, procedure_date, patient_id, patient_name, patient_birth_date,
                   patient_sex, count(DISTINCT study_instance_uid), count(*), now(),
                   {name_key_sql("patient_name")}
            {src} GROUP BY nas_id, procedure_date, {PERSON}""", window)
        counts = {table: con.execute(f"SELECT count(*) FROM {table} WHERE {where}", window).fetchall()[0][0]
                  for table in HIERARCHY_TABLES}
    return counts
