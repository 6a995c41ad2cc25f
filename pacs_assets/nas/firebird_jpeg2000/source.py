"""The ``firebird_jpeg2000`` NAS kind: a Firebird catalog (patients/studies/series/images) plus JP2 files.

A scan has two phases, both streamed in batches:

1. **Catalog rows** (see ``catalog`` for the mapping). Each row gets one record keyed by the file
   it points to: 'ok' with the JP2 header facts (headers only, never a decode), or 'failed' when the file
   is missing, corrupt, or outside the root ('../', absolute, a symlink out of the root: refused before
   any open). A row with no usable path, or pointing to a file another row already claimed, is keyed
   ``catalog-row:<image_key>`` since it has no file of its own.
2. **The disk walk**: every file no row pointed to is recorded 'skipped' (the catalog file itself,
   unreferenced JP2s, anything else). Symbolic links met on the walk are not followed.

Paths the catalog points to are kept in memory between the phases (about 100 bytes per image).
DICOM UIDs the catalog lacks are derived from the NAS id and catalog keys (2.25 UUID-5 UIDs), so every
scan gives the same ones. The change token is ``<size>-<mtime_ns>-<row hash>``: the hash covers every
mapped column (``row_version`` included), so a corrected patient name re-reads the row even when the
vendor keeps no row version. Nothing on the NAS is ever opened for writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydicom.uid import RE_VALID_UID

from pacs_assets.errors import ConfigError
from pacs_assets.nas.base import FAILED, OK, SKIPPED, FileRecord, NasSource, ScanCache, SendAs
from pacs_assets.nas.body import UploadBody
from pacs_assets.nas.dates import parse_da
from pacs_assets.nas.firebird_jpeg2000.catalog import CatalogReader
from pacs_assets.nas.firebird_jpeg2000.dicom_wrap import dicom_around_codestream
from pacs_assets.nas.firebird_jpeg2000.jpeg2000 import (
    SECONDARY_CAPTURE,
    J2kInfo,
    Jpeg2000Error,
    codestream_info,
)
from pacs_assets.nas.firebird_jpeg2000.settings import FirebirdCatalog
from pacs_assets.nas.walk import check_root, walk

IMAGE_SUFFIXES = (".jp2", ".j2k", ".j2c", ".jpx", ".jpf", ".jph")
# Namespace of the derived UIDs; never change it, or every derived UID changes with it.
UID_NAMESPACE = uuid.UUID("6f1c1b4e-5f53-4a43-9d0e-6a3b1f0c2d7e")
# A scan where nearly every catalog row misses its file is an outage (NAS half-mounted), not data.
OUTAGE_MIN_ROWS, OUTAGE_SHARE = 20, 0.9

# FileRecord field -> DICOM keyword, for the wrapped file.
DICOM_KEYWORDS = {
    "patient_id": "PatientID", "patient_name": "PatientName", "patient_sex": "PatientSex",
    "study_instance_uid": "StudyInstanceUID", "study_description": "StudyDescription",
    "accession_number": "AccessionNumber", "series_instance_uid": "SeriesInstanceUID",
    "series_number": "SeriesNumber", "modality": "Modality", "series_description": "SeriesDescription",
    "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID", "instance_number": "InstanceNumber",
}
DATE_KEYWORDS = {"patient_birth_date": "PatientBirthDate", "study_date": "StudyDate", "series_date": "SeriesDate"}


def derived_uid(nas_id: str, level: str, key: object) -> str:
    """A deterministic UID (root 2.25, PS3.5 B.2) for a catalog entity without one."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, f'{nas_id}|{level}|{key}').int}"


def catalog_row_path(image_key: object) -> str:
    """The record key of a catalog row that has no file of its own (no path, outside the root, duplicate)."""
    return f"catalog-row:{image_key}"


def _token(st: os.stat_result, row: dict) -> str:
    """``<size>-<mtime_ns>-<hash of every mapped column>`` (``row_version``, when mapped, is one of them)."""
    row_hash = hashlib.blake2b(repr(tuple(row.items())).encode(), digest_size=8).hexdigest()
    return f"{st.st_size}-{st.st_mtime_ns}-{row_hash}"


