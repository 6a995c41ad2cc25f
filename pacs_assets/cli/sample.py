"""`pacs sample`: sample NAS devices and a matching configuration for the demo and the tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from pacs_assets.sample.dicom_nas import make_dicom_nas
from pacs_assets.sample.identity_cases import make_archive_nas


def sample_start() -> dt.date:
    """The first procedure date of the sample's studies."""
    return dt.date.today() - dt.timedelta(days=14)


def make_sample_site(out: Path, *, orthanc_url: str, patients: int = 6, seed: int = 0,
                     firebird: bool = True, firebird_password_env: str = "FIREBIRD_PASSWORD",
                     identity_cases: bool = True) -> Path:
    """Create sample NAS devices under ``out`` and ``out/pacs.yaml`` naming them. Returns the config path."""
    out.mkdir(parents=True, exist_ok=True)
    # Recent procedure dates, and partitions from a few weeks back: the demo's first "materialize all"
    # stays small, and today's partition (what the sensor and schedules work on) is right there.
    start = sample_start()
    partitions_start = (dt.date.today() - dt.timedelta(days=60)).isoformat()
    ct = make_dicom_nas(out / "ct_nas", patients=patients, seed=seed, start_date=start)
    nas = [{"id": "ct_nas", "kind": "dicom_folder", "root": "ct_nas", "partitions_start": partitions_start}]
    if identity_cases:  # an old archive from another vendor whose patient IDs meet ct_nas's (sample/identity_cases.py)
        make_archive_nas(out / "archive_nas", ct, start_date=start, seed=seed)
        nas.append({"id": "archive_nas", "kind": "dicom_folder", "root": "archive_nas",
                    "partitions_start": partitions_start})
    if firebird:
        try:
            from pacs_assets.sample.firebird_nas import make_firebird_nas
        except ImportError:  # the Firebird NAS kind is optional in a trimmed install
            make_firebird_nas = None
        if make_firebird_nas is not None:
            import os
            import secrets

            password = os.environ.setdefault(firebird_password_env, secrets.token_urlsafe(12))
            env_file = out / "firebird.env"  # the demo sources it; never committed, readable by us only
            env_file.write_text(f"{firebird_password_env}={password}\n", encoding="utf-8")
            env_file.chmod(0o600)
            for i, nas_id in enumerate(("endo_nas", "derm_nas")):
                make_firebird_nas(out / nas_id, nas_id=nas_id, patients=max(patients // 2, 4), seed=seed + 1 + i,
                                  start_date=start, password=password)
                nas.append({"id": nas_id, "kind": "firebird_jpeg2000", "root": nas_id,
                            "partitions_start": partitions_start,
                            "firebird": {"database": "catalog.fdb", "password_env": firebird_password_env}})
    config = {
        "nas": nas,
        "orthanc": {"url": orthanc_url},
        "index": {"path": "index.duckdb"},
    }
    path = out / "pacs.yaml"
    path.write_text("# Sample site made by `pacs sample`; paths are relative to this file.\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
