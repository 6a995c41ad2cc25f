"""The ``firebird_jpeg2000`` block of pacs.yaml: where the Firebird catalog is and how to read it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pacs_assets.nas.base import NasSettings, StrictModel


class FirebirdCatalog(StrictModel):
    """Where the Firebird catalog is: embedded (a file, the default) or a server."""

    database: Path  # the .fdb file; relative paths are relative to the NAS root
    mode: Literal["embedded", "server"] = "embedded"
    host: str = "127.0.0.1"
    port: int = 3050
    user: str = "SYSDBA"
    password_env: str = "FIREBIRD_PASSWORD"  # name of the environment variable holding the password
    charset: str = "UTF8"
    # Embedded mode reads a copy of the catalog taken per scan; None = the system temp folder.
    snapshot_dir: Path | None = None


class FirebirdJpeg2000Nas(NasSettings):
    kind: Literal["firebird_jpeg2000"]
    firebird: FirebirdCatalog
    # SQL mapping the vendor schema to our attributes; None = the documented default (catalog.py).
    mapping: dict[str, str] | None = None
    # How many imported images the lossless check decodes and compares pixel for pixel (0 = all).
    lossless_check_sample: int = Field(default=25, ge=0)
