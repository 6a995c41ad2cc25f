"""The work of each asset as plain functions, with no Dagster import: inventory, hierarchy, upload, arrivals
and the checks. The Dagster layer (``pacs_assets.defs``) and the benchmarks call these."""
