"""The work of ``dicom_index``: patients / studies / series / instances of a window, from the inventory.

The same concept on two layers: the SQL is index/hierarchy.py; this is the pipeline's one route to it, used by
the ``dicom_index`` asset and by the reconciliation alike."""

from __future__ import annotations

import datetime as dt
import os

from pacs_assets.index.hierarchy import rebuild_hierarchy


def build_hierarchy(index_path: str | os.PathLike, nas_id: str, start: dt.date, end: dt.date) -> dict[str, int]:
    """Replace the window's hierarchy rows in one transaction; returns the row count per table."""
    return rebuild_hierarchy(index_path, nas_id, start, end)
