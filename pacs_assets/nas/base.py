"""The one interface every NAS kind implements, and the record it produces for each file.

A source walks its NAS read-only and yields ``FileRecord`` batches (streamed: a NAS of millions of
files is never held in memory); it later hands the importer the DICOM bytes for one record.

A NAS *kind* is one subpackage of ``pacs_assets.nas`` that builds a ``NasKind`` (its settings model,
its source, how the folder watch dates a new file, its extra checks) and one line in ``registry.py``.
Nothing here imports Dagster: the Dagster layer (``pacs_assets.defs``) wraps what a kind declares.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pacs_assets.nas.body import UploadBody

# The statuses a file can have in the inventory (before import). 'ok' means indexable DICOM content.
OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclasses.dataclass
class FileRecord:
    """What one file on a NAS is, as far as the inventory knows. Column names match the index tables."""

    nas_id: str
    file_path: str  # relative to the NAS root, POSIX separators
    size: int = 0
    mtime_ns: int = 0
    change_token: str = ""  # "<size>-<mtime_ns>" (plus a catalog row version for catalog-backed NAS kinds)
    status: str = OK  # ok | skipped | failed
    reason: str | None = None  # why a file is skipped or failed; one sentence
    file_format: str | None = None  # DICOM | DICOM-headerless | JP2
    transfer_syntax_uid: str | None = None
    compression_type: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_instance_uid: str | None = None
    study_date: str | None = None  # as written in the source, possibly malformed
    study_description: str | None = None
    accession_number: str | None = None
    series_instance_uid: str | None = None
    series_number: int | None = None
    series_date: str | None = None
    modality: str | None = None
    series_description: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    instance_number: int | None = None
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    extra_json: str | None = None  # kind-specific facts (catalog keys, JP2 header) the importer needs
    procedure_date: dt.date | None = None  # the partition this file belongs to (see dates.py)
    date_source: str | None = None  # study_date | series_date | file_mtime | partitions_start

    @classmethod
    def columns_(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclasses.dataclass(frozen=True)
class SendAs:
    """The patient identity an upload writes into the DICOM it streams to Orthanc (never into the NAS file):
    the PatientID Orthanc keys the patient by, the Issuer of Patient ID (0010,0021), and the NAS's own ID in
    Other Patient IDs Sequence (0010,1002), so the original stays readable in the PACS."""

    patient_id: str
    issuer: str
    original_id: str
    original_issuer: str

    def attributes(self) -> dict[str, object]:
        """DICOM keyword -> value, the sequence as a list of item dicts."""
        return {"PatientID": self.patient_id, "IssuerOfPatientID": self.issuer,
                "OtherPatientIDsSequence": [{"PatientID": self.original_id, "IssuerOfPatientID": self.original_issuer,
                                             "TypeOfPatientID": "TEXT"}]}


class ScanCache(ABC):
    """What earlier runs already read: lets a source skip re-parsing files whose change token is unchanged."""

    # A bulk cache (index/walk_cache.py) matches a walk in SQL: the source offers it every file it walked and
    # parses only what ``unmatched`` hands back. The matched files' records never pass through Python, nor are
    # they copied: the merge reads them from the scan cache file (index/inventory.py new_rows_sql).
    bulk: bool = False

    @abstractmethod
    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        """Given {file_path: change_token}, return the cached records whose token still matches."""

    def offer(self, folders: Sequence[str], names: Sequence[str], sizes: Sequence[int],
              mtimes: Sequence[int]) -> None:
        """Walked files as columns, one item per file: its folder and name (stored forms), size and mtime_ns; the
        path is folder/name and the change token size-mtime_ns (bulk caches only)."""
        raise NotImplementedError

    def unmatched(self, batch_size: int) -> Iterator[list[tuple[str, int, int]]]:
        """(file_path, size, mtime_ns) of the offered files whose token the cache does not hold, in batches.
        Called once, after the last offer (bulk caches only)."""
        raise NotImplementedError


class NoCache(ScanCache):
    def lookup(self, keys: Mapping[str, str]) -> dict[str, FileRecord]:
        return {}


class NasSource(ABC):
    """One NAS device. Implementations: ``dicom_folder`` and ``firebird_jpeg2000``."""

    kind: str

    def __init__(self, nas_id: str, root: Path):
        self.nas_id = nas_id
        self.root = Path(root)
        # After a scan: (stored path, scope) of what could not be read (a listing or stat that kept failing, a
        # folder refused); scope is "tree" or "folder" (nas/walk.py). Its known rows stay as they were (not deleted).
        self.unread: list[tuple[str, str]] = []

    @abstractmethod
    def check_available(self) -> None:
        """Raise ConfigError (one sentence) if the NAS cannot be read now: unmounted root, catalog missing..."""

    @abstractmethod
    def scan(self, cache: ScanCache, batch_size: int = 2000,
             folders: Sequence[str] | None = None) -> Iterator[list[FileRecord]]:
        """Walk the NAS read-only and yield batches of records, every file exactly once.

        ``folders`` (when the kind ``has_folders``): only the files directly in those folders (relative paths, ''
        is the root), not their subfolders; None is the whole NAS.
        ``procedure_date``/``date_source`` may be left empty: the caller assigns partitions.
        """

    @abstractmethod
    def upload_body(self, record: FileRecord, send_as: SendAs | None = None) -> UploadBody:
        """What to send to Orthanc for this record: a DICOM Part 10 file as a streamed body (nas/body.py),
        built without reading the file's content into memory (never modifies the NAS). With ``send_as``, the
        DICOM carries that patient identity instead of the file's own (its ID domain, or a decision)."""

    def dicom_bytes(self, record: FileRecord, send_as: SendAs | None = None) -> bytes:
        """The same, in memory: for checks and tests on small files."""
        return self.upload_body(record, send_as).read_all()


