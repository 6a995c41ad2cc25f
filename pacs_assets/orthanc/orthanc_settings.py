"""The Orthanc settings: the ``orthanc:`` block of pacs.yaml, declared once.

Everything else is built from this model: the Dagster resource *is* it (defs/resources.py subclasses it and
adds only the two credentials, resolved by Dagster from the variables named here), and ``connect``
(orthanc/connect.py) turns it into a client of one node or several. A new option is one field here plus its use.
Credentials are never a setting: the settings name the environment variables that hold them.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OrthancSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "http://127.0.0.1:8042"
    # More Orthanc nodes sharing the index (PostgreSQL) and storage of ``url``: uploads spread across all.
    more_urls: list[str] = Field(default_factory=list)
    username_env: str = "ORTHANC_USERNAME"  # names of the environment variables holding the credentials
    password_env: str = "ORTHANC_PASSWORD"
    timeout_seconds: float = 60.0
    concurrency: int = Field(default=4, ge=1, le=32)
    retries: int = Field(default=4, ge=0, le=20)
    run_retries: int = Field(default=2, ge=0, le=10)  # Dagster step retries when Orthanc is down
    run_retry_delay_seconds: float = Field(default=60.0, ge=0)
    # Before an upload starts, how long to wait (sleeping, with backoff) for an Orthanc that does not answer.
    outage_wait_seconds: float = Field(default=120.0, ge=0)
    changes_sensor_interval_seconds: int = Field(default=30, ge=5)  # orthanc_changes_sensor
    dicom_aet: str = "ORTHANC"
    dicom_port: int = 4242

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("more_urls")
    @classmethod
    def _all_http(cls, values: list[str]) -> list[str]:
        return [cls._http(v) for v in values]

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.more_urls]

    def credentials_from_environment(self) -> tuple[str | None, str | None]:
        """(user, password) from the variables named by ``username_env`` / ``password_env``, for the command
        line; Dagster resolves the same variables itself (``EnvVar``), so its UI shows names, never secrets."""
        return os.environ.get(self.username_env), os.environ.get(self.password_env)
