"""Any byte string is a file name: stored losslessly (nas/names.py), indexed, imported, found, shown escaped.

A NAS with Latin-1 folder and file names, names with a newline, a tab, edge spaces, backslashes, '%' and '_',
NFC/NFD twins and a path longer than PATH_MAX goes through the whole graph into a real Orthanc.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import unicodedata
from pathlib import Path

import duckdb

from pacs_assets.cli.main import main
from pacs_assets.nas import names
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.harness import check_results, materialize_nas, write_config

DAY = dt.date.today() - dt.timedelta(days=3)

# Awkward names, as the bytes a share holds. Each gets one valid DICOM file.
NFC = unicodedata.normalize("NFC", "Müller.dcm").encode()
NFD = unicodedata.normalize("NFD", "Müller.dcm").encode()
ODD_PATHS = [
    b"M\xfcller J\xfcrgen/Bild \xe9t\xe9.dcm",  # Latin-1 folder and file (not UTF-8)
    b"M\xfcller J\xfcrgen/plain.dcm",
    b"line\nbreak.dcm",
    b"tab\there.dcm",
    b" leading space.dcm",
    b"trailing space.dcm ",
    b"twins/" + NFC,
    b"twins/" + NFD,
    b"back\\slash/literal \\xff.dcm",  # valid UTF-8 that looks like an escape
    b"back\\slash/literal \xff.dcm",  # the byte itself
    b"100%_done/a_b.dcm",
]
DEEP = [b"d" * 200 + b"%02d" % i for i in range(24)]  # 24 folders of 202 bytes: a path of ~4.9 KB


def _random_name(rng: random.Random) -> bytes:
    alphabet = [b"a", b"/", b"\\", b"x", b"f", b"0", b"\xff", b"\xc3", b"\xbc", b"\xed\xa0\x80", b"\n", b"%", b"_",
                "é".encode(), "山".encode(), b"\\x", b"\\\\", b"\\xff"]
    return b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def test_stored_form_maps_back_to_the_exact_bytes_and_never_collides():
    rng = random.Random(16)
    cases = {_random_name(rng) for _ in range(20_000)} | set(ODD_PATHS) | {NFC, NFD, b"", b"\\", b"\\x4", b"\xff"}
    seen: dict[str, bytes] = {}
    for raw in cases:
        text = names.stored(raw)
        assert names.fs_bytes(text) == raw
        assert names.stored(os.fsdecode(raw)) == text  # what os functions hand us gives the same form
        assert seen.setdefault(text, raw) == raw, f"{raw!r} and {seen[text]!r} share {text!r}"
        head, sep, tail = raw.rpartition(b"/")
        if sep:  # the form composes like the path: folders of a stored path are stored folders
            assert text == f"{names.stored(head)}/{names.stored(tail)}"
    with duckdb.connect() as con:  # DuckDB takes every stored form and gives it back unchanged
        con.execute("CREATE TABLE t (p VARCHAR)")
        con.executemany("INSERT INTO t VALUES (?)", [[t] for t in seen])
        assert {r[0] for r in con.execute("SELECT p FROM t").fetchall()} == set(seen)
    assert names.stored("plain/Müller.dcm") == "plain/Müller.dcm"  # the usual name is stored as it is
    assert names.stored(b"M\xfcller") == "M\\xfcller"
    assert names.stored(b"a\\xff") == "a\\\\xff" != names.stored(b"a\xff")
    assert names.shown("line\nbreak") == "line\\nbreak" and names.shown(" x") == '" x"'


def _odd_nas(root: Path) -> set[bytes]:
    """The odd tree (one bulk CT series spread over it); returns every file's relative path as bytes."""
    src = root.parent / "src"
    make_bulk_dicom_nas(src, len(ODD_PATHS) + 1, files_per_series=100, start_date=DAY)
    files = sorted(p for p in src.rglob("*.dcm"))
    raw_root = os.fsencode(root)
    paths = ODD_PATHS + [b"/".join(DEEP) + b"/deep.dcm"]
    for rel, src_file in zip(paths, files, strict=True):
        folder = rel.rpartition(b"/")[0]
        fd = os.open(raw_root, os.O_RDONLY | os.O_DIRECTORY)
        for part in [p for p in folder.split(b"/") if p]:  # folder by folder: the deep one exceeds PATH_MAX
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.rename(src_file, rel.rpartition(b"/")[2], dst_dir_fd=fd)
        os.close(fd)
    assert len(os.fsencode(root)) + len(paths[-1]) > 4096
    return set(paths)


def test_odd_names_are_indexed_imported_found_and_shown_escaped(tmp_path, orthanc_env, capsys):
    root = tmp_path / "nas"
    root.mkdir()
    expected = _odd_nas(root)
    config = write_config(tmp_path / "pacs.yaml", [{"id": "odd", "kind": "dicom_folder", "root": "nas",
                                                    "partitions_start": (DAY - dt.timedelta(days=5)).isoformat()}],
                          orthanc_url=orthanc_env.url)
    result = materialize_nas(config, "odd")
    assert result.success
    assert all(check_results(result).values()), check_results(result)
    with duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT file_path, status, reason FROM file_status WHERE nas_id = 'odd'").fetchall()
    assert {names.fs_bytes(p) for p, _, _ in rows} == expected  # every file, with its exact bytes
    assert {s for _, s, _ in rows} == {"imported"}, rows

    assert main(["--config", str(config), "search", "Bulk"]) == 0
    out = capsys.readouterr().out
    assert "Bulk^Patient000000" in out and f"in Orthanc {len(expected)}/{len(expected)}" in out
    assert main(["--config", str(config), "history", "--nas", "odd", "--page-size", "100"]) == 0
    out = capsys.readouterr().out
    assert "M\\xfcller J\\xfcrgen/Bild \\xe9t\\xe9.dcm" in out and "line\\nbreak.dcm" in out
    assert "tab\\there.dcm" in out and '"trailing space.dcm "' in out
    assert len(out.splitlines()) == len(expected) + 3  # title, header, one line per file, page: no raw newline


def test_the_watch_reports_odd_names_in_the_stored_form_the_walk_uses(tmp_path):
    from pacs_assets.nas.folder_lists import read_folder_list, write_folder_list
    from pacs_assets.nas.walk import walk
    from pacs_assets.nas.watch import NasWatch

    root = tmp_path / "nas"
    root.mkdir()
    expected = _odd_nas(root)
    watch = NasWatch(tmp_path / "w.sqlite", root, partitions_start=DAY - dt.timedelta(days=5))
    reported = set()
    while True:
        result = watch.tick(60, dt.date.today())
        reported |= {p for changes in result.changes.values() for p, _ in changes}
        folders = sorted({f for day in result.changes for f in result.folders(day)})
        if result.complete:
            break
    assert {names.fs_bytes(p) for p in reported} == expected
    # The folders a sensor hands its run survive the folder list, and the walk of them finds the same files.
    ref = write_folder_list(tmp_path / "lists", folders)
    again = read_folder_list(tmp_path / "lists", ref)
    walked = {e.rel for e in walk(root, follow_links=True, folders=again, recursive=False) if e.status is None}
    assert walked >= {p for p in reported if p.rpartition("/")[0] in set(again)}
