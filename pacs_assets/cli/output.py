"""How every ``pacs`` command prints: one JSON document (``--json``) or its own rendering, and a reader that
goes away early is not an error."""

from __future__ import annotations

import json
import os
import sys


def write_output(render, *args) -> None:
    """Print through ``render``; a reader that goes away early (``| head``) is not an error."""
    try:
        render(*args)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def print_json(document: dict) -> None:
    print(json.dumps(document, ensure_ascii=False, indent=2, default=str))
