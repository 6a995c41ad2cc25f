"""Where the site configuration file is: ``--config``, else ``PACS_CONFIG``, else the first of the default paths.

This module imports nothing beyond the standard library: it is what a new process reads first (`pacs search`
finds its configuration without pydantic, cli/remembered_config.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from pacs_assets.errors import ConfigError

DEFAULT_CONFIG_PATHS = (Path("pacs.yaml"), Path("/etc/pacs_assets/pacs.yaml"))


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("PACS_CONFIG"):
        return Path(os.environ["PACS_CONFIG"])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    raise ConfigError(
        "No configuration found: set PACS_CONFIG to your pacs.yaml "
        f"(looked for {', '.join(str(p) for p in DEFAULT_CONFIG_PATHS)})."
    )
