"""The NAS kinds this project knows. A new kind is one subpackage of ``pacs_assets.nas`` plus one line here.

A kind's package is imported when the kind is first asked for, not when the registry is: its name is known
without it (a configuration error can list the kinds), and a process that uses one kind never loads another.
A kind's package itself defers its heavy libraries (pydicom, fdb, glymur) until a source is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from pacs_assets.nas.base import NasKind, NasSettings, NasSource

KIND_MODULES = {
    "dicom_folder": "pacs_assets.nas.dicom_folder",
    "firebird_jpeg2000": "pacs_assets.nas.firebird_jpeg2000",
}


class _Kinds(Mapping[str, NasKind]):
    """kind name -> NasKind, each kind's package imported on first access."""

    def __getitem__(self, name: str) -> NasKind:
        return importlib.import_module(KIND_MODULES[name]).KIND

    def __iter__(self) -> Iterator[str]:
        return iter(KIND_MODULES)

    def __len__(self) -> int:
        return len(KIND_MODULES)


KINDS: Mapping[str, NasKind] = _Kinds()


def kind_of(nas: NasSettings) -> NasKind:
    return KINDS[nas.kind]


def source_for(nas: NasSettings) -> NasSource:
    """Build the source for one configured NAS."""
    return kind_of(nas).build_source(nas)