# -- settings every NAS has (its block in pacs.yaml) --------------------------------------------------------

NAS_ID_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdDomain(StrictModel):
    """A NAS whose PatientIDs are its own numbering (another vendor, an old archive): Orthanc receives
    ``prefix + ID`` with Issuer of Patient ID ``issuer``, and the NAS's ID in Other Patient IDs Sequence."""

    issuer: str = Field(min_length=1, max_length=64, pattern=r"^[^\\\x00-\x1f]*$")
    prefix: str = Field(default="", max_length=16, pattern=r"^[^\\\x00-\x1f]*$")


class NasSettings(StrictModel):
    """The settings every NAS has, whatever its kind (one entry of pacs.yaml's ``nas:`` list); each kind's
    model extends it (nas/<kind>/settings.py)."""

    id: str = Field(pattern=NAS_ID_PATTERN)
    root: Path
    # First procedure date the daily partitions cover; older or undated files fall back (see dates.py).
    partitions_start: dt.date = dt.date(2000, 1, 1)
    # Files whose size and mtime are younger than this are still being written: they wait a run.
    settle_seconds: float = 0.0
    # The watch's second look at a new file, this long after the first, within the tick that saw it; 0: on the
    # next tick, as before (nas/settle.py). A file that changes after its report is reported again.
    watch_settle_seconds: float = Field(default=1.0, ge=0, le=10)
    # Automation (defs/sensors.py, defs/schedules.py).
    sensor_interval_seconds: int = Field(default=60, ge=5)
    incremental_cron: str = "*/15 * * * *"
    reconciliation_cron: str = "0 2 * * *"
    # The NAS's patient ID domain: who issued its IDs, and how they appear in the PACS (docs/design.md).
    id_domain: IdDomain | None = None


# -- the kind registry entry ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KindCheck:
    """A check a kind adds to its NAS graph, as a plain function: ``run(nas, stored_files, client)`` returns
    ``(passed, metadata)``. ``on`` names the asset it checks (``orthanc_instances`` or ``dicom_index``).

    A kind never reads the index itself (nas/ sits below index/): ``stored_files(file_format,
    transfer_syntax_uid, limit)`` is the index's query, handed in by the pipeline, and returns
    ``(file_path, orthanc_instance_id)`` of this NAS's files in Orthanc (a spread sample unless limit=0)."""

    name: str
    on: str
    description: str
    run: Callable[..., tuple[bool, dict]]


@dataclasses.dataclass(frozen=True)
class NasKind:
    name: str  # the ``kind:`` value in pacs.yaml
    settings: type[NasSettings]  # its pydantic model (with ``kind: Literal[name]``)
    build_source: Callable[[NasSettings], NasSource]
    # How the folder watch dates a new file (root, rel, size, mtime_ns) -> (study_date, series_date), or
    # None when only the kind's catalog knows a file's date: the sensor then asks for the range it spans.
    read_dates: Callable[[str, str, int, int], tuple[str | None, str | None]] | None = None
    checks: tuple[KindCheck, ...] = ()

    @property
    def has_folders(self) -> bool:
        """The one capability flag for folders: the kind's files sit in folders that say where new files are, so
        the watch dates a new file by reading it and ``scan(folders=...)`` walks only those folders. A kind whose
        catalog says where files are (firebird_jpeg2000) has none: every scan is whole."""
        return self.read_dates is not None
