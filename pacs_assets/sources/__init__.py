"""NAS sources: one module per NAS kind behind the interface in ``base``."""

from __future__ import annotations

from pacs_assets.config import DicomFolderNas, FirebirdJpeg2000Nas, NasConfig
from pacs_assets.sources.base import FileRecord, NasSource, ScanCache


def source_for(nas: NasConfig) -> NasSource:
    """Build the source for one configured NAS."""
    if isinstance(nas, DicomFolderNas):
        from pacs_assets.sources.dicom_folder import DicomFolderSource

        return DicomFolderSource(nas.id, nas.root, settle_seconds=nas.settle_seconds)
    if isinstance(nas, FirebirdJpeg2000Nas):
        from pacs_assets.sources.firebird_jpeg2000 import FirebirdJpeg2000Source

        return FirebirdJpeg2000Source(nas.id, nas.root, catalog=nas.firebird, mapping=nas.mapping,
                                      settle_seconds=nas.settle_seconds)
    raise TypeError(f"unknown NAS kind {type(nas).__name__}")


__all__ = ["FileRecord", "NasSource", "ScanCache", "source_for"]
