"""Reading a NAS's Firebird catalog, read-only, through a mapping. The only module that imports ``fdb``.

**The mapping** is ``{"images": "<one SELECT>"}``: one query, one result row per image, whose columns
are named (``AS ...``) with our attribute names. ``image_key`` and ``file_path`` (relative to the NAS
root) are required; the others are optional:

    patient_id, patient_name, patient_birth_date, patient_sex,
    study_key, study_instance_uid, study_date, study_description, accession_number,
    series_key, series_instance_uid, series_number, series_date, modality, series_description,
    image_key, sop_instance_uid, instance_number, file_path, row_version

One query rather than one per level: the vendor's joins (and any quirks, like names split over two
columns) stay in SQL the site can read and test in isql; rows arrive already denormalised. Dates may
be DATE columns or text (written as is: a malformed study date is reported, not repaired).
``DEFAULT_MAPPING`` matches the schema of ``pacs_assets.sample.firebird_nas``.

**Reading.** Embedded mode (the default) copies the ``.fdb`` to a local temporary snapshot per scan and
opens the copy: embedded Firebird locks a file to one process, a vendor server may hold the live file,
and the NAS is never written. Server mode connects to ``host:port`` with ``database`` as the server sees
it (relative: against the NAS root, as in embedded mode) and the password from the environment variable
named by ``password_env``; the server, not us, then holds the file. Either way the query
runs in a read-only snapshot transaction and rows are streamed with ``fetchmany``.

**Format.** Firebird 3 reads only its own on-disk structure (ODS 12). A catalog written by Firebird 2.5
(ODS 11) is refused with the upgrade path: ``gbak -b`` with Firebird 2.5, ``gbak -c`` with 3.0.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fdb

from pacs_assets.errors import ConfigError
from pacs_assets.nas.firebird_jpeg2000.settings import FirebirdCatalog

ATTRIBUTES = (
    "patient_id", "patient_name", "patient_birth_date", "patient_sex",
    "study_key", "study_instance_uid", "study_date", "study_description", "accession_number",
    "series_key", "series_instance_uid", "series_number", "series_date", "modality", "series_description",
    "image_key", "sop_instance_uid", "instance_number", "file_path", "row_version",
)
REQUIRED = ("image_key", "file_path")
_DATE_ATTRIBUTES = {"patient_birth_date", "study_date", "series_date"}
_INT_ATTRIBUTES = {"series_number", "instance_number"}

DEFAULT_IMAGES_SQL = """
SELECT p.PAT_NUMBER AS patient_id,
       TRIM(COALESCE(p.PAT_LASTNAME, '')) || '^' || TRIM(COALESCE(p.PAT_FIRSTNAME, '')) AS patient_name,
       p.PAT_BIRTHDATE AS patient_birth_date,
       p.PAT_SEX AS patient_sex,
       st.STU_ID AS study_key,
       st.STU_UID AS study_instance_uid,
       st.STU_DATE AS study_date,
       st.STU_DESC AS study_description,
       st.STU_ACCESSION AS accession_number,
       se.SER_ID AS series_key,
       se.SER_UID AS series_instance_uid,
       se.SER_NO AS series_number,
       se.SER_MODALITY AS modality,
       se.SER_DESC AS series_description,
       i.IMG_ID AS image_key,
       i.IMG_UID AS sop_instance_uid,
       i.IMG_NO AS instance_number,
       i.IMG_PATH AS file_path,
       i.IMG_VERSION AS row_version
