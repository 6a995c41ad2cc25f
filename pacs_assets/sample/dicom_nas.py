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
import hashlib
import io
import os
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from pacs_assets.nas.base import FAILED, OK, SKIPPED

DUPLICATE = "duplicate"  # valid DICOM whose SOP Instance UID an earlier path (sorting first) already holds

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"


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

    def paths(self, status: str) -> list[str]:
        return sorted(p for p, s in self.expected.items() if s == status)


def _uid(*parts: object) -> str:
    """A deterministic UUID-derived UID (PS3.5 B.2, root 2.25), always exactly 44 characters.

    pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and returns a random
    UUID, and with a prefix it makes a 64-character non-UUID number: neither fits, so derive it here.
    """
    raw = bytearray(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest())
    raw[0] |= 0x80  # top bit set: the integer always has 39 digits, so every UID has the same length
    return f"2.25.{uuid.UUID(bytes=bytes(raw), version=4).int}"


@dataclass
class _Study:
    """One study as the generator plans it; ``study_date``/``series_date`` are written as is (None: absent)."""

    patient_id: str
    patient_name: str
    charset: str | list[str] | None
    sex: str
    birth_date: str
    folder: str  # "<PatientFolder>/<StudyFolder>"
    uid: str
    modality: str
    description: str
    accession: str
    real_date: date  # the day it really happened (file mtimes)
    study_date: str | None
    series_date: str | None


# (PatientName, SpecificCharacterSet, patient folder prefix); the first three are the charset cases.
_PATIENTS = [
    ("Müller^Jürgen", "ISO_IR 100", "Müller Jürgen"),  # Latin-1; folder has a space and umlauts
    ("Παπαδοπούλου^Ελένη", "ISO_IR 192", "PAPADOPOULOU_ELENI"),  # UTF-8 (Greek)
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "YAMADA_TAROU"),  # PS3.5 H.3.1
    ("Doe^Jane", None, "DOE_JANE"),
    ("Smith^John^A", None, "SMITH_JOHN"),
    ("Okafor^Chidi", None, "OKAFOR_CHIDI"),
    ("Kowalski^Anna", None, "KOWALSKI_ANNA"),
    ("Nguyen^Van^Minh", None, "NGUYEN_VAN"),
]


def _phantom(rng: np.random.Generator, size: int, z: float, modality: str) -> np.ndarray:
    """A noisy cross-section: air, a body ellipse with a bony centre (CT stored values = HU + 1024)."""
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    r = np.hypot(xx / (0.85 - abs(z) / 2000), yy / 0.65)
    if modality == "CT":
        hu = np.where(r < 1, 40.0, -1000.0)
        hu[(r > 0.85) & (r < 1)] = -100.0  # subcutaneous fat
        hu[np.hypot(xx, yy + 0.3) < 0.12] = 700.0  # spine
        values = hu + 1024 + rng.normal(0, 12, hu.shape)
    else:
        values = np.where(r < 1, 500 + 200 * np.cos(4 * r), 0) + np.abs(rng.normal(0, 8, r.shape))
    return np.clip(values, 0, 4095).astype(np.uint16)  # 12 bits stored


def _ds_text(value: float) -> str:
    return f"{value:.2f}"


def _dataset(st: _Study, series_uid: str, series_no: int, series_desc: str, inst_no: int,
             sop_uid: str, sop_class: str, pixels: np.ndarray) -> Dataset:
    """The patient/study/series/image modules shared by every instance; modality fields come after."""
    ds = Dataset()
    if st.charset:
        ds.SpecificCharacterSet = st.charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    # Odd dates are written unvalidated: pydicom would warn about exactly what we want on disk.
    for keyword, value in (("StudyDate", st.study_date), ("SeriesDate", st.series_date),
                           ("AcquisitionDate", st.series_date), ("ContentDate", st.series_date)):
        if value is not None:
            ds.add(DataElement(keyword, "DA", value, validation_mode=config.IGNORE))
    series_time = f"08{30 + series_no % 30:02d}"
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "082955", f"{series_time}00", f"{series_time}{inst_no % 60:02d}"
    ds.AccessionNumber = st.accession
    ds.Modality = st.modality
    ds.Manufacturer = "SAMPLE MEDICAL"
    ds.InstitutionName = "Sample General Hospital"
    ds.ReferringPhysicianName = "Weber^Anna"
    ds.StudyDescription, ds.SeriesDescription = st.description, series_desc
    ds.PatientName, ds.PatientID = st.patient_name, st.patient_id
    ds.PatientBirthDate, ds.PatientSex = st.birth_date, st.sex
    ds.BodyPartExamined = "CHEST" if st.modality == "CT" else "HEAD"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = st.uid, series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "1", series_no, inst_no, 1
    ds.FrameOfReferenceUID = _uid("for", series_uid)
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape[-2:])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def _ct(ds: Dataset, z: float, thickness: float, spacing: float) -> Dataset:
    ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime = "120", 210, 500
    ds.ConvolutionKernel, ds.ScanOptions = "B30f", "HELICAL MODE"
    ds.SliceThickness, ds.PixelSpacing = _ds_text(thickness), [_ds_text(spacing)] * 2
    ds.ImagePositionPatient = [_ds_text(-spacing * ds.Columns / 2), _ds_text(-spacing * ds.Rows / 2), _ds_text(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds_text(z)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _mr(ds: Dataset, z: float, thickness: float, spacing: float) -> Dataset:
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
    ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime = "2D", "4000", "90"
    ds.MagneticFieldStrength, ds.ImagingFrequency, ds.EchoTrainLength = "1.5", "63.6", 15
    ds.SliceThickness, ds.SpacingBetweenSlices = _ds_text(thickness), _ds_text(thickness)
    ds.PixelSpacing = [_ds_text(spacing)] * 2
    ds.ImagePositionPatient = [_ds_text(-spacing * ds.Columns / 2), _ds_text(-spacing * ds.Rows / 2), _ds_text(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds_text(z)
    return ds


def _enhanced_mr(ds: Dataset, frames: int, thickness: float, spacing: float) -> Dataset:
    """Turn a dataset holding ``frames`` frames into a (minimal) Enhanced MR multi-frame instance."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = frames
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [_ds_text(spacing)] * 2
    shared.PixelMeasuresSequence[0].SliceThickness = _ds_text(thickness)
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(frames):
        item, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = ["-40.00", "-40.00", _ds_text(i * thickness)]
        content.StackID, content.InStackPositionNumber, content.DimensionIndexValues = "1", i + 1, [1, i + 1]
        item.PlanePositionSequence, item.FrameContentSequence = Sequence([position]), Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return ds


def _encode(ds: Dataset, *, headerless: bool = False) -> bytes:
    buf = io.BytesIO()
    if headerless:
        # What some old modalities and export tools write: the bare dataset, implicit VR little endian,
        # no 128-byte preamble, no 'DICM', no file meta.
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    else:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        del ds.file_meta
    return buf.getvalue()


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
    if not os.access(root / sp["no_permission"], os.R_OK):
        w.m.expected[sp["no_permission"]] = FAILED
        w.m.sop_instance_uids.discard(_uid(seed, "sop", "locked", 1))
        del w.m.procedure_date_of[sp["no_permission"]]

    w.m.procedure_dates = set(w.m.procedure_date_of.values())
    return w.m
