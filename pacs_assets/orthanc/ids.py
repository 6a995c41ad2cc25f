"""Orthanc's own IDs of a patient, series or instance, computed here from the DICOM identifiers (the SHA-1
Orthanc computes when it stores a file), so a lookup needs no search."""

from __future__ import annotations

import hashlib


def _orthanc_id(identifiers: str) -> str:
    digest = hashlib.sha1(identifiers.encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def orthanc_instance_id(patient_id: str | None, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's deterministic ID of an instance: SHA-1 of the four identifiers, 5 groups of 8 hex digits."""
    return _orthanc_id(f"{patient_id or ''}|{study_uid}|{series_uid}|{sop_uid}")


def orthanc_patient_id(patient_id: str | None) -> str:
    """Orthanc's deterministic ID of a patient: the same, of the PatientID alone."""
    return _orthanc_id(patient_id or "")


def orthanc_series_id(patient_id: str | None, study_uid: str, series_uid: str) -> str:
    """Orthanc's deterministic ID of a series: the same, of PatientID, StudyInstanceUID and SeriesInstanceUID."""
    return _orthanc_id(f"{patient_id or ''}|{study_uid}|{series_uid}")