FROM IMAGES i
LEFT JOIN SERIES se ON se.SER_ID = i.SER_ID
LEFT JOIN STUDIES st ON st.STU_ID = se.STU_ID
LEFT JOIN PATIENTS p ON p.PAT_ID = st.PAT_ID
ORDER BY i.IMG_ID
"""
DEFAULT_MAPPING = {"images": DEFAULT_IMAGES_SQL.strip()}

FIREBIRD3_ODS = 12
_SNAPSHOT_ATTEMPTS = 3


class CatalogError(ConfigError):
    """The catalog cannot be read as configured; the message is one sentence."""


def catalog_path(root: Path, catalog: FirebirdCatalog) -> Path:
    """The catalog file: relative paths in the config are relative to the NAS root."""
    return catalog.database if catalog.database.is_absolute() else Path(root) / catalog.database


def check_ods(nas_id: str, path: Path) -> None:
    """Refuse a file that is not a Firebird 3 (ODS 12) database, reading only its header page.

    Header page layout (Firebird's ods.h, unchanged from 2.x to 3.0): a 16-byte page header whose first
    byte is the page type (1 = header page), then page size and ODS version as native 16-bit integers;
    the ODS version carries the Firebird flag 0x8000.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise CatalogError(f"NAS '{nas_id}': cannot read the Firebird catalog {path}: {exc.strerror}.") from None
    page_size, ods = struct.unpack("<HH", head[16:20]) if len(head) == 20 else (0, 0)
    if head[:1] != b"\x01" or page_size not in (1024, 2048, 4096, 8192, 16384, 32768) or not ods & 0x8000:
        raise CatalogError(f"NAS '{nas_id}': the catalog {path} is not a Firebird database file.")
    major = ods & 0x7FFF
    if major != FIREBIRD3_ODS:
        made_by = {10: "Firebird 1.x", 11: "Firebird 2.x", 13: "Firebird 4 or later"}.get(major, "an unknown version")
        raise CatalogError(
            f"NAS '{nas_id}': the catalog {path} has on-disk structure ODS {major} (written by {made_by}), "
            f"but Firebird 3 reads only ODS 12; upgrade a copy with 'gbak -b' under the old version and "
            f"'gbak -c' under Firebird 3.0.")


def _error_sentence(exc: Exception) -> str:
    """The informative lines of a Firebird error, as one clause."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(exc.args[0] if exc.args else exc).splitlines()]
    skip = ("Error while", "SQLCODE", "Dynamic SQL Error", "SQL error code")
    return "; ".join(ln for ln in lines if ln and not ln.startswith(skip)).rstrip(".")


def _mapping_error(nas_id: str, exc: Exception) -> CatalogError:
    """Rephrase a prepare error: 'column IMAGES.FOO does not exist' rather than an SQLCODE."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(exc.args[0] if exc.args else exc).splitlines()]
    where = next((f" ({ln[0].lower()}{ln[1:]})" for ln in lines if ln.startswith("At line")), "")
    for marker, what in (("Column unknown", "column"), ("Table unknown", "table")):
        if marker in lines and lines.index(marker) + 1 < len(lines):
            name = lines[lines.index(marker) + 1]
            return CatalogError(f"Firebird catalog mapping for NAS '{nas_id}': {what} {name} does not exist{where}.")
    return CatalogError(f"Firebird catalog mapping for NAS '{nas_id}': the SQL is invalid: {_error_sentence(exc)}.")


def _value(name: str, value: object) -> object:
    if value is None:
        return None
    if name in _DATE_ATTRIBUTES and isinstance(value, (dt.date, dt.datetime)):
        return value.strftime("%Y%m%d")
    if name in _INT_ATTRIBUTES:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, str):
        return value.strip() or None  # CHAR columns come space-padded
    return str(value) if name in ("image_key", "study_key", "series_key", "row_version") else value


def create_embedded_database(path: Path, *, user: str = "SYSDBA", password: str, charset: str = "UTF8"):
    """Create a new Firebird 3 database file in embedded mode and return its open DB-API connection.

    For the sample generators and tests only (the catalog of a real NAS is never written).
    """
    def quoted(text: object) -> str:
        return "'" + str(text).replace("'", "''") + "'"

    return fdb.create_database(f"create database {quoted(path)} user {quoted(user)} password {quoted(password)} "
                               f"page_size 8192 default character set {charset}", charset=charset)


