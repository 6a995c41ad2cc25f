"""Sample NAS of kind ``firebird_jpeg2000``: a Firebird catalog plus JPEG 2000 files, with the traps.

``make_firebird_nas`` writes ``root/catalog.fdb`` (Firebird 3, created embedded) with tables

    PATIENTS (PAT_ID, PAT_NUMBER, PAT_LASTNAME, PAT_FIRSTNAME, PAT_BIRTHDATE, PAT_SEX)
    STUDIES  (STU_ID, PAT_ID, STU_UID, STU_DATE as text, STU_DESC, STU_ACCESSION)
    SERIES   (SER_ID, STU_ID, SER_UID, SER_NO, SER_MODALITY, SER_DESC)
    IMAGES   (IMG_ID, SER_ID, IMG_UID, IMG_NO, IMG_PATH, IMG_VERSION)

(the shape ``catalog.DEFAULT_MAPPING`` reads) and lossless JP2 files written by glymur under
``root/IMAGES/<yyyy>/<mm>/<dd>/<patient>/<study>/<series>/``, plus the awkward cases: a row whose file is
missing, a JP2 no row names, a truncated and a junk ``.jp2``, a lossy (9/7) JP2, a raw ``.j2k``
codestream, an RGB image, a Windows-style path, two rows naming one file, rows escaping the root
('../', absolute, a file or folder symlink out of the root), non-ASCII names and missing/malformed
study dates.
The targets of the escaping paths are valid JP2s in ``<root>_outside`` next to the root, so a reader
that follows them would find something. The manifest is returned, never written into the NAS.

``make_bulk_firebird_nas`` writes many catalog rows pointing to copies of one JP2, for benchmarks.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import glymur
import numpy as np

from pacs_assets.nas.base import FAILED, OK, SKIPPED
from pacs_assets.nas.firebird_jpeg2000.catalog import create_embedded_database

CATALOG = "catalog.fdb"  # at the root; pacs_assets.cli.sample names it so in the sample config
DEFAULT_PASSWORD = "masterkey"  # Firebird's traditional default; embedded mode as root does not check it

SCHEMA = (
    """CREATE TABLE PATIENTS (PAT_ID INTEGER NOT NULL PRIMARY KEY, PAT_NUMBER VARCHAR(64),
       PAT_LASTNAME VARCHAR(64), PAT_FIRSTNAME VARCHAR(64), PAT_BIRTHDATE DATE, PAT_SEX CHAR(1))""",
    """CREATE TABLE STUDIES (STU_ID INTEGER NOT NULL PRIMARY KEY, PAT_ID INTEGER REFERENCES PATIENTS,
       STU_UID VARCHAR(64), STU_DATE VARCHAR(16), STU_DESC VARCHAR(64), STU_ACCESSION VARCHAR(16))""",
    """CREATE TABLE SERIES (SER_ID INTEGER NOT NULL PRIMARY KEY, STU_ID INTEGER REFERENCES STUDIES,
       SER_UID VARCHAR(64), SER_NO INTEGER, SER_MODALITY VARCHAR(16), SER_DESC VARCHAR(64))""",
    """CREATE TABLE IMAGES (IMG_ID INTEGER NOT NULL PRIMARY KEY, SER_ID INTEGER REFERENCES SERIES,
       IMG_UID VARCHAR(64), IMG_NO INTEGER, IMG_PATH VARCHAR(1024), IMG_VERSION INTEGER)""",
)

NAMES = [("Müller", "Jürgen"), ("Øverby", "Åse"), ("Łukasiewicz", "Zofia"), ("Smith", "John"),
         ("Ñúñez", "José"), ("O'Brien", "Siobhán"), ("Dubois", "Hélène"), ("Nakamura", "Yūki")]


@dataclass
class FirebirdSampleManifest:
    """What a correct indexer should conclude about a sample Firebird NAS.

    ``expected``: every file and symlink created under the root, plus every path a catalog row names
    that is not a file under the root (missing, or behind a folder link out of it), -> status.
    ``rows``: every catalog image key (as text) -> the status of its record.
    ``special``: case name -> image key (or, for files no row names, the file path).
    """

    root: Path
    nas_id: str
    password: str
    catalog: str = CATALOG  # relative to root
    expected: dict[str, str] = field(default_factory=dict)
    rows: dict[str, str] = field(default_factory=dict)
    row_paths: dict[str, str | None] = field(default_factory=dict)  # image key -> IMG_PATH as stored
    lossy: set[str] = field(default_factory=set)  # file paths of irreversible (9/7) JP2s
    special: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # PAT_NUMBER -> DICOM person name
    study_uids: dict[int, str] = field(default_factory=dict)  # STU_ID -> STU_UID as stored (valid or not)
    procedure_date_of: dict[str, date] = field(default_factory=dict)  # file path of each 'ok' row
    outside: Path | None = None

    @property
    def procedure_dates(self) -> set[date]:
        return set(self.procedure_date_of.values())

    def paths(self, status: str) -> list[str]:
        return sorted(p for p, s in self.expected.items() if s == status)


def _noon(day: date) -> float:
    return dt.datetime.combine(day, dt.time(12)).timestamp()


def _image(rng: np.random.Generator, rows: int, cols: int, rgb: bool = False, depth: int = 12) -> np.ndarray:
    """A smooth phantom with noise: compresses like a real image, and is not square (catches row/col swaps)."""
    y, x = np.mgrid[0:rows, 0:cols]
    base = (np.sin(x / 7.0) + np.cos(y / 5.0) + 2) / 4
    if rgb:
        planes = [base, base[::-1], base[:, ::-1]]
        return (np.stack(planes, -1) * 200 + rng.integers(0, 40, (rows, cols, 3))).astype(np.uint8)
    peak = (1 << depth) - 1
    noisy = base * peak * 0.9 + rng.integers(0, peak // 10, (rows, cols))
    return noisy.astype(np.uint8 if depth <= 8 else np.uint16)


def _write_jp2(path: Path, data: np.ndarray, day: date, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    glymur.Jp2k(str(path), data=data, **kwargs)
    os.utime(path, (_noon(day), _noon(day)))


def _create_catalog(root: Path, password: str):
    path = root / CATALOG
    path.parent.mkdir(parents=True, exist_ok=True)
    con = create_embedded_database(path, password=password)
    cur = con.cursor()
    for ddl in SCHEMA:
        cur.execute(ddl)
    con.commit()
    return con


def make_firebird_nas(root: Path, *, nas_id: str, patients: int = 4, seed: int = 0,
                      start_date: date = date(2024, 3, 1), days: int = 5,
                      password: str = DEFAULT_PASSWORD) -> FirebirdSampleManifest:
    """Write a realistic ``firebird_jpeg2000`` NAS under ``root`` (deterministic for ``seed``); see module doc."""
    if patients < 3:
        raise ValueError("make_firebird_nas needs at least 3 patients (the date cases need three studies).")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rnd, rng = random.Random(seed), np.random.default_rng(seed)
    m = FirebirdSampleManifest(root=root, nas_id=nas_id, password=password)
    outside = m.outside = root.parent / f"{root.name}_outside"
    _write_jp2(outside / "OTHER_SITE.jp2", _image(rng, 40, 56), start_date)

    pats, studies, series, images = [], [], [], []
    img_id = ser_id = stu_id = 0
    ok_files: list[str] = []

    def add_image(sid: int, rel: str | None, status: str, day: date, key_case: str | None = None) -> str:
        nonlocal img_id
        img_id += 1
        images.append((img_id, sid, None, img_id, rel, 1))
        key = str(img_id)
        m.rows[key], m.row_paths[key] = status, rel
        if key_case:
            m.special[key_case] = key
        if status == OK:
            path = rel.replace("\\", "/")
            m.expected[path] = OK
            m.procedure_date_of[path] = day
            ok_files.append(path)
        return key

    for i in range(patients):
        last, first = NAMES[i % len(NAMES)]
        number = f"FB{seed:02d}{i:04d}"
        birth = date(1940 + rnd.randrange(60), rnd.randrange(1, 13), rnd.randrange(1, 29))
        pats.append((i + 1, number, last, first, birth, "MF"[i % 2]))
        m.patients[number] = f"{last}^{first}"
        for s in range(1 + i % 2):
            stu_id += 1
            day = start_date + dt.timedelta(days=(i + 2 * s) % days)
            text = day.strftime("%Y%m%d")
            if stu_id == 2:
                text = None  # missing study date: the indexer falls back to the file's mtime
            elif stu_id == 3:
                text = day.strftime("%d/%m/%Y?")  # malformed, kept as written
            # Most vendors keep no UIDs; one study has a valid one, one an invalid one (leading zero).
            uid = {1: f"1.2.826.0.1.3680043.8.498.{seed + 1}{stu_id}",
                   4: f"1.2.826.0.1.3680043.8.498.{seed:02d}{stu_id}"}.get(stu_id)
            if uid:
                m.study_uids[stu_id] = uid
            studies.append((stu_id, i + 1, uid, text, "RADIOGRAPHY" if i % 2 == 0 else "PHOTO DOCUMENTATION",
                            f"ACC{seed:02d}{stu_id:05d}"))
            for k in range(1 + (i + s) % 2):
                ser_id += 1
                rgb = i == 1 and k == 0  # one photographic RGB series
                modality = "XC" if rgb else ("DX", "CR", "MG")[(i + k) % 3]
                series.append((ser_id, stu_id, None, k + 1, modality, f"{modality} series {k + 1}"))
                folder = f"IMAGES/{day:%Y/%m/%d}/{number}/{stu_id}/{ser_id}"
                for n in range(2 + k % 2):
                    rel = f"{folder}/{img_id + 1:06d}.jp2"
                    data = _image(rng, 48, 64, rgb=rgb, depth=8 if (rgb or n == 1) else 12)
                    # Photographic RGB without the colour transform (labelled RGB): Orthanc's gdcm plugin
                    # renders it, while YBR_RCT (the MCT case, see test_jpeg2000.py) it cannot.
                    _write_jp2(root / rel, data, day, **({"mct": False} if rgb else {}))
                    add_image(ser_id, rel, OK, day)

    # The awkward cases, in the first patient's first series (a plausible place for each).
    sid, day0 = 1, start_date
    folder = f"IMAGES/{day0:%Y/%m/%d}/{pats[0][1]}/1/1"

    rel = f"{folder}/lossy.jp2"
    _write_jp2(root / rel, _image(rng, 48, 64), day0, irreversible=True)
    m.lossy.add(rel)
    add_image(sid, rel, OK, day0, "lossy")

    rel = f"{folder}/raw_codestream.j2k"
    _write_jp2(root / rel, _image(rng, 48, 64), day0)  # glymur writes a bare codestream for .j2k
    add_image(sid, rel, OK, day0, "j2k")

    rel = f"{folder}/windows_path.jp2"
    _write_jp2(root / rel, _image(rng, 48, 64), day0)
    add_image(sid, rel.replace("/", "\\"), OK, day0, "windows_path")

    add_image(sid, ok_files[0], FAILED, day0, "duplicate_path")  # a second row naming an imported file

    rel = f"{folder}/missing.jp2"
    m.expected[rel] = FAILED
    add_image(sid, rel, FAILED, day0, "missing")

    rel = f"{folder}/truncated.jp2"
    _write_jp2(root / rel, _image(rng, 48, 64), day0)
    data = (root / rel).read_bytes()
    (root / rel).write_bytes(data[: len(data) // 2])
    m.expected[rel] = FAILED
    add_image(sid, rel, FAILED, day0, "truncated")

    rel = f"{folder}/junk.jp2"
    (root / rel).write_bytes(b"This is not an image; the modality's export crashed.\n")
    m.expected[rel] = FAILED
    add_image(sid, rel, FAILED, day0, "junk")

    add_image(sid, f"../{outside.name}/OTHER_SITE.jp2", FAILED, day0, "dotdot")
    add_image(sid, str(outside / "OTHER_SITE.jp2"), FAILED, day0, "absolute")
    add_image(sid, None, FAILED, day0, "no_path")

    rel = "IMAGES/links/LINK_OUT.jp2"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside / "OTHER_SITE.jp2", root / rel)
    m.expected[rel] = FAILED
    add_image(sid, rel, FAILED, day0, "symlink_out")

    os.symlink(outside, root / "IMAGES/links/EXTERNAL")  # a folder link out of the root
    m.expected["IMAGES/links/EXTERNAL"] = SKIPPED  # the link itself: not followed
    rel = "IMAGES/links/EXTERNAL/OTHER_SITE.jp2"
    m.expected[rel] = FAILED
    add_image(sid, rel, FAILED, day0, "folder_link_out")

    rel = "IMAGES/unfiled/ORPHAN_0001.jp2"  # a file no row names
    _write_jp2(root / rel, _image(rng, 48, 64), day0)
    m.expected[rel] = SKIPPED
    m.special["orphan"] = rel
    rel = "IMAGES/README.TXT"
    (root / rel).write_text("Image store of the XYZ imaging workstation. Do not edit.\n")
    m.expected[rel] = SKIPPED
    m.special["readme"] = rel

    con = _create_catalog(root, password)
    cur = con.cursor()
    cur.executemany("INSERT INTO PATIENTS VALUES (?, ?, ?, ?, ?, ?)", pats)
    cur.executemany("INSERT INTO STUDIES VALUES (?, ?, ?, ?, ?, ?)", studies)
    cur.executemany("INSERT INTO SERIES VALUES (?, ?, ?, ?, ?, ?)", series)
    cur.executemany("INSERT INTO IMAGES VALUES (?, ?, ?, ?, ?, ?)", images)
    con.commit()
    con.close()
    m.expected[CATALOG] = SKIPPED
    return m


def make_bulk_firebird_nas(root: Path, n_images: int, *, nas_id: str = "bulk", seed: int = 0,
                           images_per_series: int = 100, series_per_study: int = 2,
                           start_date: date = date(2024, 3, 1), days: int = 5,
                           password: str = DEFAULT_PASSWORD) -> FirebirdSampleManifest:
    """``n_images`` catalog rows, each pointing to its own copy of one small lossless JP2 (fast)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    m = FirebirdSampleManifest(root=root, nas_id=nas_id, password=password)
    with tempfile.TemporaryDirectory() as tmp:
        _write_jp2(Path(tmp) / "t.jp2", _image(np.random.default_rng(seed), 64, 64), start_date)
        template = (Path(tmp) / "t.jp2").read_bytes()
    per_study = images_per_series * series_per_study
    pats, studies, series, images = [], [], [], []
    for i in range(n_images):
        stu, ser = i // per_study + 1, i // images_per_series + 1
        day = start_date + dt.timedelta(days=(stu - 1) % days)
        if i % per_study == 0:
            pats.append((stu, f"BULK{stu:06d}", f"Bulk{stu}", "Test", date(1970, 1, 1), "O"))
            studies.append((stu, stu, None, day.strftime("%Y%m%d"), "BULK", f"B{stu:08d}"))
        if i % images_per_series == 0:
            series.append((ser, stu, None, (ser - 1) % series_per_study + 1, "DX", "bulk"))
        rel = f"IMAGES/{day:%Y/%m/%d}/{stu:06d}/{ser:06d}/{i + 1:08d}.jp2"
        path = root / rel
        if i % images_per_series == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(template)
        images.append((i + 1, ser, None, i % images_per_series + 1, rel, 1))
        m.expected[rel] = OK
        m.rows[str(i + 1)] = OK
    con = _create_catalog(root, password)
    cur = con.cursor()
    for table, rows in (("PATIENTS", pats), ("STUDIES", studies), ("SERIES", series), ("IMAGES", images)):
        for start in range(0, len(rows), 10_000):
            cur.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)", rows[start:start + 10_000])
    con.commit()
    con.close()
    m.expected[CATALOG] = SKIPPED
    return m
