"""The ``dicom_folder`` block of pacs.yaml: nothing beyond what every NAS has."""

from __future__ import annotations

from typing import Literal

from pacs_assets.nas.base import NasSettings


class DicomFolderNas(NasSettings):
    kind: Literal["dicom_folder"]
