"""The read-only queries behind search/status/history, on a real index materialized against a real Orthanc."""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import pytest

from pacs_assets.index import connection, queries
from pacs_assets_tests.harness import running_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running_site(tmp_path_factory.mktemp("queries")) as (site, _orthanc):
        yield site


@pytest.fixture
def con(site):
    with connection.session(site.index, read_only=True) as con:
        yield con


def found_ids(con, **kw) -> set[str]:
    patients, total = queries.find_patients(con, queries.SearchQuery(**kw))
    assert total == len(patients)
    return {p["patient_id"] for p in patients}


@pytest.mark.parametrize(("name", "key"), [
    ("Müller^Jürgen", "muller^jurgen"),
    ("ÇELİK^Şule", "celik^sule"),
    ("Straße^Łukasz", "strasse^lukasz"),
    ("Østergård^Æbbe", "ostergard^aebbe"),
    ("Παπαδοπούλου^Ελένη", "παπαδοπουλου^ελενη"),
    ("Doe^Jane", "doe^jane"),
    (None, None),
])
def test_name_key_folds_case_accents_and_special_letters(name, key):
    with duckdb.connect() as con:
        assert con.execute(f"SELECT {queries.name_key_sql('$n')}", {"n": name}).fetchall() == [(key,)]


def test_query_words_split_on_dicom_separators():
    assert queries.query_words(" Müller^Jürgen  =山田, x ") == ["Müller", "Jürgen", "山田", "x"]
    assert queries.query_words(None) == []


def test_names_match_partially_in_any_order_without_accents_in_every_script(con, site):
    mueller = {"S0-00001", "S1-00001"}  # Müller^Jürgen on both NAS, with different patient IDs
    for name in ["mull", "MÜLLER", "jurgen muller", "Jürgen^Müller", "mueller", "juergen", "LLER jür"]:
        assert found_ids(con, name=name) == mueller, name
    for name in ["ελένη", "ΕΛΕΝΗ", "παπαδοπουλου ελενη", "ελεν"]:
        assert found_ids(con, name=name) == {"S0-00002", "S1-00002"}, name
    for name in ["山田", "やまだ", "tarou yamada", "太郎 山田", "Yamada^Tarou"]:
        assert found_ids(con, name=name) == {"S0-00003", "S1-00003"}, name
    for name in ["schmidt", "jane muller", "papadopoulou", "müllerx", "jurgen yamada"]:
        assert found_ids(con, name=name) == set(), name


def test_patient_id_exact_or_prefix_and_exact_first(con):
    assert found_ids(con, patient_id="S0-00001") == {"S0-00001"}
    assert found_ids(con, patient_id="s1-0000") == {f"S1-0000{i}" for i in range(1, 6)}
    patients, total = queries.find_patients(con, queries.SearchQuery(patient_id="S0-00001", limit=1))
    assert [p["patient_id"] for p in patients] == ["S0-00001"] and total == 1


def test_modality_and_date_filters_apply_to_studies(con, site):
    every = queries.find_patients(con, queries.SearchQuery(name="doe"))[0]
    assert {m for p in every for s in p["studies"] for m in s["modalities"].split(",")} == {"CT", "MR"}
    only_mr = queries.find_patients(con, queries.SearchQuery(name="doe", modality="mr"))[0]
    assert only_mr and all(s["modalities"] == "MR" for p in only_mr for s in p["studies"])
    day = min(site.manifests["mr"].procedure_dates)
    dated = queries.find_patients(con, queries.SearchQuery(patient_id="S", date_from=day, date_to=day))[0]
    studies = [s for p in dated for s in p["studies"]]
    expected = site.query("SELECT count(*) FROM studies WHERE partition_date = ?", [day])[0][0]
    assert len(studies) == expected > 0 and all(s["partition_date"] == day for s in studies)


def test_limit_cuts_patients_and_reports_the_total(con, site):
    everyone = site.query("SELECT count(DISTINCT patient_id) FROM patients")[0][0]
    patients, total = queries.find_patients(con, queries.SearchQuery(patient_id="S", limit=3))
    assert len(patients) == 3 and total == everyone == 13


def test_each_study_found_counts_its_files_in_orthanc_as_file_status_does(con, site):
    patients, _ = queries.find_patients(con, queries.SearchQuery(patient_id="S", limit=100))
    counts = {(s["nas_id"], s["partition_date"], s["study_instance_uid"]): (s["instance_count"], s["files_in_orthanc"])
              for p in patients for s in p["studies"]}
    expected = site.query("""
        SELECT i.nas_id, i.partition_date, i.study_instance_uid, count(*),
               count(*) FILTER (WHERE s.status IN ('imported', 'duplicate'))
        FROM instances i JOIN file_status s USING (nas_id, file_path)
        GROUP BY ALL""")
    assert counts == {(n, d, u): (files, ok) for n, d, u, files, ok in expected}
    assert all(files == ok for files, ok in counts.values())  # the sample imports completely


def test_nas_status_equals_file_status(con, site):
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    got = queries.nas_status(con, None, now - dt.timedelta(minutes=10))
    assert set(got) == {"ct", "mr"}
    for (nas, status, n) in site.query("SELECT nas_id, status, count(*) FROM file_status GROUP BY ALL"):
        assert got[nas][status] == n
    for nas in got:
        assert got[nas]["found"] == site.query("SELECT count(*) FROM inventory WHERE nas_id = ?", [nas])[0][0]
        assert got[nas]["indexed"] == site.query("SELECT count(*) FROM instances WHERE nas_id = ?", [nas])[0][0]
        attempts = site.query("SELECT count(*) FROM import_history WHERE nas_id = ?", [nas])[0][0]
        assert got[nas]["recent_attempts"] == attempts  # all of them just now
    assert set(queries.nas_status(con, "mr", now)) == {"mr"}


def test_history_pages_cover_the_ledger_once_newest_first(con, site):
    total = site.query("SELECT count(*) FROM import_history")[0][0]
    seen = []
    for page in range(1, math.ceil(total / 7) + 1):
        rows, n = queries.history_page(con, queries.HistoryQuery(page=page, page_size=7))
        assert n == total and 0 < len(rows) <= 7
        seen += [r["attempt_id"] for r in rows]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == total
    rows, n = queries.history_page(con, queries.HistoryQuery(status="duplicate", nas_id="ct"))
    assert n == len(rows) == 1 and rows[0]["status"] == "duplicate"
    study = site.query("SELECT study_instance_uid FROM import_history LIMIT 1")[0][0]
    rows, n = queries.history_page(con, queries.HistoryQuery(study_uid=study, patient_id="S"))
    assert n > 0 and all(r["study_instance_uid"] == study for r in rows)
    tomorrow = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=1)
    assert queries.history_page(con, queries.HistoryQuery(finished_from=tomorrow)) == ([], 0)
