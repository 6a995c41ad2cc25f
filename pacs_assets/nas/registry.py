"""The NAS kinds this project knows. A new kind is one subpackage of ``pacs_assets.nas`` plus one line here."""

from __future__ import annotations

from pacs_assets.nas import dicom_folder, firebird_jpeg2000
from pacs_assets.nas.base import NasKind, NasSettings, NasSource

KINDS: dict[str, NasKind] = {kind.name: kind for kind in (
    dicom_folder.KIND,
    firebird_jpeg2000.KIND,
)}


def kind_of(nas: NasSettings) -> NasKind:
    return KINDS[nas.kind]


def source_for(nas: NasSettings) -> NasSource:
    """Build the source for one configured NAS."""
    return kind_of(nas).build_source(nas)
