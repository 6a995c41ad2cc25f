"""A private Orthanc (Debian package, 1.10.1) on 127.0.0.1 for the demo and the tests.

Everything lives in `workdir`: orthanc.json, storage/, index/, orthanc.log, and for a server started
by one command and stopped by another, orthanc.pid + orthanc.env. Note: Orthanc 1.10.1 listens on all
interfaces; `RemoteAccessAllowed: false` refuses only non-local HTTP, its DICOM port stays reachable.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import psutil
import requests

from pacs_assets_tests.services.process import (
    LocalService,
    free_port,
    pid_alive,
)

PLUGINS_DIR = Path("/usr/share/orthanc/plugins")
INSTALL_HINT = "run scripts/install_system_packages.sh (Debian packages orthanc, orthanc-gdcm, dcmtk)"


def orthanc_binary() -> str:
    path = shutil.which("Orthanc")
    if path is None:
        raise RuntimeError(f"Orthanc is not installed (no `Orthanc` on PATH): {INSTALL_HINT}.")
    return path


class OrthancServer(LocalService):
    def __init__(self, workdir: Path, *, http_port: int | None = None, dicom_port: int | None = None,
                 username: str = "pacs", password: str | None = None, aet: str = "ORTHANC",
                 modalities: dict | None = None, settings: dict | None = None):
        self.workdir = Path(workdir).resolve()
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        while self.dicom_port == self.http_port:  # two free_port() calls may return the same port
            self.dicom_port = free_port()
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.aet = aet
        # {"NAME": ["AET", "host", port]} as Orthanc's DicomModalities expects.
        self.modalities = modalities or {}
        self.settings = settings or {}  # more of Orthanc's configuration, e.g. {"LimitFindResults": 2}
        super().__init__()

    # -- properties ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def env(self) -> dict[str, str]:
        """The variables pacs_assets' config reads (ORTHANC_USERNAME / ORTHANC_PASSWORD) and the rest."""
        return {"ORTHANC_URL": self.url, "ORTHANC_HTTP_PORT": str(self.http_port),
                "ORTHANC_DICOM_PORT": str(self.dicom_port), "ORTHANC_AET": self.aet,
                "ORTHANC_USERNAME": self.username, "ORTHANC_PASSWORD": self.password}

    def config(self) -> dict:
        return {
            "Name": f"pacs-assets-{self.http_port}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            # The gdcm plugin renders JPEG 2000 previews (without it /preview answers 415).
            "Plugins": [str(PLUGINS_DIR)] if PLUGINS_DIR.is_dir() else [],
            "DicomModalities": self.modalities,
            "DicomAlwaysAllowStore": True,
            "StableAge": 2,
            "HttpTimeout": 60,
            # Never MaximumStorageSize/MaximumPatientCount: 1.10.1 then deletes the oldest patients.
            **self.settings,
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, *, timeout: float = 30.0, detached: bool = False) -> OrthancServer:
        if pid_alive(self._pid):
            return self
        binary = orthanc_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _write_private(self.config_path, json.dumps(self.config(), indent=2))
        # TCP_NODELAY=1: DCMTK (inside Orthanc) then disables Nagle; C-STORE is ~20x faster.
        self.name = f"Orthanc on {self.url}"
        self._launch([binary, str(self.config_path)], self.log_path, timeout, cwd=self.workdir,
                     env={"TCP_NODELAY": "1"}, new_session=detached)
        return self

    def ready(self) -> bool:
        return requests.get(f"{self.url}/system", auth=self.auth, timeout=2).status_code == 200

    def stop(self, timeout: float = 10.0) -> None:
        self._halt(timeout)
        for name in ("orthanc.pid", "orthanc.env"):
            (self.workdir / name).unlink(missing_ok=True)

    # -- one command starts, another stops ----------------------------------------------------
    def write_pidfile(self) -> None:
        (self.workdir / "orthanc.pid").write_text(f"{self._pid}\n")
        # Shell-sourceable; holds the password, so private to the owner like orthanc.json.
        _write_private(self.workdir / "orthanc.env",
                       "".join(f"{k}={v}\n" for k, v in self.env().items()))

    @classmethod
    def from_pidfile(cls, workdir: Path) -> OrthancServer | None:
        """The server recorded in workdir, or None if there is none or its process is gone."""
        workdir = Path(workdir).resolve()
        try:
            pid = int((workdir / "orthanc.pid").read_text().strip())
            env = dict(line.split("=", 1) for line in
                       (workdir / "orthanc.env").read_text().splitlines() if "=" in line)
        except (FileNotFoundError, ValueError):
            return None
        server = cls(workdir, http_port=int(env["ORTHANC_HTTP_PORT"]),
                     dicom_port=int(env["ORTHANC_DICOM_PORT"]), username=env["ORTHANC_USERNAME"],
                     password=env["ORTHANC_PASSWORD"], aet=env.get("ORTHANC_AET", "ORTHANC"))
        if _is_our_orthanc(pid, server.config_path):
            server._pid = pid
            return server
        return None  # stale pidfile (the PID is gone, or now belongs to another program)


def start_detached(workdir: Path, **kwargs) -> OrthancServer:
    """Start Orthanc in its own session so it outlives this Python process; record pid + env."""
    existing = OrthancServer.from_pidfile(workdir)
    if existing is not None:
        return existing
    server = OrthancServer(workdir, **kwargs).start(detached=True)
    server.write_pidfile()
    return server


def stop_detached(workdir: Path, timeout: float = 10.0) -> bool:
    """Stop the server recorded in workdir. True if one was running."""
    server = OrthancServer.from_pidfile(workdir)
    for name in ("orthanc.pid", "orthanc.env"):
        (Path(workdir) / name).unlink(missing_ok=True)
    if server is None:
        return False
    server.stop(timeout)
    return True


def _is_our_orthanc(pid: int, config_path: Path) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and str(config_path) in proc.cmdline()
    except psutil.Error:
        return False


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    """``python -m pacs_assets_tests.services.orthanc start|stop --dir D``: the demo's private Orthanc, started
    by one command (it outlives it) and stopped by another (scripts/demo.sh)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pacs_assets_tests.services.orthanc", description=main.__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, help="private folder for its storage, config, log and PID")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    args = parser.parse_args(argv)
    workdir = Path(args.dir)
    if args.action == "start":
        server = start_detached(workdir, http_port=args.http_port, dicom_port=args.dicom_port)
        print(f"Orthanc {server.url} (PID {server.pid}) is running; credentials in {workdir / 'orthanc.env'}")
    else:
        stopped = stop_detached(workdir)
        print("Orthanc stopped." if stopped else f"No Orthanc started from {workdir} is running.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
