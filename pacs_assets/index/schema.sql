-- The DuckDB index: where every image is. Partition-scoped tables carry (nas_id, partition_date) and are
-- rewritten a partition window at a time (delete the window, insert) in one transaction.

-- Every file the walk met, with what we read from it. Keyed by (nas_id, file_path); one row per file.
CREATE TABLE IF NOT EXISTS inventory (
    nas_id VARCHAR NOT NULL, file_path VARCHAR NOT NULL, size BIGINT, mtime_ns BIGINT, change_token VARCHAR,
    status VARCHAR NOT NULL, reason VARCHAR, file_format VARCHAR, transfer_syntax_uid VARCHAR,
    compression_type VARCHAR, patient_id VARCHAR, patient_name VARCHAR, patient_birth_date VARCHAR,
    patient_sex VARCHAR, study_instance_uid VARCHAR, study_date VARCHAR, study_description VARCHAR,
    accession_number VARCHAR, series_instance_uid VARCHAR, series_number INTEGER, series_date VARCHAR,
    modality VARCHAR, series_description VARCHAR, sop_instance_uid VARCHAR, sop_class_uid VARCHAR,
    instance_number INTEGER, number_of_frames INTEGER, "rows" INTEGER, "columns" INTEGER, extra_json VARCHAR,
    procedure_date DATE NOT NULL, date_source VARCHAR NOT NULL, scanned_at TIMESTAMP,
    folder VARCHAR  -- the file's folder (file_path up to its last '/'): what incremental runs walk and merge by
);
ALTER TABLE inventory ADD COLUMN IF NOT EXISTS folder VARCHAR;  -- indexes made before the column existed


-- What earlier walks read (the scan cache) lives in its own file beside the index: index/scan_cache.py.

CREATE TABLE IF NOT EXISTS patients (
    nas_id VARCHAR NOT NULL, partition_date DATE NOT NULL, patient_id VARCHAR, patient_name VARCHAR,
    patient_birth_date VARCHAR, patient_sex VARCHAR, study_count INTEGER, instance_count BIGINT,
    last_updated TIMESTAMP,
    name_key VARCHAR  -- lower case, accents stripped (queries.name_key_sql): what `pacs search` matches
);

CREATE TABLE IF NOT EXISTS studies (
    nas_id VARCHAR NOT NULL, partition_date DATE NOT NULL, study_instance_uid VARCHAR NOT NULL,
    patient_id VARCHAR, study_date VARCHAR, date_source VARCHAR, study_description VARCHAR,
    accession_number VARCHAR, modalities VARCHAR, series_count INTEGER, instance_count BIGINT,
    folder VARCHAR, file_formats VARCHAR, last_updated TIMESTAMP,
    -- the person the study's files name: one row per study and person (a study UID reused for two people is two)
    patient_name VARCHAR, patient_birth_date VARCHAR, patient_sex VARCHAR
);
ALTER TABLE studies ADD COLUMN IF NOT EXISTS patient_name VARCHAR;
ALTER TABLE studies ADD COLUMN IF NOT EXISTS patient_birth_date VARCHAR;
ALTER TABLE studies ADD COLUMN IF NOT EXISTS patient_sex VARCHAR;

-- Per study: how many of its files are in Orthanc. Owned by the upload (ledger.refresh_orthanc_counts), so
-- a search reads this small table, never the big instances and import_history tables.
CREATE TABLE IF NOT EXISTS study_uploads (
    nas_id VARCHAR NOT NULL, partition_date DATE NOT NULL, study_instance_uid VARCHAR NOT NULL,
    files_in_orthanc BIGINT, last_updated TIMESTAMP
);

CREATE TABLE IF NOT EXISTS series (
    nas_id VARCHAR NOT NULL, partition_date DATE NOT NULL, series_instance_uid VARCHAR NOT NULL,
    study_instance_uid VARCHAR, modality VARCHAR, series_number INTEGER, series_description VARCHAR,
    instance_count BIGINT, frame_count BIGINT, folder VARCHAR, last_updated TIMESTAMP,
    -- the person the series' files name: one row per series and person, as in studies
    patient_id VARCHAR, patient_name VARCHAR, patient_birth_date VARCHAR, patient_sex VARCHAR
);
ALTER TABLE series ADD COLUMN IF NOT EXISTS patient_id VARCHAR;
ALTER TABLE series ADD COLUMN IF NOT EXISTS patient_name VARCHAR;
ALTER TABLE series ADD COLUMN IF NOT EXISTS patient_birth_date VARCHAR;
ALTER TABLE series ADD COLUMN IF NOT EXISTS patient_sex VARCHAR;

