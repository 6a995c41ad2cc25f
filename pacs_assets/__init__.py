"""pacs_assets: hospital NAS devices -> DuckDB index -> Orthanc PACS, as Dagster asset graphs.

The code location is ``pacs_assets.definitions`` (``defs``, built from $PACS_CONFIG); the Dagster layer
is the ``pacs_assets.defs`` package. Importing ``pacs_assets`` itself loads neither, so the ``pacs`` CLI
works before any configuration exists.
"""
