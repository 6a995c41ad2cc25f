"""Automation tests: Dagster instance storage (SQLite, PostgreSQL), concurrent processes against one DuckDB
index, and the daemon-driven sensor -> run -> Orthanc path, all with real components."""
