"""A private PostgreSQL (Debian `postgresql`, 15) on 127.0.0.1 for Dagster's instance storage.

workdir/data (initdb), workdir/socket (its unix socket), workdir/postgres.log. Trust authentication,
so the password is set but not checked. initdb and postgres refuse to run as root: as root they run
as the `postgres` system user (dropped in the child, so the PID we hold is the postmaster's) and
workdir is handed to it.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from pacs_assets_tests.services.process import (
    LocalService,
    as_user,
    free_port,
    listening,
    pid_alive,
)

INSTALL_HINT = "run scripts/install_system_packages.sh (Debian package postgresql)"


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise RuntimeError(f"PostgreSQL is not installed (no initdb): {INSTALL_HINT}.")


class PostgresServer(LocalService):
    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 user: str = "dagster", password: str | None = None, db: str = "dagster"):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pacs-postgres-")).resolve()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = user
        self.password = password or secrets.token_hex(12)
        self.db = db
        super().__init__()
        self._os_user = "postgres" if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.db}"

    def env(self) -> dict[str, str]:
        """The variables a dagster.yaml `postgres_db` block reads with `env:` (DAGSTER_PG_*)."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_DB": self.db}

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir, timeout=120,
                              env={**os.environ, "LC_ALL": "C"}, **as_user(self._os_user))
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1])} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def _initdb(self, bindir: Path) -> None:
        for sub in ("data", "socket"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if self._os_user:
            entry = pwd.getpwnam(self._os_user)
            # postgres must traverse workdir (mkdtemp makes it 0700) and own data/ and socket/.
            os.chmod(self.workdir, 0o711)
            for sub in ("data", "socket"):
                os.chown(self.workdir / sub, entry.pw_uid, entry.pw_gid)
            # Every parent must be searchable by postgres too (pytest's tmp_path is under a 0700 dir).
            if subprocess.run(["test", "-x", str(self.workdir)], **as_user(self._os_user)).returncode:
                raise RuntimeError(f"PostgreSQL runs as user {self._os_user} here and cannot reach "
                                   f"{self.workdir} (a parent folder is private): make its parents "
                                   f"searchable (chmod o+x) or leave workdir unset.")
        if (self.data_dir / "PG_VERSION").exists():
            return  # a workdir reused from an earlier start
        pwfile = self.workdir / "socket" / "pwfile"
        pwfile.write_text(self.password + "\n")
        try:
            if self._os_user:
                os.chown(pwfile, pwd.getpwnam(self._os_user).pw_uid, -1)
            # --no-sync: a demo/test cluster needs no fsync at creation (saves ~1 s).
            self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                       f"--pwfile={pwfile}", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if pid_alive(self.pid):
            return self
        bindir = postgres_bindir()
        if self._os_user:
            try:
                pwd.getpwnam(self._os_user)
            except KeyError:
                raise RuntimeError(f"running as root needs the `postgres` system user: {INSTALL_HINT}.") from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._initdb(bindir)
        # The postmaster itself (not pg_ctl), so the PID we hold is the server.
        self.name = f"PostgreSQL on {self.host}:{self.port}"
        self._launch([str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                      "-c", f"listen_addresses={self.host}",
                      "-c", f"unix_socket_directories={self.workdir / 'socket'}"],
                     self.log_path, timeout, cwd=self.data_dir, env={"LC_ALL": "C"}, user=self._os_user)
        try:
            if self.db != "postgres" and not self._has_db(bindir):
                self._run([str(bindir / "createdb"), "-h", self.host, "-p", str(self.port),
                           "-U", self.user, self.db])
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        return listening(self._pid, self.port) and self._isready(postgres_bindir())

    def _isready(self, bindir: Path) -> bool:
        return subprocess.run([str(bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                               "-U", self.user, "-d", "postgres"], timeout=10).returncode == 0

    def _has_db(self, bindir: Path) -> bool:
        done = subprocess.run([str(bindir / "psql"), "-h", self.host, "-p", str(self.port), "-U",
                               self.user, "-d", "postgres", "-tAc",
                               f"select 1 from pg_database where datname = '{self.db}'"],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip() == "1"

    def stop(self, timeout: float = 10.0) -> None:
        # SIGINT = "fast" shutdown: disconnects clients (Dagster keeps pools open; SIGTERM's "smart"
        # shutdown would wait for them). Its backends are stopped too (stop_pid handles descendants).
        self._halt(timeout)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