class CatalogReader:
    """One NAS's catalog: ``check()`` says whether it can be read, ``rows()`` streams the mapped rows."""

    def __init__(self, nas_id: str, root: Path, catalog: FirebirdCatalog, mapping: dict[str, str] | None = None):
        self.nas_id, self.root, self.catalog = nas_id, Path(root), catalog
        mapping = mapping or DEFAULT_MAPPING
        if set(mapping) != {"images"} or not str(mapping["images"]).strip():
            raise CatalogError(f"Firebird catalog mapping for NAS '{nas_id}' must have exactly one key, 'images', "
                               f"holding one SELECT (found keys: {', '.join(sorted(mapping)) or 'none'}).")
        self.sql = mapping["images"]

    @property
    def path(self) -> Path:
        return catalog_path(self.root, self.catalog)

    def _password(self, required: bool) -> str:
        password = os.environ.get(self.catalog.password_env)
        if password is None and required:
            raise CatalogError(f"NAS '{self.nas_id}': the Firebird password variable {self.catalog.password_env} "
                               "(firebird.password_env) is not set.")
        return password or ""

    def check(self) -> None:
        """Raise CatalogError (one sentence) if the catalog cannot be opened now."""
        if self.catalog.mode == "embedded":
            if not self.path.is_file():
                raise CatalogError(f"NAS '{self.nas_id}': the Firebird catalog {self.path} does not exist.")
            check_ods(self.nas_id, self.path)
        else:
            with self._connect():
                pass

    @contextmanager
    def _connect(self) -> Iterator[fdb.Connection]:
        snapshot_dir = None
        c = self.catalog
        try:
            if c.mode == "embedded":
                snapshot_dir = tempfile.mkdtemp(prefix="pacs-catalog-", dir=c.snapshot_dir)
                dsn = str(self._snapshot(Path(snapshot_dir)))
                where = f"the snapshot of {self.path}"
                kwargs = dict(dsn=dsn)
            else:
                if self.path.is_file():  # a server on this machine: the header says what it is first
                    check_ods(self.nas_id, self.path)
                where = f"{c.host}:{c.port}/{self.path}"
                kwargs = dict(host=c.host, port=c.port, database=str(self.path))
            try:
                con = fdb.connect(user=c.user, password=self._password(c.mode == "server"), charset=c.charset,
                                  **kwargs)
            except Exception as exc:  # noqa: BLE001 - DatabaseError, or fdb not finding libfbclient
                raise CatalogError(f"NAS '{self.nas_id}': cannot open the Firebird catalog at {where}: "
                                   f"{_error_sentence(exc)}.") from None
            try:
                yield con
            finally:
                con.close()
        finally:
            if snapshot_dir:
                shutil.rmtree(snapshot_dir, ignore_errors=True)

    def _snapshot(self, folder: Path) -> Path:
        """Copy the catalog locally; retry if it changed during the copy (a vendor server was writing)."""
        if not self.path.is_file():
            raise CatalogError(f"NAS '{self.nas_id}': the Firebird catalog {self.path} does not exist.")
        check_ods(self.nas_id, self.path)
        target = folder / "catalog.fdb"
        for _ in range(_SNAPSHOT_ATTEMPTS):
            before = os.stat(self.path)
            shutil.copyfile(self.path, target)  # opens the source 'rb'
            after = os.stat(self.path)
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
                return target
        raise CatalogError(f"NAS '{self.nas_id}': the Firebird catalog {self.path} kept changing while it was "
                           f"copied ({_SNAPSHOT_ATTEMPTS} attempts); use server mode for a live catalog.")

    def rows(self, batch_size: int = 2000) -> Iterator[list[dict[str, object]]]:
        """Stream the mapped rows as lists of dicts (attribute -> value), ``batch_size`` at a time."""
        tpb = fdb.TPB()
        tpb.access_mode = fdb.isc_tpb_read  # the engine refuses any write in this transaction
        tpb.isolation_level = fdb.isc_tpb_concurrency  # one consistent view for the whole scan
        with self._connect() as con:
            transaction = con.trans(default_tpb=tpb.render())
            try:
                cursor = transaction.cursor()
                try:
                    statement = cursor.prep(self.sql)
                except fdb.DatabaseError as exc:
                    raise _mapping_error(self.nas_id, exc) from None
                if statement.statement_type != fdb.isc_info_sql_stmt_select:
                    raise CatalogError(f"Firebird catalog mapping for NAS '{self.nas_id}': 'images' must be a "
                                       "SELECT statement.")
                names = [d[0].lower() for d in statement.description]
                unknown = [n for n in names if n not in ATTRIBUTES]
                missing = [n for n in REQUIRED if n not in names]
                if unknown or missing:
                    problem = (f"result column {unknown[0]} is not one of our attribute names" if unknown
                               else f"no result column is named {missing[0]}")
                    raise CatalogError(f"Firebird catalog mapping for NAS '{self.nas_id}': {problem} "
                                       "(name columns with AS, see pacs_assets.nas.firebird_jpeg2000.catalog).")
                try:
                    cursor.execute(statement)
                    while chunk := cursor.fetchmany(batch_size):
                        yield [{n: _value(n, v) for n, v in zip(names, row, strict=False)} for row in chunk]
                except fdb.DatabaseError as exc:
                    raise CatalogError(f"Firebird catalog mapping for NAS '{self.nas_id}': the query failed: "
                                       f"{_error_sentence(exc)}.") from None
            finally:
                transaction.rollback()  # nothing to commit: read-only
