"""Shared test helpers: site configs, sample sites materialized against a real Orthanc, running a NAS's graph
in-process over all its partitions (as a single-run backfill would), and fingerprints proving a NAS was not
written. Tests import from here, never from each other or from conftest."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult

from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
from pacs_assets.sample.dicom_nas import SampleManifest, make_dicom_nas
from pacs_assets_tests.services.orthanc import OrthancServer

TODAY = dt.date.today()
SAMPLE_START = TODAY - dt.timedelta(days=12)
# One plain-DICOM NAS whose partitions start before the sample's first procedure date.
NAS = [{"id": "ct", "kind": "dicom_folder", "root": "nas",
        "partitions_start": (TODAY - dt.timedelta(days=20)).isoformat()}]


def materialize_nas(config_path: Path, nas_id: str, *, first: str | None = None, last: str | None = None,
                    raise_on_error: bool = True, instance: DagsterInstance | None = None,
                    asset_selection: list | None = None) -> ExecuteInProcessResult:
    defs = build_definitions(load_config(config_path))
    job = defs.resolve_job_def(f"{nas_id}_job")
    keys = job.partitions_def.get_partition_keys()
    return job.execute_in_process(
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
        asset_selection=asset_selection,
        tags={"dagster/asset_partition_range_start": first or keys[0],
              "dagster/asset_partition_range_end": last or keys[-1]},
    )


def step_failure_message(result: ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "expected a failed step"
    data = failures[0].step_failure_data
    if data.user_failure_data is not None:  # a dagster.Failure: its description is what the UI shows
        return data.user_failure_data.description
    error = data.error
    while error.cause is not None:
        error = error.cause
    return error.message


def check_results(result) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def write_config(path: Path, nas: list[dict], *, orthanc_url: str, index: str = "index.duckdb", **extra) -> Path:
    # No outage wait (the default waits 120 s for Orthanc to come back): a test of a dead Orthanc fails at
    # once, and the tests of the wait set it themselves.
    body = {"nas": nas, "orthanc": {"url": orthanc_url, "run_retries": 0, "retries": 1, "timeout_seconds": 10,
                                    "outage_wait_seconds": 0},
            "index": {"path": index}, **extra}
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def tree_fingerprint(root: Path) -> dict[str, tuple]:
    """Every entry under root with its size, mtime and content hash: proves a walk wrote nothing."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = None
            if p.is_symlink():
                digest = os.readlink(p)
            elif p.is_file():
                digest = hashlib.sha1(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return out


# (NAS id, sample seed, patients, first procedure date as days before today). Seed 0 and 1 use the same
# names (Müller^Jürgen, Παπαδοπούλου^Ελένη, Yamada^Tarou=山田^太郎=やまだ^たろう, ...) with other patient IDs.
TWO_NAS = (("ct", 0, 8, 12), ("mr", 1, 5, 6))


@dataclasses.dataclass
class Site:
    config: Path
    index: Path
    manifests: dict[str, SampleManifest]

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with duckdb.connect(str(self.index), read_only=True) as con:
            return con.execute(sql, list(params)).fetchall()


def build_site(workdir: Path, orthanc_url: str, nas: Sequence[tuple] = TWO_NAS, *, dicom_port: int = 4242,
               materialize: bool = True, **config_extra) -> Site:
    """Sample NAS devices under ``workdir`` and a pacs.yaml; with ``materialize`` each NAS's whole graph runs."""
    specs, manifests = [], {}
    for nas_id, seed, patients, days_ago in nas:
        manifests[nas_id] = make_dicom_nas(workdir / f"nas_{nas_id}", patients=patients, seed=seed,
                                           start_date=TODAY - dt.timedelta(days=days_ago))
        specs.append({"id": nas_id, "kind": "dicom_folder", "root": f"nas_{nas_id}",
                      "partitions_start": (TODAY - dt.timedelta(days=20)).isoformat()})
    config = write_config(workdir / "pacs.yaml", specs, orthanc_url=orthanc_url, **config_extra)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["orthanc"]["dicom_port"] = dicom_port
    config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    site = Site(config=config, index=workdir / "index.duckdb", manifests=manifests)
    if materialize:
        for nas_id in manifests:
            assert materialize_nas(config, nas_id).success, nas_id
    return site


@contextlib.contextmanager
def running_site(workdir: Path, nas: Sequence[tuple] = TWO_NAS) -> Iterator[tuple[Site, OrthancServer]]:
    """A site materialized against its own real Orthanc, which keeps running (credentials in the environment)
    until the block ends: for module-scoped fixtures, which cannot use the function-scoped ``orthanc``."""
    with OrthancServer(workdir / "orthanc").throwaway() as orthanc, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHANC_USERNAME", orthanc.username)
        mp.setenv("ORTHANC_PASSWORD", orthanc.password)
        yield build_site(workdir, orthanc.url, nas, dicom_port=orthanc.dicom_port), orthanc


def people_mixed_in_orthanc(server: OrthancServer) -> dict[str, int]:
    """{Orthanc patient ID: people} of every Orthanc patient whose studies carry different people (by the
    identity model): what a doctor must never see. Read from each study's own copy of the patient tags."""
    import requests

    from pacs_assets.identity.model import DIFFERENT, PersonRecord, compare

    studies = requests.post(f"{server.url}/tools/find", auth=server.auth, timeout=60,
                            json={"Level": "Study", "Query": {}, "Expand": True}).json()
    people: dict[str, set[PersonRecord]] = {}
    for study in studies:
        tags = study["PatientMainDicomTags"]
        people.setdefault(study["ParentPatient"], set()).add(PersonRecord.of(
            "orthanc", tags.get("PatientID"), tags.get("PatientName"), tags.get("PatientBirthDate"),
            tags.get("PatientSex")))
    mixed = {}
    for patient, records in people.items():
        records = sorted(records, key=repr)
        if any(compare(a, b)[0] == DIFFERENT for i, a in enumerate(records) for b in records[i + 1:]):
            mixed[patient] = len(records)
    return mixed


def parse_python(path: Path):
    """``ast.parse`` of a source file with the garbage collector paused: CPython 3.11 can fail with "SystemError: AST
    constructor recursion depth mismatch" when a finalizer (here: SQLAlchemy's, from an earlier test's Dagster
    instance) runs Python code in the middle of building the tree (cpython gh-106905)."""
    import ast
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"), str(path))
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def log_lines(logger: str, level: int = logging.WARNING) -> Iterator[list[str]]:
    """The messages one logger emits at ``level`` or above inside the block. Not pytest's ``caplog``: CI runs
    pytest with ``-p no:logging`` (scripts/test.sh), where that fixture does not exist."""
    lines: list[str] = []

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    target, handler = logging.getLogger(logger), _Lines(level)
    saved = target.level
    target.addHandler(handler)
    target.setLevel(min(level, saved) if saved else level)
    try:
        yield lines
    finally:
        target.removeHandler(handler)
        target.setLevel(saved)
