"""The ``dicom_folder`` NAS kind: a folder tree of plain DICOM files (with or without the Part 10 header)."""

from __future__ import annotations

from pacs_assets.nas.base import NasKind
from pacs_assets.nas.dicom_folder.settings import DicomFolderNas


def _source(nas: DicomFolderNas):
    from pacs_assets.nas.dicom_folder.source import (
        DicomFolderSource,  # pydicom loads only when a source is built
    )

    return DicomFolderSource(nas.id, nas.root, settle_seconds=nas.settle_seconds)


def _read_dates(root: str, rel: str, size: int, mtime_ns: int) -> tuple[str | None, str | None]:
    from pacs_assets.nas.dicom_folder.headers import read_dicom_file

    rec = read_dicom_file("", root, rel, size, mtime_ns)
    return rec.study_date, rec.series_date


KIND = NasKind(name="dicom_folder", settings=DicomFolderNas, build_source=_source, read_dates=_read_dates)
