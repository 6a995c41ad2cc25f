"""Partitions and run windows: every NAS's assets share its daily partitions, keyed by procedure date."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from dagster import DailyPartitionsDefinition

from pacs_assets.config import NasConfig

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def nas_partitions(nas: NasConfig, timezone: str) -> DailyPartitionsDefinition:
    # end_offset=1: today's partition exists, so today's procedures can be imported today.
    return DailyPartitionsDefinition(start_date=nas.partitions_start.isoformat(), end_offset=1, timezone=timezone)


def range_tags(first: str, last: str) -> dict[str, str]:
    return {RANGE_START: first, RANGE_END: last}


def run_window(tags: Mapping[str, str], nas: NasConfig) -> tuple[dt.date, dt.date]:
    """The procedure dates [start, end) a run materialized, from its partition tags; all of them if none."""
    first = tags.get("dagster/partition") or tags.get(RANGE_START)
    last = tags.get("dagster/partition") or tags.get(RANGE_END)
    if not first or not last:
        return nas.partitions_start, dt.date.max
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last) + dt.timedelta(days=1)
