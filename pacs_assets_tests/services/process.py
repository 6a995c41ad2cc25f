"""Process helpers shared by the local services, the tests and the benchmarks: free ports, readiness waits, stop
by PID, and a record of every process a tree ever had."""
from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it; a race with others is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if `port` can be bound again (SO_REUSEADDR, as servers bind: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listening(pid: int, port: int) -> bool:
    """True once process `pid` itself listens on TCP `port` (not some other program on that port)."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.AccessDenied:  # another user's process and we are not root: trust the port
        return port_accepts(port)
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def log_tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, *,
               log_path: Path | None = None, process: subprocess.Popen | None = None,
               interval: float = 0.05) -> float:
    """Poll `predicate` until it is true; return the seconds it took.

    Raise RuntimeError naming `what` (and the log) if it times out, or at once if `process` dies.
    An exception inside the predicate counts as "not yet".
    """
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - a refused connection is just "not up yet"
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {process.returncode} before it was ready; "
                f"log {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() - start > timeout:
            raise RuntimeError(
                f"{what} did not come up within {timeout:.0f} s; log {log_path}:\n{log_tail(log_path)}")
        time.sleep(interval)


def _gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=0.05)  # reaps it if it is our child
            return True
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            return True
        try:
            # A zombie we are not the parent of holds no port or file any more: it is gone for us.
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False


def stop_pid(pid: int | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` (SIGTERM) to `pid`, wait up to `timeout` s, then SIGKILL and wait again.

    No-op if it is gone. Works for our children (reaped: no zombie is left) and for other processes
    (a detached server started by an earlier command). Descendants still alive once `pid` is gone
    get the same treatment. Raises RuntimeError if even SIGKILL did not end one.
    """
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for target, first in [(proc, sig)] + [(child, signal.SIGTERM) for child in children]:
        try:
            target.send_signal(first)
        except psutil.NoSuchProcess:
            continue
        if _gone(target, timeout):
            continue
        try:
            target.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
        if not _gone(target, timeout):
            raise RuntimeError(f"process {target.pid} survived SIGKILL for {timeout:.0f} s")


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ProcessTree:
    """Remembers every descendant a process ever had (pid + start time), to prove they are all gone."""

    def __init__(self, pid: int):
        self.pid = pid
        self.seen: dict[int, tuple[float, str]] = {}

    def snapshot(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        for proc in procs:
            try:
                self.seen.setdefault(proc.pid, (proc.create_time(), " ".join(proc.cmdline())[:120]))
            except psutil.Error:
                continue

    def alive(self) -> list[str]:
        left = []
        for pid, (created, cmd) in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {cmd}")
            except psutil.Error:
                continue
        return left


def as_user(user: str | None) -> dict:
    """Popen keyword arguments that drop root to `user` in the child, before exec (no runuser/su
    in between, so the PID we hold is the server's own)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def spawn(cmd: list[str], log_path: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None, new_session: bool = False,
          user: str | None = None) -> subprocess.Popen:
    """Start `cmd` with stdout+stderr appended to `log_path` and stdin closed."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=cwd,
                                start_new_session=new_session, **as_user(user))


class LocalService:
    """The shape every local service shares: one process we started, ready when ``ready()`` says so, stopped
    by its PID (and its descendants), usable as a context manager. Subclasses build the command."""

    name = "service"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    def ready(self) -> bool:
        raise NotImplementedError

    def _launch(self, cmd: list[str], log_path: Path, timeout: float, **spawn_kwargs) -> None:
        """Spawn ``cmd`` and wait until ready; on any failure stop what was started and re-raise."""
        self._process = spawn(cmd, log_path, **spawn_kwargs)
        self._pid = self._process.pid
        try:
            wait_until(self.ready, timeout, self.name, log_path=log_path, process=self._process)
        except BaseException:
            self.stop()
            raise

    def _halt(self, timeout: float = 10.0, sig: int | None = None) -> None:
        # Wait for the PID to be gone: until then its ports and folders are not reusable.
        stop_pid(self._pid, timeout, sig=self.stop_signal if sig is None else sig)
        if self._process is not None:
            self._process.poll()  # let Popen know (no zombie, no ResourceWarning)
        self._process = None
        self._pid = None

    def stop(self, timeout: float = 10.0) -> None:
        self._halt(timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, and wait until the PID is gone: a crash (no clean shutdown, no flush)."""
        self._halt(timeout, signal.SIGKILL)

    @contextlib.contextmanager
    def throwaway(self):
        """Started for one test whose data is thrown away: killed at the end, not stopped. A clean stop of
        Orthanc 1.10.1 takes ~3.5 s (its HTTP and DICOM servers notice it only at their next poll), which
        every test using an Orthanc paid."""
        self.start()
        try:
            yield self
        finally:
            self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
