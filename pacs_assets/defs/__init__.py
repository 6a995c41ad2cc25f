"""The Dagster layer: asset factory, checks, automation (partitions, sensors, schedules), resources and the
definitions. Only thin wrappers live here; the work is in ``pacs_assets.pipeline``."""
