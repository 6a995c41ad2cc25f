"""A slow, flaky network share for tests: a read-only FUSE pass-through (mfusepy + Debian fuse3) over a real
folder, with a delay on every stat, listing and open (an SMB round trip) and errors injected on chosen paths.

The harness mounts it in a private folder and unmounts it (``fusermount3 -u``, then the PID). Faults live in a
JSON file the file system re-reads when it changes, so a test changes them while the share is mounted:
``{"latency": 0.001, "faults": [{"op": "readdir", "path": "/A/B", "errno": "EIO", "times": 2}]}``; ``op`` is
getattr, readdir, open or read; ``path`` is the path under the mount (bytes as latin-1 text for odd names,
see ``fault``); ``times`` is how many calls fail from now (-1: all of them). Attribute and entry caches are
off (like ``actimeo=0``), so every stat reaches the file system. With ``"count": true`` in that file, the file
system keeps how many calls of each op it answered in ``<control>.counts`` (JSON), rewritten after each call.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pacs_assets_tests.services.process import wait_until

OPS = ("getattr", "readdir", "open", "read")


def fault(op: str, path: str | bytes, err: str = "EIO", times: int = -1) -> dict:
    """One fault; ``path`` is under the mount root ('/A/B'), bytes allowed."""
    assert op in OPS and hasattr(errno, err)
    raw = os.fsencode(path)
    return {"op": op, "path": raw.decode("latin-1"), "errno": err, "times": times}


class _Faults:
    def __init__(self, control: Path):
        self.control, self.mtime, self.lock = control, None, threading.Lock()
        self.latency, self.faults, self.counts = 0.0, [], None

    def check(self, op: str, path: str) -> None:
        """Sleep the latency; raise the fault planned for (op, path), if any."""
        import mfusepy

        with self.lock:
            try:
                mtime = self.control.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime != self.mtime:
                self.mtime = mtime
                spec = json.loads(self.control.read_text()) if mtime else {}
                self.latency, self.faults = spec.get("latency", 0.0), spec.get("faults", [])
                self.counts = dict.fromkeys(OPS, 0) if spec.get("count") else None
            if self.counts is not None:
                self.counts[op] += 1
                tmp = self.control.with_suffix(".counts.tmp")
                tmp.write_text(json.dumps(self.counts))
                os.replace(tmp, self.control.with_suffix(".counts"))
            raw = os.fsencode(path).decode("latin-1")
            hit = next((f for f in self.faults if f["op"] == op and f["path"] == raw and f["times"] != 0), None)
            if hit is not None and hit["times"] > 0:
                hit["times"] -= 1
            if hit is not None:
                print(f"fault {op} {path!r} {hit['errno']} (left {hit['times']})", flush=True)
            latency = self.latency
        if latency:
            time.sleep(latency)
        if hit is not None:
            raise mfusepy.FuseOSError(getattr(errno, hit["errno"]))


def _operations(source: str, faults: _Faults):
    import mfusepy

    class PassThrough(mfusepy.Operations):
        use_ns = True

        def _src(self, path: str) -> str:
            return source + path if path != "/" else source

        def getattr(self, path, fh=None):
            faults.check("getattr", path)
            st = os.lstat(self._src(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
            out = {k.replace("_ns", ""): getattr(st, k) for k in keys}
            out["st_ino"] = st.st_ino
            return out

        def readdir(self, path, fh):
            faults.check("readdir", path)
            return [".", "..", *os.listdir(self._src(path))]

        def readlink(self, path):
            return os.readlink(self._src(path))

        def open(self, path, flags):
            faults.check("open", path)
            return os.open(self._src(path), os.O_RDONLY)

        def read(self, path, size, offset, fh):
            faults.check("read", path)
            return os.pread(fh, size, offset)

        def release(self, path, fh):
            os.close(fh)
            return 0

        def statfs(self, path):
            sv = os.statvfs(self._src(path))
            return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                                "f_files", "f_flag", "f_frsize", "f_namemax")}

    return PassThrough()


class FlakyShare:
    """``with FlakyShare(source, workdir) as share:`` mounts ``source`` read-only at ``share.mountpoint``."""

    def __init__(self, source: Path, workdir: Path, *, latency: float = 0.0):
        self.source, self.workdir = Path(source), Path(workdir)
        self.mountpoint = self.workdir / "mnt"
        self.control = self.workdir / "faults.json"
        self.latency = latency
        self.proc: subprocess.Popen | None = None

    def set(self, *faults: dict, latency: float | None = None, count: bool = False) -> None:
        """Replace the planned faults (and the latency); takes effect at the file system's next call. ``count``:
        count the calls from then on (``counts``)."""
        if latency is not None:
            self.latency = latency
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"latency": self.latency, "faults": list(faults), "count": count}))
        os.replace(tmp, self.control)
        time.sleep(0.01)  # a new mtime even on a coarse clock

    def counts(self) -> dict[str, int]:
        """Calls answered per op since ``set(count=True)``."""
        path = self.control.with_suffix(".counts")
        return json.loads(path.read_text()) if path.exists() else dict.fromkeys(OPS, 0)

    def __enter__(self) -> FlakyShare:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.set()
        self.log = open(self.workdir / "flaky_fs.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "pacs_assets_tests.services.flaky_fs", str(self.source),
                                      str(self.mountpoint), str(self.control)], stdout=self.log, stderr=self.log,
                                     cwd=Path(__file__).resolve().parents[2])  # the checkout: -m finds this module
        wait_until(lambda: os.path.ismount(self.mountpoint) or self.proc.poll() is not None, 15, "FUSE mount")
        if not os.path.ismount(self.mountpoint):
            raise RuntimeError(f"the FUSE share did not mount: {(self.workdir / 'flaky_fs.log').read_text()[-2000:]}")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def main(source: str, mountpoint: str, control: str) -> None:
    import mfusepy

    faults = _Faults(Path(control))
    # allow_other: the service user reads it too (we mount as root); caches off, as with actimeo=0.
    options = {"ro": True, "attr_timeout": 0, "entry_timeout": 0, "negative_timeout": 0}
    if os.geteuid() == 0:
        options["allow_other"] = True
    mfusepy.FUSE(_operations(os.path.realpath(source), faults), mountpoint, foreground=True, **options)


if __name__ == "__main__":
    main(*sys.argv[1:4])
