"""A private Firebird 3 server (Debian `firebird3.0-server`) on 127.0.0.1 for the demo and the tests.

The system server's root is /usr/lib/x86_64-linux-gnu/firebird/3.0 with its config in /etc/firebird.
Here the FIREBIRD variable points the server at a private root instead:

    workdir/root/   firebird.conf, databases.conf (written), security3.fdb (created fresh, our SYSDBA
                    password), symlinks to the system's firebird.msg, plugins.conf, intl/, plugins/ ...
    workdir/lock/   FIREBIRD_LOCK (the lock table; never shared with another engine)
    workdir/data/   a place for databases (any path the server user can read works)
    workdir/firebird.log   stdout/stderr. The engine's own log is fixed at build time
                    (/var/log/firebird/firebird3.0.log on Debian) and cannot be made private.

The server runs as the calling user (root here), so it can open any file that user can.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from pacs_assets_tests.services.process import (
    LocalService,
    free_port,
    listening,
    pid_alive,
)

SERVER_BINARY = Path("/usr/sbin/firebird")
INSTALL_HINT = "run scripts/install_system_packages.sh (Debian packages firebird3.0-server, libfbclient2)"
# Not firebird.conf / databases.conf: we write our own.
_SYSTEM_FILES = ("firebird.msg", "plugins.conf", "fbtrace.conf", "intl", "plugins", "UDF", "lib")


def system_root() -> Path:
    """The packaged Firebird 3 root (holds firebird.msg, plugins/, intl/)."""
    for candidate in glob.glob("/usr/lib/*/firebird/3.0") + ["/usr/lib/firebird/3.0",
                                                              "/opt/firebird"]:
        if (Path(candidate) / "firebird.msg").exists():
            return Path(candidate)
    raise RuntimeError(f"Firebird 3 is not installed (no firebird.msg found): {INSTALL_HINT}.")


class FirebirdServer(LocalService):
    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 user: str = "SYSDBA", password: str | None = None):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pacs-firebird-")).resolve()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = user
        self.password = password or secrets.token_hex(12)
        super().__init__()

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "firebird.log"

    def _env(self) -> dict[str, str]:
        return {"FIREBIRD": str(self.root), "FIREBIRD_LOCK": str(self.workdir / "lock"),
                "FIREBIRD_TMP": str(self.workdir / "tmp"),
                "ISC_USER": "", "ISC_PASSWORD": ""}  # never inherit someone's credentials

    def env(self) -> dict[str, str]:
        """Variables for a client: pacs_assets' config reads the password from FIREBIRD_PASSWORD."""
        return {"FIREBIRD_HOST": self.host, "FIREBIRD_PORT": str(self.port),
                "FIREBIRD_USER": self.user, "FIREBIRD_PASSWORD": self.password}

    def dsn(self, database: Path | str) -> str:
        return f"{self.host}/{self.port}:{Path(database).resolve()}"

    def _prepare(self) -> None:
        system = system_root()
        for sub in ("root", "lock", "tmp", "data"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for stale in (self.workdir / "lock").iterdir():  # a killed server leaves its lock table
            stale.unlink()
        for name in _SYSTEM_FILES:
            link = self.root / name
            if (system / name).exists() and not link.is_symlink():
                link.symlink_to(system / name)
        security = self.root / "security3.fdb"
        (self.root / "firebird.conf").write_text(
            f"RemoteServicePort = {self.port}\n"
            f"RemoteBindAddress = {self.host}\n"
            "ServerMode = Super\n"
            f"SecurityDatabase = {security}\n"
            f"TempDirectories = {self.workdir / 'tmp'}\n"
            "UdfAccess = None\n")
        (self.root / "databases.conf").write_text(
            f"security.db = {security}\n{{\n\tRemoteAccess = false\n}}\n")
        # A fresh security database, so SYSDBA's password is ours (the packaged security3.fdb is
        # readable only by root/firebird and holds the system's password). Embedded isql creates
        # it; Srp's user table is created on the first CREATE USER. Quotes doubled for SQL.
        security.unlink(missing_ok=True)
        sql_pw = self.password.replace("'", "''")
        sql = (f"create database '{security}';\n"
               f"create user {self.user} password '{sql_pw}' using plugin Srp;\ncommit;\n")
        isql = shutil.which("isql-fb") or shutil.which("isql")
        if isql is None:
            raise RuntimeError(f"isql-fb not found (Debian firebird3.0-utils): {INSTALL_HINT}.")
        done = subprocess.run([isql, "-q", "-bail", "-user", "SYSDBA"], input=sql, text=True,
                              capture_output=True, env={**_clean_env(), **self._env()}, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"creating the private Firebird security database failed: "
                               f"{done.stdout}{done.stderr}")

    def start(self, timeout: float = 30.0) -> FirebirdServer:
        if pid_alive(self.pid):
            return self
        if not SERVER_BINARY.exists():
            raise RuntimeError(f"{SERVER_BINARY} is missing: {INSTALL_HINT}.")
        self._prepare()
        # The server itself, not fbguard: the PID we hold is the one that must stop.
        self.name = f"Firebird server on {self.host}:{self.port}"
        self._launch([str(SERVER_BINARY)], self.log_path, timeout, env=self._env(), cwd=self.workdir)
        return self

    def ready(self) -> bool:
        return listening(self._pid, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        # SIGTERM usually ends it within ~1.5 s; once in a while it ignores it, hence the KILL.
        self._halt(timeout)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- conveniences for tests and the demo --------------------------------------------------
    def connect(self, database: Path | str, **kwargs):
        import fdb
        return fdb.connect(host=self.host, port=self.port, database=str(Path(database).resolve()),
                           user=self.user, password=self.password, **kwargs)

    def create_database(self, database: Path | str, charset: str = "UTF8"):
        """Create a database through the server (so no embedded engine holds the file); returns
        the open connection."""
        import fdb
        sql_pw = self.password.replace("'", "''")
        return fdb.create_database(
            f"create database '{self.dsn(database)}' user '{self.user}' password '{sql_pw}' "
            f"default character set {charset}")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FIREBIRD", "ISC_"))}
