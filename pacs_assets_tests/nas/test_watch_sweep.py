"""The watch's tick cost is bounded on a huge share: recent folders every tick, the others in slices (a sweep),
with its progress reported; a change in an old folder is found within one sweep, in a recent one at once."""

from __future__ import annotations

import datetime as dt
import math
import os
import time

import pydicom

from pacs_assets.nas.watch import NasWatch
from pacs_assets.sample.bulk_dicom_nas import make_bulk_dicom_nas
from pacs_assets_tests.services.flaky_fs import FlakyShare

TODAY = dt.date.today()
START = TODAY - dt.timedelta(days=60)
SLICE = 10


def _age(root, days: int) -> int:
    """Every folder's mtime set ``days`` back (an archive nobody touched lately); returns how many folders."""
    old = time.time() - days * 86400
    folders = [d for d, _, _ in os.walk(root)]
    for d in folders:
        os.utime(d, (old, old))
    return len(folders)


def _add(folder, name: str, template) -> None:
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / name)
    mtime = time.time() - 3600  # settled: an hour old
    os.utime(folder / name, (mtime, mtime))


def _ticks_until_reported(watch: NasWatch, name: str, limit: int) -> tuple[int, list]:
    for n in range(1, limit + 1):
        result = watch.tick(60, TODAY)
        if any(p.endswith(name) for changes in result.changes.values() for p, _ in changes):
            return n, result
    raise AssertionError(f"{name} not reported within {limit} ticks")


def test_ticks_stat_recent_folders_and_a_slice_and_a_sweep_finds_everything(tmp_path):
    root = tmp_path / "nas"
    make_bulk_dicom_nas(root, 400, files_per_series=20, days=10, start_date=START)
    folders = _age(root, 30)
    watch = NasWatch(tmp_path / "w.sqlite", root, partitions_start=START, sweep_slice=SLICE)
    while not watch.tick(60, TODAY).complete:  # the first look lists everything
        pass
    sweeps = [watch.tick(60, TODAY) for _ in range(2 * math.ceil(folders / SLICE))]
    assert all(r.folders_statted == SLICE and r.changes == {} for r in sweeps)  # no recent folder: a slice only
    assert {r.sweep_total for r in sweeps} == {folders}
    progress = [r.sweep_checked for r in sweeps]
    assert max(progress) == folders and progress.index(folders) < math.ceil(folders / SLICE)  # a round completes
    assert min(progress[progress.index(folders) + 1:]) < folders  # ... and the next one starts

    # A file lands in an old folder: found within one sweep (plus the tick that sees it settle).
    series = sorted(root.glob("*/*/S001"))[3]
    _add(series, "LATE1.dcm", next(series.glob("*.dcm")))
    _ticks_until_reported(watch, "LATE1.dcm", math.ceil(folders / SLICE) + 2)
    # That folder is recent now: statted every tick on top of the slice, and a second file there is found at once.
    _add(series, "LATE2.dcm", next(series.glob("*.dcm")))
    _ticks_until_reported(watch, "LATE2.dcm", 2)
    assert watch.tick(60, TODAY).folders_statted == SLICE + 1


def test_a_sweep_stats_each_folder_by_name_in_its_open_parent_not_by_its_whole_path(tmp_path):
    """On a share that caches no lookups, a stat by path asks the server once per component; siblings statted
    by name in their open parent cost one lookup each. 40 study folders five levels down: well under 3 calls a
    folder (by path it would be about 6)."""
    root = tmp_path / "nas"
    studies = [root / "2020" / "01" / "02" / "P1" / f"S{i:02}" for i in range(40)]
    for study in studies:
        study.mkdir(parents=True)
        (study / "f.dcm").write_bytes(b"not read by the watch")
    folders = _age(root, 400)
    state = tmp_path / "w.sqlite"
    watch = NasWatch(state, root, partitions_start=START, sweep_slice=folders)
    while not watch.tick(60, TODAY).complete:  # the first look, on the plain folder
        pass
    watch.close()
    with FlakyShare(root, tmp_path / "fuse") as share:
        watch = NasWatch(state, share.mountpoint, partitions_start=START, sweep_slice=folders)
        share.set(count=True)
        result = watch.tick(60, TODAY)
        calls = share.counts()
        watch.close()
    assert result.folders_statted == folders and result.folders_listed == 0 and result.not_read == 0
    assert calls["getattr"] < 3 * folders, calls
