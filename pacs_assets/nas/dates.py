"""Which daily partition (procedure date) a file belongs to.

The procedure date is the DICOM StudyDate. A file is never lost for want of one: when the StudyDate is
missing, malformed or outside the partition range, the first usable of these is taken and the choice
is recorded in ``date_source``:

1. ``study_date``       StudyDate, if valid and within [partitions_start, today]
2. ``series_date``      SeriesDate, same rules
3. ``file_mtime``       the file's modification date, same rules
4. ``partitions_start`` the first partition (so even a 1970 mtime lands somewhere visible)
"""

from __future__ import annotations

import datetime as dt


def parse_da(value: str | None) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD, also the old YYYY.MM.DD) as a date, or None if it is not one."""
    if not value:
        return None
    text = str(value).strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def assign_procedure_date(
    study_date: str | None,
    series_date: str | None,
    mtime_ns: int,
    start: dt.date,
    today: dt.date,
) -> tuple[dt.date, str]:
    for source, candidate in (("study_date", parse_da(study_date)), ("series_date", parse_da(series_date))):
        if candidate is not None and start <= candidate <= today:
            return candidate, source
    mtime_date = dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.timezone.utc).date() if mtime_ns else None
    if mtime_date is not None and start <= mtime_date <= today:
        return mtime_date, "file_mtime"
    return start, "partitions_start"