CREATE TABLE IF NOT EXISTS instances (
    nas_id VARCHAR NOT NULL, partition_date DATE NOT NULL, date_source VARCHAR, file_path VARCHAR NOT NULL,
    sop_instance_uid VARCHAR NOT NULL, sop_class_uid VARCHAR, series_instance_uid VARCHAR,
    study_instance_uid VARCHAR, patient_id VARCHAR, instance_number INTEGER, number_of_frames INTEGER,
    "rows" INTEGER, "columns" INTEGER, file_format VARCHAR, transfer_syntax_uid VARCHAR,
    compression_type VARCHAR, file_size BIGINT, change_token VARCHAR,
    orthanc_instance_id VARCHAR,  -- computed as Orthanc does (SHA-1 of the four identifiers)
    last_updated TIMESTAMP
);

CREATE SEQUENCE IF NOT EXISTS import_attempt_seq;

-- (Below the sequence: the index file only, not a run's staging file.)
-- An incremental run reads and replaces the rows of a few folders: with this index that costs the same on a
-- NAS of 20 million files as on one of 20,000 (README, Speed). Filled once for rows from before the column.
UPDATE inventory SET folder = regexp_replace(file_path, '/?[^/]*$', '') WHERE folder IS NULL;
CREATE INDEX IF NOT EXISTS inventory_folder ON inventory (folder);

-- Files that vanished from a NAS: their inventory row goes, this record (and their import history) stays.
-- Nothing is ever deleted from Orthanc because a NAS file disappeared.
-- A walk that finds the path again removes its record (index/inventory.py merge_inventory).
CREATE TABLE IF NOT EXISTS deleted_files (
    nas_id VARCHAR NOT NULL, file_path VARCHAR NOT NULL, change_token VARCHAR, partition_date DATE,
    last_status VARCHAR, deleted_at TIMESTAMP
);

-- The import ledger: one row per upload attempt, never rewritten.
CREATE TABLE IF NOT EXISTS import_history (
    attempt_id BIGINT DEFAULT nextval('import_attempt_seq'), nas_id VARCHAR NOT NULL,
    file_path VARCHAR NOT NULL, change_token VARCHAR, file_hash VARCHAR, partition_date DATE,
    orthanc_instance_id VARCHAR, patient_id VARCHAR, study_instance_uid VARCHAR,
    series_instance_uid VARCHAR, sop_instance_uid VARCHAR,
    status VARCHAR NOT NULL,  -- imported | duplicate | uid_conflict | failed
    -- error_message: a failure's reason; for uid_conflict, the file Orthanc kept (same UIDs, other bytes)
    error_message VARCHAR, retryable BOOLEAN, attempts INTEGER, http_status INTEGER,
    started_at TIMESTAMP, finished_at TIMESTAMP, run_id VARCHAR,
    attempt_key VARCHAR,  -- the attempt's key in its upload journal (index/journal.py): merging twice adds nothing
    orthanc_node VARCHAR  -- the Orthanc URL that answered (several nodes may share one index and storage)
);
ALTER TABLE import_history ADD COLUMN IF NOT EXISTS attempt_key VARCHAR;
ALTER TABLE import_history ADD COLUMN IF NOT EXISTS orthanc_node VARCHAR;

-- Uploads whose POST went out but whose answer never reached the journal (the process was killed mid-POST).
-- Not attempts Orthanc answered: the file stays pending. index/journal.py says how its next answer is read.
CREATE TABLE IF NOT EXISTS interrupted_uploads (
    attempt_key VARCHAR NOT NULL, nas_id VARCHAR NOT NULL, file_path VARCHAR NOT NULL, change_token VARCHAR,
    orthanc_instance_id VARCHAR,  -- the ID the upload expected (computed as Orthanc does)
    started_at TIMESTAMP, run_id VARCHAR
);

-- Files the upload holds back because their patient identity collides (identity/collisions.py): not sent to
-- Orthanc until an operator decides (`pacs identity`). Written only by the upload, a window at a time: each
-- upload re-decides every pending file of its window, so a released file loses its row when it is sent.
CREATE TABLE IF NOT EXISTS identity_holds (
    nas_id VARCHAR NOT NULL, file_path VARCHAR NOT NULL, change_token VARCHAR, partition_date DATE,
    collision_id VARCHAR, kind VARCHAR, reason VARCHAR, held_at TIMESTAMP,
    person_key VARCHAR  -- the held record (identity/model.py PersonRecord.key): what a decision releases
);
ALTER TABLE identity_holds ADD COLUMN IF NOT EXISTS person_key VARCHAR;

-- One current status per file found under a NAS root: imported, duplicate, uid_conflict, failed, skipped
-- (or pending, between indexing and import). reason: why skipped/failed, or which file Orthanc kept instead.
CREATE OR REPLACE VIEW file_status AS
WITH last_attempt AS (
    SELECT * FROM import_history
    QUALIFY row_number() OVER (PARTITION BY nas_id, file_path, change_token ORDER BY attempt_id DESC) = 1
)
SELECT f.nas_id, f.file_path, f.procedure_date AS partition_date,
       CASE WHEN f.status <> 'ok' THEN f.status
            WHEN h.file_path IS NOT NULL AND (a.status IS NULL OR a.status = 'failed') THEN 'held'
            ELSE coalesce(a.status, 'pending') END AS status,
       CASE WHEN f.status <> 'ok' THEN f.reason
            WHEN h.file_path IS NOT NULL AND (a.status IS NULL OR a.status = 'failed') THEN h.reason
            ELSE a.error_message END AS reason,
       a.orthanc_instance_id, f.change_token, a.finished_at AS imported_at
FROM inventory f
LEFT JOIN last_attempt a
  ON a.nas_id = f.nas_id AND a.file_path = f.file_path AND a.change_token = f.change_token
LEFT JOIN identity_holds h
  ON h.nas_id = f.nas_id AND h.file_path = f.file_path AND h.change_token = f.change_token;

-- What Orthanc received, as its /changes feed reports it (NewInstance): instances sent straight to Orthanc by a
-- modality (C-STORE) and, flagged from_nas, those our NAS imports uploaded. One row per Orthanc instance
-- (orthanc_instance_id; a re-arrival keeps the latest seq), rewritten by id; no NAS path (source = 'orthanc').
CREATE TABLE IF NOT EXISTS orthanc_arrivals (
    orthanc_instance_id VARCHAR NOT NULL, seq BIGINT NOT NULL, source VARCHAR NOT NULL DEFAULT 'orthanc',
    patient_id VARCHAR, patient_name VARCHAR, patient_birth_date VARCHAR, patient_sex VARCHAR,
    study_instance_uid VARCHAR, study_date VARCHAR, study_description VARCHAR, accession_number VARCHAR,
    series_instance_uid VARCHAR, modality VARCHAR, sop_instance_uid VARCHAR, sop_class_uid VARCHAR,
    transfer_syntax_uid VARCHAR,
    origin VARCHAR,      -- Orthanc's Origin metadata: DicomProtocol (C-STORE), RestApi, Plugins, Lua...
    remote_aet VARCHAR,  -- the sender's AE title for a C-STORE, else empty
    received_at TIMESTAMP,  -- Orthanc's ReceptionDate, UTC
    from_nas BOOLEAN NOT NULL,  -- the SOP instance is known on a NAS (instances table) when the row was written
    last_updated TIMESTAMP
);

-- The last whole-NAS Orthanc sweep of each NAS that found nothing missing (pipeline/orthanc_sweep.py): Orthanc's
-- instance count and last change Seq when its exact list was read, and the ledger's last attempt it covered.
-- A later sweep checks only what changed since; this row is its proof of the rest.
CREATE TABLE IF NOT EXISTS orthanc_sweeps (
    nas_id VARCHAR NOT NULL, orthanc VARCHAR NOT NULL, instance_count BIGINT NOT NULL, last_seq BIGINT NOT NULL,
    last_attempt_id BIGINT NOT NULL, full_at TIMESTAMP NOT NULL
);

-- A full sweep spread over nights (pipeline/orthanc_sweep.py): Orthanc's instance list read a slice a night by
-- offset, up to the instance count it had when the cycle began; the ledger's entries up to last_attempt_id must
-- all have been listed by the end. The IDs listed so far are kept in orthanc_sweep_seen.
CREATE TABLE IF NOT EXISTS orthanc_sweep_cycles (
    nas_id VARCHAR NOT NULL, positions BIGINT NOT NULL, last_attempt_id BIGINT NOT NULL,
    started_at TIMESTAMP NOT NULL, next_offset BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS orthanc_sweep_seen (nas_id VARCHAR NOT NULL, orthanc_instance_id VARCHAR NOT NULL);
