"""Upload failures by category: what Dagster metadata may show when paths and messages may not."""

from __future__ import annotations

import re

UNREADABLE = "cannot read the file for upload"
_HTTP = re.compile(r"^HTTP (\d{3})\b")
_HTTP_LABELS = {400: "bad file format", 401: "credentials refused", 403: "forbidden", 404: "not found",
                409: "conflict", 413: "file too large", 429: "too many requests"}


def failure_category(message: str | None) -> str:
    """A short, fixed label for an upload failure's message (from ``_upload_one`` and OrthancClient.upload).

    The message itself may quote a file path, and NAS folders are often named after patients: the label is
    made only of words from this function, never of the message's own text.
    """
    message = message or ""
    if message.startswith(UNREADABLE):
        return "file unreadable"
    if message.endswith(": timed out"):
        return "timeout"
    if message.endswith(": connection failed"):
        return "connection failed"
    match = _HTTP.match(message)
    if not match:
        return "other"
    code = int(match.group(1))
    if code == 400 and not re.search(r"bad file format|cannot parse", message, re.IGNORECASE):
        return "HTTP 400 rejected"
    label = _HTTP_LABELS.get(code) or ("Orthanc error" if code >= 500 else None)
    return f"HTTP {code} {label}" if label else f"HTTP {code}"
