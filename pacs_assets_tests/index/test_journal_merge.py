"""Merging upload journals inside a transaction the upload step shares with its other bookkeeping
(index/journal.py ``merging_journals``): a journal goes only once its rows are committed."""

from __future__ import annotations

import datetime as dt

import pytest

from pacs_assets.index.connection import session, transaction
from pacs_assets.index.journal import Journal, journal_dir, merge_journals, merging_journals

NAS_ID = "ct"


def _answered(journal: Journal, path: str) -> None:
    key = journal.new_key()
    started = dt.datetime(2024, 3, 1, 12)
    journal.started(key, NAS_ID, path, "t", f"id-{path}", started, None)
    journal.answered({"attempt_key": key, "nas_id": NAS_ID, "file_path": path, "change_token": "t",
                      "status": "imported", "orthanc_instance_id": f"id-{path}", "partition_date": dt.date(2024, 3, 1),
                      "retryable": False, "attempts": 1, "http_status": 200, "started_at": started,
                      "finished_at": started})


def test_a_merge_rolled_back_keeps_its_journal_for_the_next_one(tmp_path):
    index = tmp_path / "index.duckdb"
    journal = Journal(index)
    _answered(journal, "a.dcm")
    journal.close()

    with pytest.raises(RuntimeError), merging_journals(index, own=journal.path) as merge, transaction(index) as con:
        merge(con)
        raise RuntimeError("the step's other bookkeeping failed")  # the transaction rolls back

    assert journal.path.exists()
    with session(index) as con:
        assert con.execute("SELECT count(*) FROM import_history").fetchall() == [(0,)]
    assert merge_journals(index, own=journal.path) == 1
    with session(index) as con:
        assert con.execute("SELECT file_path, status FROM import_history").fetchall() == [("a.dcm", "imported")]
    assert list(journal_dir(index).iterdir()) == []


def test_an_upload_that_sent_nothing_does_not_open_the_index_to_merge(tmp_path):
    index = tmp_path / "index.duckdb"
    journal = Journal(index)
    journal.close()  # no line: nothing was sent

    assert merge_journals(index, own=journal.path) == 1
    assert not journal.path.exists()
    assert not index.exists()  # no session was opened (opening read-write would have created the file)
