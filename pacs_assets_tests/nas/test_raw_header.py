"""The raw header reader (nas/dicom_folder/raw_header.py) against pydicom: every file, the same record.

The reader only answers for files in the plain shape and hands everything else to pydicom, so the test runs
both paths (``pydicom_only``) over awkward input: the sample NAS, pydicom's own ~100 edge-case files, and cut
copies of each (a file cut anywhere in its header or pixel data) and copies with one element's length
corrupted. It also checks that the raw reader does answer for the plain files, or it would prove nothing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

from pacs_assets.nas.dicom_folder.headers import read_dicom_file
from pacs_assets.nas.dicom_folder.raw_header import FIRST_READ, NotPlain, read_raw_header
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets.sample.dicom_nas import make_dicom_nas


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.relpath(path, root))
    return sorted(out)


def _plain(path: Path) -> bool:
    with open(path, "rb") as fp:
        try:
            read_raw_header(fp, fp.read(FIRST_READ), FIRST_READ)
        except (NotPlain, IndexError, struct.error):
            return False
    return True


def _assert_same_records(root: Path) -> tuple[int, int]:
    """Both readers on every file under ``root``; returns (files, files the raw reader answered for)."""
    files = _files(root)
    plain = 0
    for rel in files:
        st = os.stat(root / rel)
        ours = read_dicom_file("t", str(root), rel, st.st_size, st.st_mtime_ns)
        reference = read_dicom_file("t", str(root), rel, st.st_size, st.st_mtime_ns, pydicom_only=True)
        assert ours == reference, rel
        plain += _plain(root / rel)
    return len(files), plain


def test_the_sample_nas_reads_the_same(tmp_path):
    manifest = make_dicom_nas(tmp_path / "nas")
    make_bulk_dicom_nas(tmp_path / "nas" / "bulk", 50)
    files, plain = _assert_same_records(tmp_path / "nas")
    assert plain >= files * 0.8, (plain, files)  # the plain files take the raw path
    assert not _plain(manifest.root / manifest.special["headerless"])


@pytest.fixture(scope="module")
def pydicom_files() -> list[Path]:
    files = [Path(p) for p in get_testdata_files() if os.path.isfile(p) and os.path.getsize(p) > 0]
    assert len(files) > 50
    return files


def test_pydicom_test_files_read_the_same(pydicom_files, tmp_path):
    for i, path in enumerate(pydicom_files):
        (tmp_path / f"{i:03d}_{path.name}").write_bytes(path.read_bytes())
    files, plain = _assert_same_records(tmp_path)
    assert plain >= 20, plain  # enough of them take the raw path for the comparison to mean something


def _cuts(data: bytes) -> list[int]:
    """Where to cut a file: all through the first element headers, then spread over the rest."""
    points = set(range(128, min(len(data), 400), 11)) | {len(data) * k // 9 for k in range(1, 9)}
    points |= {len(data) - 1, len(data) - 2, len(data) - 9}
    return sorted(p for p in points if 0 < p < len(data))


def test_cut_and_corrupted_copies_read_the_same(pydicom_files, tmp_path):
    plain_sources = [p for p in pydicom_files if _plain(p)][:24]
    sample = tmp_path / "sample"
    make_bulk_dicom_nas(sample, 2)
    plain_sources += [sample / rel for rel in _files(sample)]
    out = tmp_path / "cut"
    out.mkdir()
    for i, path in enumerate(plain_sources):
        data = path.read_bytes()[:200_000]
        for cut in _cuts(data):
            (out / f"{i:03d}_cut{cut}.dcm").write_bytes(data[:cut])
        for at in range(132, min(len(data) - 4, 1200), 47):  # one 16-bit length (or VR) overwritten
            (out / f"{i:03d}_bad{at}.dcm").write_bytes(data[:at] + b"\xff\x7f" + data[at + 2:])
    files, plain = _assert_same_records(out)
    assert files > 800 and plain > 100, (files, plain)
