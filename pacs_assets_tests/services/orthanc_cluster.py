"""A private multi-node Orthanc for tests: one PostgreSQL + N Orthanc processes on one index.

Layout under `base_dir`:
    pg/                 PostgresServer workdir (data/, socket/, postgres.log); one database per cluster
    storage/            the ONE StorageDirectory every node shares (the index plugin keeps only the index)
    node-<i>/           orthanc.json, orthanc.log, index/ (unused by the PostgreSQL index, kept private)

Each node loads exactly one plugin file, libOrthancPostgreSQLIndex.so, with
`"PostgreSQL": {"EnableIndex": true, "EnableStorage": false, "Lock": false, ...}`: `Lock: false` lets
several Orthanc processes open the same database (plugin 4.0 + Orthanc >= 1.9.2 retry colliding
transactions, up to `MaximumConnectionRetries` times). Each node gets its own `DatabaseServerIdentifier`
(Orthanc keeps per-server global properties, e.g. saved jobs, under it). Jobs, /jobs and the in-memory
caches stay private to each node; patients/studies/series/instances, /statistics, /tools/find and
/changes come from the shared index.

Orthanc 1.10.1 listens on all interfaces: `RemoteAccessAllowed: false` refuses only non-local HTTP; the
DICOM port stays reachable (see orthanc.py).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from pathlib import Path

import psutil

from pacs_assets_tests.services.orthanc import PLUGINS_DIR, OrthancServer
from pacs_assets_tests.services.postgres import PostgresServer, postgres_bindir
from pacs_assets_tests.services.process import (
    free_port,
    pid_alive,
    port_is_free,
    wait_until,
)

INDEX_PLUGIN = PLUGINS_DIR / "libOrthancPostgreSQLIndex.so"
INSTALL_HINT = "apt-get install -y orthanc-postgresql (Debian package, plugin 4.0)"


def index_plugin() -> Path:
    if not INDEX_PLUGIN.is_file():
        raise RuntimeError(f"the Orthanc PostgreSQL index plugin is missing ({INDEX_PLUGIN}): {INSTALL_HINT}.")
    return INDEX_PLUGIN


class ClusterNode(OrthancServer):
    """One Orthanc of the cluster: the shared storage, the PostgreSQL index, one named plugin file."""

    def __init__(self, workdir: Path, *, storage_dir: Path, postgres: PostgresServer, node_id: str,
                 index_connections: int = 4, max_retries: int = 10, **kwargs):
        super().__init__(workdir, **kwargs)
        self.storage_dir = Path(storage_dir).resolve()
        self.postgres = postgres
        self.node_id = node_id
        self.index_connections = index_connections
        self.max_retries = max_retries

    def config(self) -> dict:
        cfg = super().config()
        cfg.update({
            "Name": f"pacs-assets-{self.node_id}",
            "StorageDirectory": str(self.storage_dir),
            # Plugins are named one by one: loading the folder would also load the storage plugin,
            # gdcm and the rest. Add libOrthancGdcm.so here if a test needs JPEG 2000 previews.
            "Plugins": [str(index_plugin())],
            "DatabaseServerIdentifier": self.node_id,
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Lock": False,  # several Orthanc on one database
                "Host": self.postgres.host,
                "Port": self.postgres.port,
                "Database": self.postgres.db,
                "Username": self.postgres.user,
                "Password": self.postgres.password,
                "EnableSsl": False,
                "IndexConnectionsCount": self.index_connections,
                # At start-up: connection attempts; in 4.0 also the retries of a colliding transaction.
                "MaximumConnectionRetries": self.max_retries,
                "ConnectionRetryInterval": 1,
            },
        })
        return cfg

    def wait_ports_free(self, timeout: float = 15.0) -> None:
        wait_until(lambda: port_is_free(self.http_port) and port_is_free(self.dicom_port), timeout,
                   f"ports {self.http_port}/{self.dicom_port} of {self.node_id} to be free",
                   log_path=self.log_path)


class OrthancCluster:
    """`with OrthancCluster(base_dir, nodes=2) as cluster: cluster.urls ...`"""

    def __init__(self, base_dir: Path, nodes: int = 2, *, username: str = "pacs",
                 password: str | None = None, index_connections: int = 4, max_retries: int = 10,
                 db: str | None = None, synchronous_commit: bool = True):
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir).resolve()
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        # One database per cluster (a fresh name, so two clusters on one server never share an index).
        self.postgres = PostgresServer(self.base_dir / "pg", user="orthanc",
                                       db=db or f"orthanc_{secrets.token_hex(4)}")
        self.storage_dir = self.base_dir / "storage"
        # False: PostgreSQL acknowledges a commit before its WAL reaches disk (a crash of PostgreSQL
        # may lose the last transactions; a crash of Orthanc cannot). Faster tests, less durable.
        self.synchronous_commit = synchronous_commit
        used: set[int] = {self.postgres.port}
        self.nodes: list[ClusterNode] = []
        for i in range(nodes):
            http, dicom = _distinct_ports(used), _distinct_ports(used)
            self.nodes.append(ClusterNode(
                self.base_dir / f"node-{i}", storage_dir=self.storage_dir, postgres=self.postgres,
                node_id=f"node-{i}", index_connections=index_connections, max_retries=max_retries,
                http_port=http, dicom_port=dicom, username=username, password=self.password,
                aet=f"ORTHANC{i}"))

    # -- accessors ---------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def pids(self) -> dict[str, int]:
        """Every process we started that is alive now: postgres (postmaster) and node-<i>."""
        out = {f"node-{i}": n.pid for i, n in enumerate(self.nodes) if pid_alive(n.pid)}
        if pid_alive(self.postgres.pid):
            out["postgres"] = self.postgres.pid
        return out

    def storage_files(self) -> list[Path]:
        """The attachment files in the shared storage (DICOM files and, if any, their JSON summaries)."""
        return [p for p in self.storage_dir.rglob("*") if p.is_file()]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> OrthancCluster:
        index_plugin()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(self.base_dir, 0o711)  # PostgreSQL runs as `postgres` and must traverse it
        self.storage_dir.mkdir(exist_ok=True)
        try:
            self.postgres.start(timeout)
            if not self.synchronous_commit:
                self._psql(f"ALTER DATABASE {self.postgres.db} SET synchronous_commit = off")
            # Node 0 alone first: it creates the schema (the plugin also takes an advisory lock for
            # that); the others then start, one after the other, against a ready database.
            self.nodes[0].start(timeout=timeout)
            for node in self.nodes[1:]:
                node.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _psql(self, sql: str) -> str:
        done = subprocess.run([str(postgres_bindir() / "psql"), "-h", self.postgres.host, "-p",
                               str(self.postgres.port), "-U", self.postgres.user, "-d", self.postgres.db,
                               "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                              capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def start_node(self, i: int, timeout: float = 30.0) -> ClusterNode:
        """(Re)start node i on the same HTTP/DICOM ports."""
        node = self.nodes[i]
        if not pid_alive(node.pid):
            node.wait_ports_free()
            node.start(timeout=timeout)
        return node

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM, wait for the PID to exit (SIGKILL after `timeout`)."""
        self.nodes[i].stop(timeout)

    def kill_node(self, i: int, timeout: float = 10.0) -> None:
        """SIGKILL node i and wait until it is gone."""
        self.nodes[i].kill(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process this cluster started, by PID, and wait for each to exit."""
        errors = []
        for node in self.nodes:
            try:
                node.stop(timeout)
            except Exception as exc:  # noqa: BLE001 - still stop the others and PostgreSQL
                errors.append(exc)
        try:
            self.postgres.stop(timeout)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        if errors:
            raise errors[0]

    @contextlib.contextmanager
    def throwaway(self):
        """Started for tests whose data is thrown away: the nodes are killed at the end (a clean stop costs
        ~3 s per node), PostgreSQL stopped (fast shutdown, ~0.1 s)."""
        self.start()
        try:
            yield self
        finally:
            for node in self.nodes:
                node.kill()
            self.stop()

    def __enter__(self) -> OrthancCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def sqlite_node(workdir: Path, **kwargs) -> OrthancServer:
    """The single-node comparison: the project's OrthancServer (built-in SQLite index)."""
    return OrthancServer(workdir, **kwargs)


def process_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of `pid`, its live descendants and its reaped children (PostgreSQL
    backends that already exited are counted by the postmaster's children_* times)."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def _distinct_ports(used: set[int]) -> int:
    while True:
        port = free_port()
        if port not in used:
            used.add(port)
            return port


__all__ = ["OrthancCluster", "ClusterNode", "sqlite_node", "process_cpu_seconds", "INDEX_PLUGIN"]
