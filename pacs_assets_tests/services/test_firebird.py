"""A real private Firebird 3 server: private root, own SYSDBA password, used through fdb, stopped."""
from __future__ import annotations

from pathlib import Path

import fdb
import psutil
import pytest

from pacs_assets_tests.services.firebird import SERVER_BINARY, FirebirdServer
from pacs_assets_tests.services.process import pid_alive, port_is_free

pytestmark = pytest.mark.skipif(not SERVER_BINARY.exists(),
                                reason="Firebird not installed: run scripts/install_system_packages.sh")


def test_server_round_trip_and_stop(tmp_path):
    # Created embedded (the vendor's catalog arrives as a file) and closed BEFORE the server opens it:
    # an embedded engine holding the file would lock the server out.
    embedded = tmp_path / "catalog.fdb"
    con = fdb.create_database(f"create database '{embedded}' user 'SYSDBA' password 'unused'")
    con.cursor().execute("create table study (id integer, uid varchar(64))")
    con.commit()
    con.close()

    server = FirebirdServer()
    with server:
        pid, port, workdir = server.pid, server.port, server.workdir
        assert server.host == "127.0.0.1" and server.user == "SYSDBA"
        listening = [c for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"]
        assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]

        con = fdb.connect(host="127.0.0.1", port=port, database=str(embedded),
                          user="SYSDBA", password=server.password)
        cur = con.cursor()
        cur.execute("insert into study values (?, ?)", (1, "1.2.3"))
        con.commit()
        cur.execute("select id, uid from study")
        assert cur.fetchall() == [(1, "1.2.3")]
        cur.execute("select mon$remote_protocol from mon$attachments where mon$attachment_id = current_connection")
        assert cur.fetchone()[0] == "TCPv4"  # really through the server, not embedded
        con.close()

        made = server.create_database(server.data_dir / "made.fdb")  # created by the server itself
        made.cursor().execute("create table t (i integer)")
        made.commit()
        made.cursor().execute("insert into t values (42)")
        made.commit()
        made.close()
        with server.connect(server.data_dir / "made.fdb") as again:
            assert again.cursor().execute("select i from t").fetchall() == [(42,)]

        with pytest.raises(fdb.DatabaseError, match="user name and password"):
            fdb.connect(host="127.0.0.1", port=port, database=str(embedded),
                        user="SYSDBA", password="wrong")
    assert not pid_alive(pid)
    assert port_is_free(port)
    assert not Path(workdir).exists()  # a private temp workdir is removed


def test_same_workdir_and_port_reusable_after_stop(tmp_path):
    first = FirebirdServer(tmp_path / "fb", password="first'pw")  # a quote must survive the SQL
    with first:
        con = first.create_database(first.data_dir / "keep.fdb")
        con.close()
        pid = first.pid
    assert not pid_alive(pid) and port_is_free(first.port)
    assert (first.data_dir / "keep.fdb").exists()  # a given workdir is kept

    with FirebirdServer(tmp_path / "fb", port=first.port, password="second") as second:
        with second.connect(second.data_dir / "keep.fdb") as con:
            assert con.cursor().execute("select 1 from rdb$database").fetchall() == [(1,)]
        pid = second.pid
    assert not pid_alive(pid) and port_is_free(first.port)
