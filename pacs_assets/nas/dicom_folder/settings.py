"""The ``dicom_folder`` block of pacs.yaml: nothing beyond what every NAS has."""

from __future__ import annotations

from typing import Literal

from pacs_assets.nas.base import NasBase


class DicomFolderNas(NasBase):
    kind: Literal["dicom_folder"]
