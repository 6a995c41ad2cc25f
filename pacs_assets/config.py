"""The site configuration: one YAML file naming the NAS devices, the Orthanc PACS and the DuckDB index.

The file's path comes from ``PACS_CONFIG``; without it, ``./pacs.yaml`` and then
``/etc/pacs_assets/pacs.yaml`` are tried. Every mistake in it becomes a ``ConfigError`` whose
message is one sentence naming the file and the key, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import Field, ValidationError

from pacs_assets.config_file import DEFAULT_CONFIG_PATHS, config_path  # noqa: F401 (re-exported)
from pacs_assets.errors import ConfigError
from pacs_assets.nas.base import NAS_ID_PATTERN, NasSettings, StrictModel

# Re-exported: the settings models of the NAS kinds, where callers have always found them.
from pacs_assets.nas.dicom_folder.settings import DicomFolderNas
from pacs_assets.nas.firebird_jpeg2000.settings import (
    FirebirdCatalog,
    FirebirdJpeg2000Nas,
)
from pacs_assets.nas.registry import KINDS
from pacs_assets.orthanc.orthanc_settings import OrthancSettings


class _Strict(StrictModel):
    pass


# A union built from the registry: the `X | Y` form cannot be built from a tuple, so Union stays (noqa).
NasConfig = Annotated[Union[tuple(kind.settings for kind in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007
KIND_NAMES = ", ".join(KINDS)


class IndexConfig(_Strict):
    path: Path


class PrivacyConfig(_Strict):
    # Patient names, IDs and birth dates stay out of logs and metadata unless a site says otherwise.
    log_patient_data: bool = False


class IdentityConfig(_Strict):
    # Where `pacs identity decide` keeps its decisions (default: identity_decisions.jsonl beside the index).
    # Not in the index, so a rebuild keeps them; a shared path serves NAS devices indexed on several machines.
    decisions_path: Path | None = None


class PacsConfig(_Strict):
    nas: list[NasConfig] = Field(min_length=1)
    orthanc: OrthancSettings = OrthancSettings()
    index: IndexConfig
    identity: IdentityConfig = IdentityConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    timezone: str = "UTC"
    source_file: Path | None = None

    def nas_by_id(self, nas_id: str) -> NasConfig:
        for nas in self.nas:
            if nas.id == nas_id:
                return nas
        raise ConfigError(f"No NAS with id '{nas_id}' in {self.source_file}; known: "
                          f"{', '.join(n.id for n in self.nas)}.")


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in KINDS:
            continue  # pydantic's discriminator branch, not a key the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _one_sentence(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    key = _key_path(first["loc"])
    kind = first["type"]
    if kind == "missing":
        return f"{path}: missing key '{key}'."
    if kind == "extra_forbidden":
        return f"{path}: unknown key '{key}' (check its spelling)."
    if kind == "union_tag_invalid":
        return f"{path}: '{key}.kind' must be one of {KIND_NAMES}."
    if kind == "union_tag_not_found":
        return f"{path}: missing key '{key}.kind' (one of {KIND_NAMES})."
    message = first["msg"].removeprefix("Value error, ")
    return f"{path}: key '{key}' is invalid: {message}."


def load_config(path: str | os.PathLike | None = None) -> PacsConfig:
    """Read and validate the configuration; raise ConfigError with one sentence on any mistake."""
    path = config_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} does not exist.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with keys nas, orthanc and index.")
    try:
        config = PacsConfig.model_validate({**raw, "source_file": None})
    except ValidationError as exc:
        raise ConfigError(_one_sentence(path, exc)) from None
    base = path.resolve().parent
    # Relative paths in the file are relative to the file, so a config travels with its folder.
    nas = [n.model_copy(update={"root": (base / n.root)}) if not n.root.is_absolute() else n for n in config.nas]
    index = config.index
    if not index.path.is_absolute():
        index = IndexConfig(path=base / index.path)
    identity = config.identity
    if identity.decisions_path is not None and not identity.decisions_path.is_absolute():
        identity = IdentityConfig(decisions_path=base / identity.decisions_path)
    ids = [n.id for n in nas]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: NAS id '{duplicates[0]}' is used twice; ids must be unique.")
    return config.model_copy(update={"nas": nas, "index": index, "identity": identity, "source_file": path})


__all__ = ["ConfigError", "DicomFolderNas", "FirebirdCatalog", "FirebirdJpeg2000Nas", "NasSettings", "NasConfig",
           "PacsConfig", "load_config", "NAS_ID_PATTERN"]
