"""The Orthanc REST client: uploads with persistent sessions, timeouts and retries that only retry what can succeed.

Retried: connection errors, timeouts, 5xx, and 409 (a concurrent identical upload). Never retried: 4xx,
which Orthanc uses for a file it cannot parse — retrying junk wastes hours (FIELD_NOTES).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import threading
import time

import requests
from requests.adapters import HTTPAdapter

RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}


class OrthancUnavailable(RuntimeError):
    """Orthanc cannot be reached or refuses our credentials; the message is one sentence."""


class OrthancRefused(OrthancUnavailable):
    """Orthanc answered, and the answer will not change by waiting (HTTP 401, a server that is not Orthanc):
    a person must fix the configuration, so nobody retries it."""


@dataclasses.dataclass
class UploadResult:
    status: str  # imported | duplicate | failed
    orthanc_instance_id: str | None = None
    error_message: str | None = None
    retryable: bool = False
    attempts: int = 1
    http_status: int | None = None


def orthanc_instance_id(patient_id: str | None, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's deterministic ID of an instance: SHA-1 of the four identifiers, 5 groups of 8 hex digits."""
    digest = hashlib.sha1(f"{patient_id or ''}|{study_uid}|{series_uid}|{sop_uid}".encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


class OrthancClient:
    def __init__(self, url: str, username: str | None, password: str | None, *, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.5):
        self.url = url.rstrip("/")
        self.auth = (username, password) if username else None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One persistent session per thread (requests sessions are not thread-safe)."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.auth = self.auth
            s.mount(self.url, HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            self._local.session = s
        return s

    def _get(self, path: str, **kw) -> requests.Response:
        return self.session.get(f"{self.url}{path}", timeout=self.timeout, **kw)

    def get_json(self, path: str, what: str | None = None, params: dict | None = None, *,
                 missing_ok: bool = False):
        """GET a JSON answer, retrying what can succeed later. ``what`` names the endpoint without any ID
        (default: the path).

        Returns None for a 404 when ``missing_ok`` (an instance deleted since it arrived); raises
        OrthancUnavailable with one sentence otherwise.
        """
        what = what or path
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                kind = "did not answer in time" if isinstance(exc, requests.Timeout) else "is unreachable"
                error, retryable = f"Orthanc at {self.url} {kind} (GET {what}).", True
            else:
                if resp.status_code == 200:
                    return resp.json()
                if resp.status_code == 404 and missing_ok:
                    return None
                if resp.status_code == 401:
                    raise OrthancRefused(f"Orthanc at {self.url} refused the credentials (HTTP 401): "
                                             "check ORTHANC_USERNAME / ORTHANC_PASSWORD.")
                error = f"Orthanc at {self.url} answered HTTP {resp.status_code} to GET {what}."
                retryable = resp.status_code >= 500 or resp.status_code == 429
            if not retryable or attempt > self.retries:
                raise OrthancUnavailable(error)
            time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def system(self) -> dict:
        """GET /system, turning every failure into one sentence naming the address."""
        try:
            resp = self._get("/system")
        except requests.ConnectionError:
            raise OrthancUnavailable(f"Orthanc at {self.url} is unreachable (connection refused or no route).") from None
        except requests.Timeout:
            raise OrthancUnavailable(f"Orthanc at {self.url} did not answer within {self.timeout:.0f} s.") from None
        if resp.status_code == 401:
            raise OrthancRefused(
                f"Orthanc at {self.url} refused the credentials (HTTP 401): check ORTHANC_USERNAME / ORTHANC_PASSWORD.")
        if resp.status_code != 200:
            raise OrthancUnavailable(f"Orthanc at {self.url} answered HTTP {resp.status_code} to GET /system.")
        try:
            return resp.json()
        except ValueError:
            raise OrthancRefused(f"{self.url} answered GET /system with something that is not Orthanc.") from None

    def statistics(self) -> dict:
        return self._get("/statistics").json()

    def instance_file(self, orthanc_id: str) -> bytes:
        """The DICOM file Orthanc stores for an instance."""
        resp = self._get(f"/instances/{orthanc_id}/file")
        resp.raise_for_status()
        return resp.content

    def instance_exists(self, orthanc_id: str) -> bool:
        return self._get(f"/instances/{orthanc_id}").status_code == 200

    def lookup_existing(self, orthanc_ids: list[str]) -> set[str]:
        """Which of these instance IDs Orthanc already holds (one request per ID, on the persistent session)."""
        return {i for i in orthanc_ids if self.instance_exists(i)}

    def find_instance_ids(self, sop_instance_uids: list[str]) -> set[str]:
        """Orthanc IDs of the instances with these SOP Instance UIDs, in one ``POST /tools/find`` (Orthanc 1.10.1
        matches a backslash-separated list of UIDs). Keep lists to ~100: 100 take ~60 ms, 1,000 take ~2.5 s."""
        if not sop_instance_uids:
            return set()
        try:
            resp = self.session.post(f"{self.url}/tools/find", timeout=self.timeout, json={
                "Level": "Instance", "Query": {"SOPInstanceUID": "\\".join(sop_instance_uids)}})
        except (requests.ConnectionError, requests.Timeout):
            raise OrthancUnavailable(f"Orthanc at {self.url} is unreachable (connection refused or no route).") from None
        if resp.status_code == 401:
            raise OrthancRefused(f"Orthanc at {self.url} refused the credentials (HTTP 401).")
        resp.raise_for_status()
        return set(resp.json())

    def upload(self, data: bytes) -> UploadResult:
        """POST /instances with retries and jittered exponential backoff on what can succeed later."""
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.session.post(f"{self.url}/instances", data=data, timeout=self.timeout,
                                         headers={"Content-Type": "application/dicom"})
            except (requests.ConnectionError, requests.Timeout) as exc:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
                result = UploadResult("failed", error_message=f"Orthanc at {self.url}: {kind}", retryable=True,
                                      attempts=attempt)
            else:
                result = self._interpret(resp, attempt)
            if not result.retryable or result.http_status == 401 or attempt > self.retries:
                return result
            time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))

    @staticmethod
    def _interpret(resp: requests.Response, attempt: int) -> UploadResult:
        if resp.status_code == 200:
            body = resp.json()
            body = body[0] if isinstance(body, list) else body
            status = "duplicate" if body.get("Status") == "AlreadyStored" else "imported"
            return UploadResult(status, orthanc_instance_id=body.get("ID"), attempts=attempt, http_status=200)
        try:
            body = resp.json()
            message = body.get("Details") or body.get("Message") or resp.text[:200]
        except ValueError:
            message = resp.text[:200] or resp.reason
        if resp.status_code == 401:
            message = "Orthanc refused the credentials (HTTP 401)"
        return UploadResult("failed", error_message=f"HTTP {resp.status_code}: {message}",
                            retryable=resp.status_code in RETRYABLE_STATUS or resp.status_code == 401,
                            attempts=attempt, http_status=resp.status_code)


def client_from_config(cfg, *, timeout: float | None = None, retries: int | None = None,
                       backoff: float = 0.5) -> OrthancClient:
    """The one place a client is built from the site's ``orthanc:`` block; credentials from the environment."""
    return OrthancClient(cfg.url, os.environ.get(cfg.username_env), os.environ.get(cfg.password_env),
                         timeout=cfg.timeout_seconds if timeout is None else timeout,
                         retries=cfg.retries if retries is None else retries, backoff=backoff)
