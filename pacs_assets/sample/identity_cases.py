"""A sample NAS from another vendor (an old archive) whose patient IDs meet the CT NAS's: the identity cases.

``make_archive_nas`` writes a small ``dicom_folder`` NAS next to a ``make_dicom_nas`` one and returns which
of its files (and of the CT NAS's) a correct guard holds, and which records it only lists:

- ``other_person``: the archive numbers a different person with the CT NAS's second patient ID (other name,
  birth date and sex): both records are held (``id_shared_across_nas``);
- ``same_person``: the CT NAS's fourth patient, same name, birth date and sex: one person, merged quietly;
- ``variant``: the fifth patient's ID, its name written without the middle name: listed, not held;
- ``reused_id``: the archive gave one ID to two different people: both held (``id_reused_within_nas``).

Invented people only. With an ID domain on the archive (a prefix), the shared IDs stop colliding and only the
reused one is held.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import numpy as np

from pacs_assets.sample.dicom_datasets import MR_IMAGE, _dataset, _encode, _phantom, _Study, _uid
from pacs_assets.sample.dicom_nas import SampleManifest, _noon

REUSED_ID = "A-7001"


@dataclasses.dataclass
class IdentityManifest:
    root: Path
    files: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # case -> archive file paths
    ct_held: list[str] = dataclasses.field(default_factory=list)  # CT NAS files of the shared ID (other_person)
    patient_ids: dict[str, str] = dataclasses.field(default_factory=dict)  # case -> PatientID on the archive

    @property
    def held(self) -> set[str]:
        return set(self.files.get("other_person", [])) | set(self.files.get("reused_id", []))


def make_archive_nas(root: Path, ct: SampleManifest, *, start_date: dt.date, seed: int = 0) -> IdentityManifest:
    ids = list(ct.demographics)
    m = IdentityManifest(root=root)
    people = [("other_person", ids[1], "Weber^Klaus", "19610714", "M"),
              ("same_person", ids[3], *ct.demographics[ids[3]]),
              ("reused_id", REUSED_ID, "Fischer^Paul", "19720911", "M"),
              ("reused_id", REUSED_ID, "Hoffmann^Lena", "19880120", "F")]
    if len(ids) >= 5 and len(ct.demographics[ids[4]][0].split("^")) > 2:
        name, birth, sex = ct.demographics[ids[4]]
        people.append(("variant", ids[4], "^".join(name.split("^")[:2]).upper(), birth, sex))
    rng = np.random.default_rng(seed)
    for n, (case, pid, name, birth, sex) in enumerate(people):
        day = start_date + dt.timedelta(days=n % 5)
        st = _Study(patient_id=pid, patient_name=name, charset=None, sex=sex, birth_date=birth,
                    folder=f"{day:%Y}/{pid}_{n}", uid=_uid(seed, "archive-study", n), modality="MR",
                    description="Archiv MR", accession=f"AR{seed}{n:05d}", real_date=day,
                    study_date=day.strftime("%Y%m%d"), series_date=day.strftime("%Y%m%d"))
        series_uid = _uid(seed, "archive-series", n)
        for k in (1, 2):
            ds = _dataset(st, series_uid, 1, "T1 tra", k, _uid(seed, "archive-sop", n, k), MR_IMAGE,
                          _phantom(rng, 32, -3.0 * k, "MR"))
            rel = f"{st.folder}/IM{k:04d}.dcm"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encode(ds))
            os.utime(path, (_noon(day), _noon(day)))
            m.files.setdefault(case, []).append(rel)
        m.patient_ids[case] = pid
    shared = m.patient_ids["other_person"]
    m.ct_held = sorted(p for p in ct.procedure_date_of if p in ct.expected and _patient_of(ct, p) == shared)
    return m


def _patient_of(ct: SampleManifest, rel: str) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(ct.root / rel, stop_before_pixels=True, force=True).get("PatientID"))
    except Exception:  # noqa: BLE001 - the sample's broken files name no one
        return None
