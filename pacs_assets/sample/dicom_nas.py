"""Sample NAS of kind ``dicom_folder``: a small tree full of real-world traps, and a fast bulk tree.

``make_dicom_nas`` writes a few invented patients' CT and MR studies as
``root/<PatientFolder>/<StudyFolder>/<SeriesFolder>/<file>`` plus every awkward case an indexer meets
on a real NAS (headerless, corrupt and truncated files, junk, odd charsets and dates, duplicates,
symlink loops, an unreadable folder) and returns a ``SampleManifest`` saying what a correct indexer
should conclude for each path. The manifest is returned, never written into the NAS.

``make_bulk_dicom_nas`` writes many small valid CT files for benchmarks by byte-patching one template.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pacs_assets.nas.base import FAILED, OK, SKIPPED
from pacs_assets.sample.dicom_datasets import (  # noqa: F401 - CT_IMAGE & co. are the sample's vocabulary
    _PATIENTS,
    CT_IMAGE,
    ENHANCED_MR_IMAGE,
    MR_IMAGE,
    _ct,
    _dataset,
    _encode,
    _enhanced_mr,
    _mr,
    _phantom,
    _Study,
    _uid,
)

DUPLICATE = "duplicate"  # valid DICOM whose SOP Instance UID an earlier path (sorting first) already holds



@dataclass
class SampleManifest:
    """What a correct indexer should conclude about a sample NAS. Paths are relative POSIX strings.

    ``expected`` covers every file and symlink created (directories are not listed). Of several files
    holding the same SOP instance, the path that sorts first is 'ok' and the others 'duplicate'.
    ``procedure_date_of`` gives, for every 'ok'/'duplicate' file, the date a correct indexer assigns:
    a plausible StudyDate, else a valid SeriesDate, else the file's mtime (set to noon local time of
    the day the study really happened). ``procedure_dates`` is the set of those dates.
    """

    root: Path
    expected: dict[str, str] = field(default_factory=dict)
    sop_instance_uids: set[str] = field(default_factory=set)
    patients: dict[str, str] = field(default_factory=dict)  # PatientID -> PatientName as decoded
    procedure_dates: set[date] = field(default_factory=set)
    special: dict[str, str] = field(default_factory=dict)  # case name -> path (always a key of expected)
    procedure_date_of: dict[str, date] = field(default_factory=dict)
    demographics: dict[str, tuple] = field(default_factory=dict)  # PatientID -> (name, birth date, sex)

    def paths(self, status: str) -> list[str]:
        return sorted(p for p, s in self.expected.items() if s == status)


def _noon(day: date) -> float:
    return dt.datetime.combine(day, dt.time(12)).timestamp()  # local time, as a NAS shows it


class _Writer:
    """Writes files under root and records what the manifest should say about each."""

    def __init__(self, root: Path):
        self.root = root
        self.m = SampleManifest(root=root)

    def put(self, rel: str, data: bytes, status: str, day: date) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (_noon(day), _noon(day)))
        self.m.expected[rel] = status
        return rel

    def instance(self, rel: str, ds: Dataset, st: _Study, *, headerless: bool = False) -> str:
        self.put(rel, _encode(ds, headerless=headerless), OK, st.real_date)
        self.m.sop_instance_uids.add(ds.SOPInstanceUID)
        self.m.patients[st.patient_id] = st.patient_name
        self.m.demographics.setdefault(st.patient_id, (st.patient_name, st.birth_date, st.sex))
        self.m.procedure_date_of[rel] = st.real_date
        return rel

    def symlink(self, rel: str, target: str) -> str:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, self.root / rel)
        self.m.expected[rel] = SKIPPED  # an indexer must not follow links out of (or around) the tree
        return rel


def make_dicom_nas(root: Path, *, patients: int = 6, seed: int = 0,
                   start_date: date = date(2024, 3, 1), days: int = 5) -> SampleManifest:
    """Write a realistic ``dicom_folder`` NAS under ``root`` (deterministic for ``seed``); see module doc."""
    if patients < 4:
        raise ValueError("make_dicom_nas needs at least 4 patients (three charset cases and an ASCII one).")
    root = Path(root)
    rnd, nrng = random.Random(seed), np.random.default_rng(seed)
    w = _Writer(root)
    sp = w.m.special

    # Plan: patient i has 1 + i % 2 studies, alternating CT and MR, dates cycling over `days`.
    studies: list[_Study] = []
    pids: list[str] = []
    for i in range(patients):
        name, charset, folder = _PATIENTS[i] if i < len(_PATIENTS) else (f"Test^Patient{i + 1}", None, f"TEST_{i + 1}")
        pid = f"S{seed}-{i + 1:05d}"
        pids.append(pid)
        birth = f"{rnd.randint(1935, 2010)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
        patient = dict(patient_id=pid, patient_name=name, charset=charset, sex=rnd.choice("FM"), birth_date=birth)
        for _ in range(1 + i % 2):
            day = start_date + dt.timedelta(days=len(studies) % days)
            modality = "CT" if len(studies) % 2 == 0 else "MR"
            desc = "Thorax nativ" if modality == "CT" else "Schädel nativ"
            da = day.strftime("%Y%m%d")
            studies.append(_Study(**patient, folder=f"{folder} {pid}" if i == 0 else f"{pid}_{folder}",
                                  uid=_uid(seed, "study", len(studies)), modality=modality, description=desc,
                                  accession=f"ACC{seed}{len(studies) + 1:06d}", real_date=day,
                                  study_date=da, series_date=da))
    for st in studies:
        st.folder += f"/{st.study_date}_{st.modality}_{st.description.split()[0]}"

    # Write every planned study: CT 2 series (4 + 3 slices, 64x64), MR 1 series (3 slices, 32x32).
    first_of: dict[str, list[str]] = {}  # study uid -> its file paths, in order
    first_file: dict[str, str] = {}  # patient id -> its first file
    for s_idx, st in enumerate(studies):
        series = [(1, "Axial 3mm", 4), (2, "Axial 1mm", 3)] if st.modality == "CT" else [(1, "T2 TSE tra", 3)]
        for series_no, series_desc, n in series:
            series_uid = _uid(seed, "series", s_idx, series_no)
            if st.patient_name.startswith("Müller") and series_no == 2:  # spaces and non-ASCII in both names
                series_folder, file_fmt = f"{st.folder}/Serie 2 hochauflösend", "Lunge hochauflösend {:04d}.dcm"
            else:
                series_folder = f"{st.folder}/S{series_no:03d}_{series_desc.replace(' ', '_')}"
                file_fmt = "IM{:04d}.dcm"
            for k in range(1, n + 1):
                z = -k * 3.0
                size = 64 if st.modality == "CT" else 32
                ds = _dataset(st, series_uid, series_no, series_desc, k, _uid(seed, "sop", s_idx, series_no, k),
                              CT_IMAGE if st.modality == "CT" else MR_IMAGE, _phantom(nrng, size, z, st.modality))
                ds = _ct(ds, z, 3.0, 0.7) if st.modality == "CT" else _mr(ds, z, 3.0, 0.9)
                rel = w.instance(f"{series_folder}/{file_fmt.format(k)}", ds, st)
                first_of.setdefault(st.uid, []).append(rel)
                first_file.setdefault(st.patient_id, rel)
    sp["latin1"], sp["utf8"], sp["japanese"] = (first_file[pid] for pid in pids[:3])  # _PATIENTS order
    sp["non_ascii_path"] = next(p for p in first_of[studies[0].uid] if "hochauflösend" in p)

    mr = next(st for st in studies if st.modality == "MR")
    cts = [st for st in studies if st.modality == "CT" and st.charset is None]
    ct_a, ct_b = cts[0], cts[-1]

    # Multi-frame: one Enhanced MR instance of 5 frames in its own series.
    frames = np.stack([_phantom(nrng, 32, i * 3.0, "MR") for i in range(5)])
    ds = _dataset(mr, _uid(seed, "series", "mf"), 90, "Enhanced T1 3D", 1, _uid(seed, "sop", "mf"),
                  ENHANCED_MR_IMAGE, frames)
    sp["multiframe"] = w.instance(f"{mr.folder}/S090_Enhanced_T1_3D/IM0001.dcm", _enhanced_mr(ds, 5, 3.0, 0.9), mr)

    def extra_ct(st: _Study, tag: str, series_no: int, k: int) -> Dataset:
        ds = _dataset(st, _uid(seed, "series", tag), series_no, "Axial 5mm", k, _uid(seed, "sop", tag, k),
                      CT_IMAGE, _phantom(nrng, 64, -k * 5.0, "CT"))
        return _ct(ds, -k * 5.0, 5.0, 0.7)

    # Headerless: an old export without preamble/meta, one file with an extension and one without.
    hl = f"{ct_a.folder}/S070_Export"
    sp["headerless"] = w.instance(f"{hl}/IM0001.dcm", extra_ct(ct_a, "hl", 70, 1), ct_a, headerless=True)
    sp["headerless_no_ext"] = w.instance(f"{hl}/IM0002", extra_ct(ct_a, "hl", 70, 2), ct_a, headerless=True)

    # Duplicate: an exact byte copy of a valid file in a "copy" folder that sorts after the original.
    original = first_of[ct_a.uid][0]
    copy = original.replace("/S001_Axial_3mm/", "/S001_Axial_3mm_copy/")
    w.put(copy, (root / original).read_bytes(), DUPLICATE, ct_a.real_date)
    w.m.procedure_date_of[copy] = ct_a.real_date
    sp["duplicate"] = copy

    # Truncated: a valid file cut in the middle of its Pixel Data, like an interrupted copy.
    data = _encode(extra_ct(ct_b, "trunc", 71, 1))
    sp["truncated"] = w.put(f"{ct_b.folder}/S071_Recon/IM0001.dcm", data[: len(data) - 64 * 64], FAILED,
                            ct_b.real_date)
    # Corrupt: preamble and 'DICM', then garbage.
    sp["corrupt"] = w.put(f"{ct_b.folder}/S071_Recon/IM0002.dcm", bytes(128) + b"DICM" + rnd.randbytes(3000),
                          FAILED, ct_b.real_date)
    sp["empty"] = w.put(f"{ct_b.folder}/S071_Recon/IM0003.dcm", b"", SKIPPED, ct_b.real_date)

    # Odd dates, each in its own one-image CT study of an ASCII patient. A missing date has no date at
    # all (fallback: mtime); a malformed one keeps a valid SeriesDate; a future one is wrong everywhere
    # (a modality with its clock mis-set), so the fallback is again the mtime.
    day = start_date + dt.timedelta(days=days - 1)
    for n, (case, study_date, series_date) in enumerate(
            [("missing_date", None, None), ("malformed_date", "20241345", day.strftime("%Y%m%d")),
             ("future_date", "21990101", "21990101")]):
        st = replace(cts[n % len(cts)], uid=_uid(seed, "study", case), accession=f"ACC{seed}9{n:05d}",
                     real_date=day, study_date=study_date, series_date=series_date, description="Abdomen nativ")
        st.folder = f"{st.folder.split('/')[0]}/{study_date or 'NODATE'}_CT_Abdomen"
        sp[case] = w.instance(f"{st.folder}/S001_Axial_5mm/IM0001.dcm", extra_ct(st, case, 1, 1), st)

    # Junk every NAS collects.
    rand = rnd.randbytes
    readme = b"CT export share - do not delete.\r\nQuestions: radiology IT, ext. 4711\r\n"
    w.put("README.txt", readme, SKIPPED, start_date)
    w.put(".DS_Store", b"\x00\x00\x00\x01Bud1" + rand(2040), SKIPPED, start_date)
    w.put(f"{mr.folder.split('/')[0]}/.DS_Store", b"\x00\x00\x00\x01Bud1" + rand(1016), SKIPPED, start_date)
    w.put(f"{first_of[ct_a.uid][0].rsplit('/', 1)[0]}/Thumbs.db", bytes.fromhex("d0cf11e0a1b11ae1") + rand(4088),
          SKIPPED, ct_a.real_date)  # OLE compound file magic, as Windows writes
    w.put(f"{ct_b.folder}/Foto Befund.jpg", rand(5000), SKIPPED, ct_b.real_date)

    # Links: a directory symlink to an ancestor (a walk that follows links never ends) and a dangling one.
    sp["symlink_loop"] = w.symlink(f"{mr.folder}/up", "..")
    sp["dangling_symlink"] = w.symlink(f"{ct_b.folder}/S071_Recon/IM0004.dcm", "../../../missing/IM0004.dcm")

    # A folder with mode 000 holding one valid file (root still reads it; anyone else cannot).
    locked = f"{ct_b.folder}/S072_Locked"
    sp["no_permission"] = w.instance(f"{locked}/IM0001.dcm", extra_ct(ct_b, "locked", 72, 1), ct_b)
    os.chmod(root / locked, 0)
    if not os.access(root / sp["no_permission"], os.R_OK):  # a folder that cannot be listed has no rows
        del w.m.expected[sp["no_permission"]]  # (the run reports it: folders_not_read, every_folder_read)
        w.m.sop_instance_uids.discard(_uid(seed, "sop", "locked", 1))
        del w.m.procedure_date_of[sp["no_permission"]]

    w.m.procedure_dates = set(w.m.procedure_date_of.values())
    return w.m
