"""A real private PostgreSQL for Dagster: initdb, 127.0.0.1 only, connect, stop, nothing left."""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from pacs_assets_tests.services.postgres import PostgresServer
from pacs_assets_tests.services.process import pid_alive, port_is_free

psycopg2 = pytest.importorskip("psycopg2")
pytestmark = pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                reason="PostgreSQL not installed: run scripts/install_system_packages.sh")


def test_start_connect_stop():
    server = PostgresServer()
    with server:
        pid, port, workdir = server.pid, server.port, server.workdir
        backends = psutil.Process(pid).children(recursive=True)
        assert backends  # checkpointer, walwriter, ...
        env = server.env()
        assert env == {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port),
                       "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": server.password,
                       "DAGSTER_PG_DB": "dagster"}
        con = psycopg2.connect(host=env["DAGSTER_PG_HOST"], port=int(env["DAGSTER_PG_PORT"]),
                               user=env["DAGSTER_PG_USERNAME"], password=env["DAGSTER_PG_PASSWORD"],
                               dbname=env["DAGSTER_PG_DB"])
        with con.cursor() as cur:
            cur.execute("select 1, current_database(), current_setting('listen_addresses')")
            assert cur.fetchone() == (1, "dagster", "127.0.0.1")
        # An open client must not block stop (fast shutdown, as Dagster keeps its pool open).
    assert not pid_alive(pid)
    assert not [p for p in backends if pid_alive(p.pid)]
    assert port_is_free(port)
    assert not Path(workdir).exists()
    con.close()


@pytest.fixture
def reachable_dir():
    # Not tmp_path: as root the server runs as `postgres`, which cannot enter pytest's 0700 base dir.
    path = Path(tempfile.mkdtemp(prefix="pacs-pg-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreachable_workdir_is_refused_clearly(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to the postgres user")
    with pytest.raises(RuntimeError, match="cannot reach"):
        PostgresServer(tmp_path / "pg").start()


def test_workdir_and_port_reusable_after_stop(reachable_dir):
    with PostgresServer(reachable_dir / "pg") as first:
        con = psycopg2.connect(first.url)
        with con, con.cursor() as cur:
            cur.execute("create table kept (i int); insert into kept values (7)")
        con.close()
        pid, port = first.pid, first.port
    assert not pid_alive(pid) and port_is_free(port)
    with PostgresServer(reachable_dir / "pg", port=port) as second:
        con = psycopg2.connect(second.url)
        with con.cursor() as cur:
            cur.execute("select i from kept")
            assert cur.fetchall() == [(7,)]
        con.close()
        pid = second.pid
    assert not pid_alive(pid) and port_is_free(port)
