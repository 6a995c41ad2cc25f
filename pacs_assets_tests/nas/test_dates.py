import datetime as dt

import pytest

from pacs_assets.nas.dates import assign_procedure_date, parse_da

START, TODAY = dt.date(2020, 1, 1), dt.date(2026, 6, 30)
MTIME = int(dt.datetime(2023, 5, 6, 12, tzinfo=dt.timezone.utc).timestamp() * 1e9)


@pytest.mark.parametrize("study, series, mtime, expected", [
    ("20240102", None, MTIME, (dt.date(2024, 1, 2), "study_date")),
    ("2024.01.02", None, MTIME, (dt.date(2024, 1, 2), "study_date")),
    ("20241345", "20240103", MTIME, (dt.date(2024, 1, 3), "series_date")),
    (None, None, MTIME, (dt.date(2023, 5, 6), "file_mtime")),
    ("21990101", "21990101", MTIME, (dt.date(2023, 5, 6), "file_mtime")),
    ("19990101", None, MTIME, (dt.date(2023, 5, 6), "file_mtime")),
    ("junk", None, 0, (START, "partitions_start")),
    (None, None, int(dt.datetime(1975, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1e9), (START, "partitions_start")),
])
def test_fallbacks(study, series, mtime, expected):
    assert assign_procedure_date(study, series, mtime, START, TODAY) == expected


def test_parse_da_rejects_what_is_not_a_date():
    assert parse_da("20240230") is None
    assert parse_da("2024010") is None
    assert parse_da("") is None
    assert parse_da("20240229") == dt.date(2024, 2, 29)
