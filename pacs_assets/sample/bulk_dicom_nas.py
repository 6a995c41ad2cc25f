"""A big plain-DICOM NAS, fast: for benchmarks and scale tests (invented patients only)."""

from __future__ import annotations

import datetime as dt
import os
from datetime import date
from pathlib import Path

import numpy as np

from pacs_assets.sample.dicom_nas import CT_IMAGE, _ct, _dataset, _encode, _phantom, _Study, _uid


def make_bulk_dicom_nas(root: Path, n_files: int, *, seed: int = 0, files_per_series: int = 100,
                        days: int = 30, start_date: date = date(2024, 3, 1)) -> int:
    """Write ``n_files`` small valid CT files (64x64, ~9 KB) fast; returns the number written.

    Layout ``root/<PatientID>/<StudyDate>_CT_<Accession>/S001/IM<n>.dcm``: one series per study, two
    studies per patient, series ``k`` dated ``start_date + k % days``. One template is encoded with
    pydicom; every file is that template with its fixed-width fields (UIDs, dates, IDs) overwritten in
    place, so nothing grows with ``n_files`` and no Dataset is built per file.
    """
    root = Path(root)
    st = _Study(patient_id="#PID######", patient_name="#NAME#############", charset=None, sex="O",
                birth_date="19700101", folder="", uid=_uid("study"), modality="CT", description="Thorax",
                accession="#ACC######", real_date=start_date, study_date="#STUDYD#", series_date="#STUDYD#")
    ds = _ct(_dataset(st, _uid("series"), 1, "Axial 1mm", 1, _uid("sop"), CT_IMAGE,
                      _phantom(np.random.default_rng(seed), 64, 0.0, "CT")), 0.0, 1.0, 0.7)
    # Numeric placeholders for IS/DS (pydicom converts those); both are absent from the rest of the header.
    ds.InstanceNumber, ds.SliceLocation = "987651", "-98765.4"
    ds.ImagePositionPatient = ["-22.40", "-22.40", "-98765.4"]
    buf = bytearray(_encode(ds))
    header = bytes(buf[: buf.rfind(b"\xe0\x7f\x10\x00")])  # search placeholders before the Pixel Data only

    def at(placeholder: str) -> tuple[int, list[int]]:
        needle, found, i = placeholder.encode(), [], -1
        while (i := header.find(needle, i + 1)) >= 0:
            found.append(i)
        if not found:
            raise RuntimeError(f"placeholder {placeholder!r} not found in the bulk template")
        return len(needle), found

    fields = {name: at(ph) for name, ph in [
        ("study_uid", st.uid), ("series_uid", ds.SeriesInstanceUID), ("sop_uid", ds.SOPInstanceUID),
        ("for_uid", ds.FrameOfReferenceUID), ("pid", st.patient_id), ("name", st.patient_name),
        ("acc", st.accession), ("date", "#STUDYD#"), ("inst", "987651"), ("z", "-98765.4")]}

    def patch(name: str, value: str) -> None:
        raw = value.encode()
        width, offsets = fields[name]
        if len(raw) != width:  # same length as the placeholder, or every later offset would move
            raise ValueError(f"bulk field {name} = {value!r} does not fit its {width} bytes (too many files?)")
        for off in offsets:
            buf[off: off + width] = raw

    written = 0
    for k in range(-(-n_files // files_per_series)):  # one series (and study) at a time
        pid, day = f"BLK{seed % 100:02d}{k // 2:05d}", start_date + dt.timedelta(days=k % days)
        da, acc = day.strftime("%Y%m%d"), f"A{seed % 100:02d}{k:07d}"
        for name, value in [("study_uid", _uid(seed, "bulk-study", k)), ("series_uid", _uid(seed, "bulk-series", k)),
                            ("for_uid", _uid(seed, "bulk-for", k)), ("pid", pid), ("acc", acc), ("date", da),
                            ("name", f"Bulk^Patient{k // 2:06d}")]:
            patch(name, value)
        folder = root / pid / f"{da}_CT_{acc}" / "S001"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(min(files_per_series, n_files - written)):
            patch("sop_uid", _uid(seed, "bulk-sop", k, j))
            patch("inst", f"{j + 1:<6d}")  # IS and DS may be padded with spaces
            patch("z", f"{-(j % 10000) * 1.0:8.1f}")
            fd = os.open(folder / f"IM{j + 1:06d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, buf)
            finally:
                os.close(fd)
            written += 1
    return written
