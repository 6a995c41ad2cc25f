"""The Dagster code location, built from the site configuration ($PACS_CONFIG; see config.py)."""

from pacs_assets.config import load_config
from pacs_assets.defs.definitions import build_definitions

defs = build_definitions(load_config())