class FirebirdJpeg2000Source(NasSource):
    kind = "firebird_jpeg2000"

    def __init__(self, nas_id: str, root: Path, *, catalog: FirebirdCatalog, mapping: dict | None = None,
                 settle_seconds: float = 0.0):
        super().__init__(nas_id, root)
        self.catalog = catalog
        self.reader = CatalogReader(nas_id, self.root, catalog, mapping)
        self.settle_seconds = settle_seconds
        self._real_root = os.path.realpath(self.root)
        self._real_dirs: dict[str, str] = {}
        self._derived: dict[tuple[str, str], str] = {}

    def check_available(self) -> None:
        check_root(self.nas_id, self.root)
        snapshots = self.catalog.snapshot_dir
        if snapshots is not None and self._inside(os.path.realpath(snapshots)):
            raise ConfigError(f"NAS '{self.nas_id}': firebird.snapshot_dir {snapshots} is inside the NAS root, "
                              "which is never written; choose a local folder.")
        self.reader.check()

    # -- paths ----------------------------------------------------------------------------------------
    def _inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _locate(self, raw: object, *, fresh: bool = False) -> tuple[str | None, str | None, str | None]:
        """(rel, real_path, refusal) for a catalog path. Nothing is opened; only lstat/realpath.

        Folders' real paths are cached for the scan; ``fresh`` resolves again (before an import).
        """
        text = str(raw or "").strip().replace("\\", "/")  # catalogs written on Windows use backslashes
        if not text or "\0" in text:
            return None, None, "has no usable file path"
        if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
            return None, None, "an absolute path; refused (only paths relative to the NAS root are read)"
        rel = posixpath.normpath(text)
        if rel == "." or rel == ".." or rel.startswith("../"):
            return None, None, "which is outside the NAS root; refused, not read"
        folder, name = posixpath.split(rel)
        real_dir = None if fresh else self._real_dirs.get(folder)
        if real_dir is None:
            real_dir = self._real_dirs[folder] = os.path.realpath(os.path.join(self._real_root, folder))
        if not self._inside(real_dir):
            return rel, None, "whose folder is a symbolic link resolving outside the NAS root; refused, not read"
        real = os.path.join(real_dir, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
            if not self._inside(real):
                return rel, None, "a symbolic link resolving outside the NAS root; refused, not read"
        return rel, real, None

    # -- records --------------------------------------------------------------------------------------
    def _uids(self, row: dict) -> tuple[str, str, str, list[str]]:
        # Without study/series keys, group by what identifies them in practice.
        study_key = row.get("study_key") or "|".join(str(row.get(k)) for k in ("patient_id", "accession_number",
                                                                                 "study_date"))
        series_key = row.get("series_key") or f"{study_key}|{row.get('series_number')}|{row.get('modality')}"
        derived, out = [], []
        for level, attr, key in (("study", "study_instance_uid", study_key),
                                 ("series", "series_instance_uid", series_key),
                                 ("image", "sop_instance_uid", row["image_key"])):
            value = row.get(attr)
            if value and len(str(value)) <= 64 and re.match(RE_VALID_UID, str(value)):
                out.append(str(value))
            else:
                if level == "image":
                    out.append(derived_uid(self.nas_id, level, key))
                else:  # one study/series has many images: derive its UID once per scan
                    uid = self._derived.get((level, key))
                    if uid is None:
                        uid = self._derived[(level, key)] = derived_uid(self.nas_id, level, key)
                    out.append(uid)
                derived.append(attr)
        return out[0], out[1], out[2], derived

    def _catalog_record(self, row: dict, file_path: str, status: str, reason: str | None, st=None) -> FileRecord:
        study_uid, series_uid, sop_uid, derived = self._uids(row)
        rec = FileRecord(
            nas_id=self.nas_id, file_path=file_path, status=status, reason=reason, study_instance_uid=study_uid,
            series_instance_uid=series_uid, sop_instance_uid=sop_uid, sop_class_uid=SECONDARY_CAPTURE,
            **{k: row.get(k) for k in (
                "patient_id", "patient_name", "patient_birth_date", "patient_sex", "study_date",
                "study_description", "accession_number", "series_number", "series_date", "modality",
                "series_description", "instance_number")})
        rec.extra_json = json.dumps({
            "catalog": {k: row.get(k) for k in ("image_key", "study_key", "series_key", "row_version")}
                       | {"path": row.get("file_path")},
            "uids_derived": derived})
        if st is not None:
            rec.size, rec.mtime_ns = st.st_size, st.st_mtime_ns
            rec.change_token = _token(st, row)
        return rec

    def _with_header(self, rec: FileRecord, real: str) -> FileRecord:
        try:
            info = codestream_info(real)
        except Jpeg2000Error as exc:
            rec.status, rec.reason = FAILED, str(exc)
            return rec
        except OSError as exc:
            rec.status, rec.reason = FAILED, f"cannot read the file: {exc.strerror}"
            return rec
        rec.file_format = "JP2"
        rec.transfer_syntax_uid = info.transfer_syntax_uid
        rec.compression_type = info.compression_type
        rec.rows, rec.columns, rec.number_of_frames = info.rows, info.columns, 1
        extra = json.loads(rec.extra_json)
        extra["j2k"] = {k: getattr(info, k) for k in (
            "container", "samples_per_pixel", "bits_stored", "signed", "reversible", "mct", "levels", "layers",
            "colorspace", "codestream_offset", "codestream_length", "photometric_interpretation")}
        rec.extra_json = json.dumps(extra)
        return rec

    # -- the scan -------------------------------------------------------------------------------------
    def scan(self, cache: ScanCache, batch_size: int = 2000, folders=None) -> Iterator[list[FileRecord]]:
        # No folder semantics (the catalog says where each file is): ``folders`` is ignored and every scan
        # reads the whole catalog and walks the whole root (the kind has no folders: NasKind.has_folders).
        self.check_available()
        self._real_dirs.clear()
        claimed: dict[str, str] = {}  # rel path -> image key of the row that claimed it
        rows = missing = 0
        for chunk in self.reader.rows(batch_size):
            rows += len(chunk)
            batch, todo = [], []
            for row in chunk:
                out = self._classify(row, claimed, todo)
                if out is not None:
                    missing += out.reason.endswith("which does not exist")
                    batch.append(out)
            # Only rows whose file and catalog values changed since the last scan are built and parsed.
            cached = cache.lookup({rel: _token(st, row) for row, rel, real, st in todo})
            batch.extend(cached.get(rel) or self._with_header(self._catalog_record(row, rel, OK, None, st), real)
                         for row, rel, real, st in todo)
            yield batch
        if rows >= OUTAGE_MIN_ROWS and missing > OUTAGE_SHARE * rows:
            raise ConfigError(f"NAS '{self.nas_id}': {missing} of {rows} catalog rows point to files missing under "
                              f"{self.root}; treating it as an outage (NAS partly unmounted?), not as deletions.")
        batch = []
        for rec in self._walk(claimed):
            batch.append(rec)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _classify(self, row: dict, claimed: dict[str, str], todo: list) -> FileRecord | None:
        """A finished record for a row that cannot be read, else None (appending it to ``todo``)."""
        key, raw = row["image_key"], row.get("file_path")
        rel, real, refusal = self._locate(raw)

        def failed(path: str, why: str, st=None, status: str = FAILED) -> FileRecord:
            return self._catalog_record(row, path, status, f"catalog row {key} {why}", st)

        if rel in claimed:
            return failed(catalog_row_path(key), f"points to {raw}, which catalog row {claimed[rel]} already points to")
        if rel is not None:
            claimed[rel] = key
        if refusal:
            why = refusal if refusal.startswith("has ") else f"points to {raw}, {refusal}"
            return failed(rel or catalog_row_path(key), why)
        if real != os.path.join(self._real_root, rel):  # reached through a link: the target is claimed too
            claimed.setdefault(os.path.relpath(real, self._real_root), key)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return failed(rel, f"points to {raw}, which does not exist")
        except OSError as exc:
            return failed(rel, f"points to {raw}, which cannot be read: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return failed(rel, f"points to {raw}, which is not a regular file", st)
        if self.settle_seconds and time.time_ns() - st.st_mtime_ns < self.settle_seconds * 1e9:
            return self._catalog_record(row, rel, SKIPPED, "still being written (modified too recently); next run", st)
        todo.append((row, rel, real, st))
        return None

    def _walk(self, claimed: dict[str, str]) -> Iterator[FileRecord]:
        """Records for everything on disk that no catalog row claimed. Symlinks are never followed."""
        catalog_rel = os.path.relpath(os.path.realpath(self.reader.path), self._real_root)
        for entry in walk(self._real_root, follow_links=False):
            if entry.rel in claimed:
                continue
            if entry.status is not None:
                status, reason = entry.status, entry.reason
            elif entry.link:
                status, reason = SKIPPED, "symbolic link not referenced by the catalog, not followed"
            elif entry.rel == catalog_rel:
                status, reason = SKIPPED, "Firebird catalog file"
            elif entry.rel.lower().endswith(IMAGE_SUFFIXES):
                status, reason = SKIPPED, "no catalog row points to this file"
            else:
                status, reason = SKIPPED, "not referenced by the catalog"
            yield FileRecord(nas_id=self.nas_id, file_path=entry.rel, size=entry.size, mtime_ns=entry.mtime_ns,
                             change_token=f"{entry.size}-{entry.mtime_ns}", status=status, reason=reason)

    # -- import ---------------------------------------------------------------------------------------
    def upload_body(self, record: FileRecord, send_as: SendAs | None = None) -> UploadBody:
        if record.status != OK:
            raise ValueError(f"{record.file_path} is {record.status}, not importable: {record.reason}")
        rel, real, refusal = self._locate(record.file_path, fresh=True)
        if refusal:
            raise ValueError(f"{record.file_path}: {refusal}")
        info: J2kInfo = codestream_info(real)
        attributes: dict[str, object] = {kw: getattr(record, field) for field, kw in DICOM_KEYWORDS.items()}
        for field, kw in DATE_KEYWORDS.items():
            value = getattr(record, field)
            if parse_da(value):  # a malformed catalog date is left out of the DICOM, kept in the index
                attributes[kw] = value.replace(".", "")
        if send_as is not None:  # the PACS's patient identity: its ID domain, or an operator's decision
            attributes.update(send_as.attributes())
        head, tail = dicom_around_codestream(info, attributes)
        # The codestream goes from the NAS file to Orthanc in chunks, between the DICOM head and tail.
        return UploadBody([head, (real, info.codestream_offset, info.codestream_length), tail])
