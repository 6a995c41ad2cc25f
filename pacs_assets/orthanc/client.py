"""The REST client of one Orthanc node (reads: orthanc/api.py; several nodes: orthanc/nodes.py): uploads with
persistent sessions, timeouts and retries that only retry what can succeed.

Retried: connection errors, timeouts, 5xx, and 409 (a concurrent identical upload). Never retried: 4xx,
which Orthanc uses for a file it cannot parse — retrying junk wastes hours (seen in a public importer).

``AlreadyStored`` means Orthanc holds an instance with the same four identifiers, not the same bytes: the
client asks for the MD5 Orthanc keeps with its copy (one small request, only then) and answers
``duplicate`` for the same bytes, ``uid_conflict`` for a different file reusing the UIDs. One exception:
when an earlier try of the same upload went out and lost its answer (a timeout, a reset, a node killed
after the body arrived: ``NoAnswer``), the same bytes were most likely stored by that try, so the upload is
``imported`` with ``CONFIRMED`` as its note (``answer_lost``); the pipeline still records it ``duplicate``
when another file already holds the instance (pipeline/upload.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import random
import socket
import threading
import time

import requests
from requests.adapters import HTTPAdapter

from pacs_assets.errors import UploadBodyError
from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.stream import BytesBody, NoAnswer, Poster

RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}
CONFIRMED = "confirmed after a lost answer: Orthanc already held these exact bytes from this upload's earlier try"
REFUSED = "Orthanc at {url} refused the credentials (HTTP 401): check {names[0]} / {names[1]}."


class OrthancUnavailable(RuntimeError):
    """Orthanc cannot be reached or refuses our credentials; the message is one sentence."""


class OrthancRefused(OrthancUnavailable):
    """Orthanc answered, and the answer will not change by waiting (HTTP 401, a server that is not Orthanc):
    a person must fix the configuration, so nobody retries it."""


@dataclasses.dataclass
class UploadResult:
    status: str  # imported | duplicate | uid_conflict | failed
    orthanc_instance_id: str | None = None
    error_message: str | None = None
    retryable: bool = False
    attempts: int = 1
    http_status: int | None = None
    file_hash: str | None = None  # SHA-1 of the bytes sent
    node: str | None = None  # the Orthanc URL that answered (several nodes may share one index)
    answer_lost: bool = False  # a try went out and no answer came: Orthanc may hold the file from it


class OrthancClient(OrthancApi):
    """One Orthanc node."""

    def __init__(self, url: str, username: str | None, password: str | None, *, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.5, connect_retries: int | None = None,
                 credential_names: tuple[str, str] = ("ORTHANC_USERNAME", "ORTHANC_PASSWORD")):
        self.url = url.rstrip("/")
        self.auth = (username, password) if username else None
        self.credential_names = credential_names  # the variables a refusal (401) tells the operator to check
        self.timeout = timeout
        self.retries = retries  # for answers that can succeed later: 5xx (a 503 serialization failure), 409, 429
        # For no answer at all (refused, reset, timeout); default ``retries``. Several nodes set 1: a node that
        # does not answer is skipped for the next one instead of being waited for (orthanc/nodes.py).
        self.connect_retries = retries if connect_retries is None else connect_retries
        self.backoff = backoff
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One persistent session per thread (requests sessions are not thread-safe)."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            # What requests reads from the environment on every call (proxies, CA bundle, .netrc: ~0.3 ms of CPU
            # each time, measured), read once: the session serves one address.
            env = s.merge_environment_settings(self.url, {}, None, None, None)  # requests' own rules, once
            s.proxies, s.verify, s.cert = env["proxies"], env["verify"], env["cert"]
            s.auth = self.auth or requests.utils.get_netrc_auth(self.url)
            s.trust_env = False
            s.mount(self.url, HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            self._local.session = s
        return s

    def _get(self, path: str, **kw) -> requests.Response:
        return self.session.get(f"{self.url}{path}", timeout=self.timeout, **kw)

    def _pause(self, attempt: int) -> None:
        """Jittered exponential backoff before attempt ``attempt + 1``."""
        time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def _request(self, method: str, path: str, what: str, *, params: dict | None = None,
                 json: dict | None = None, missing_ok: bool = False,
                 data: bytes | None = None) -> requests.Response | None:
        """One REST call, retried on what can succeed later (no answer, 5xx, 429); every failure is one
        sentence naming the address and the endpoint."""
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.session.request(method, f"{self.url}{path}", params=params, json=json, data=data,
                                            timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                kind = "did not answer in time" if isinstance(exc, requests.Timeout) else "is unreachable"
                error, retryable, limit = f"Orthanc at {self.url} {kind} ({method} {what}).", True, self.connect_retries
            else:
                limit = self.retries
                if resp.status_code == 200:
                    return resp
                if resp.status_code == 404 and missing_ok:
                    return None
                if resp.status_code == 401:
                    raise OrthancRefused(REFUSED.format(url=self.url, names=self.credential_names))
                error = f"Orthanc at {self.url} answered HTTP {resp.status_code} to {method} {what}."
                retryable = resp.status_code >= 500 or resp.status_code == 429
            if not retryable or attempt > limit:
                raise OrthancUnavailable(error)
            self._pause(attempt)

    def system(self) -> dict:
        """GET /system, turning every failure into one sentence naming the address."""
        try:
            resp = self._get("/system")
        except requests.ConnectionError:
            raise OrthancUnavailable(
                f"Orthanc at {self.url} is unreachable (connection refused or no route).") from None
        except requests.Timeout:
            raise OrthancUnavailable(f"Orthanc at {self.url} did not answer within {self.timeout:.0f} s.") from None
        if resp.status_code == 401:
            raise OrthancRefused(REFUSED.format(url=self.url, names=self.credential_names))
        if resp.status_code != 200:
            raise OrthancUnavailable(f"Orthanc at {self.url} answered HTTP {resp.status_code} to GET /system.")
        try:
            return resp.json()
        except ValueError:
            raise OrthancRefused(f"{self.url} answered GET /system with something that is not Orthanc.") from None

    @property
    def poster(self) -> Poster:
        poster = getattr(self, "_poster", None)
        if poster is None:
            auth = self.auth or (None, None)
            poster = self._poster = Poster(self.url, auth[0], auth[1], self.timeout)
        return poster

    def upload(self, body, md5: str | None = None, *, answer_lost: bool = False) -> UploadResult:
        """POST /instances, streaming ``body`` (an UploadBody, see nas/body.py; or bytes), with retries and
        jittered exponential backoff on what can succeed later.

        On ``AlreadyStored``, the MD5 of the body (``md5``, or computed then by reading it again) is compared
        with Orthanc's copy: ``duplicate`` for the same bytes, ``uid_conflict`` (never retried) for another file;
        ``imported`` (``CONFIRMED``) for the same bytes after a try whose answer was lost, here or, with
        ``answer_lost``, on another node of the same index.
        """
        if isinstance(body, (bytes, bytearray)):
            body = BytesBody(body)
        result = self._post(body)
        if answer_lost:
            result = dataclasses.replace(result, answer_lost=True)
        if result.status != "duplicate":
            return result
        try:
            stored = self.stored_md5(result.orthanc_instance_id)
            if stored is None:  # Orthanc keeps no MD5: hash its copy instead (a download, rare configurations)
                stored = hashlib.md5(self.instance_file(result.orthanc_instance_id)).hexdigest()
            ours = md5 or body.md5()
        except (OrthancUnavailable, requests.RequestException, OSError) as exc:
            return dataclasses.replace(result, status="failed", retryable=True, error_message=(
                f"Orthanc already holds these UIDs; comparing with its copy failed: {str(exc)[:160]}"))
        if stored == ours:
            if result.answer_lost:  # the bytes Orthanc holds are most likely from our own earlier try
                return dataclasses.replace(result, status="imported", error_message=CONFIRMED)
            return result
        return dataclasses.replace(result, status="uid_conflict", error_message=(
            "same UIDs as a file Orthanc already holds, different bytes: Orthanc kept its copy"))

    def _post(self, body) -> UploadResult:
        attempt, lost = 0, False
        while True:
            attempt += 1
            try:
                status, answer, sha1 = self.poster.post(body)
            except UploadBodyError as exc:  # the file changed since indexing: a later run reads it again
                return UploadResult("failed", error_message=str(exc), retryable=True, attempts=attempt,
                                    node=self.url, answer_lost=lost)
            except (OSError, http.client.HTTPException) as exc:
                lost = lost or isinstance(exc, NoAnswer)
                cause = exc.__cause__ if isinstance(exc, NoAnswer) else exc
                kind = "timed out" if isinstance(cause, TimeoutError | socket.timeout) else "connection failed"
                result = UploadResult("failed", error_message=f"Orthanc at {self.url}: {kind}", retryable=True,
                                      attempts=attempt, node=self.url, answer_lost=lost)
            else:
                result = dataclasses.replace(self._interpret(status, answer, attempt), file_hash=sha1,
                                             node=self.url, answer_lost=lost)
            limit = self.retries if result.http_status is not None else self.connect_retries
            if not result.retryable or result.http_status == 401 or attempt > limit:
                return result
            self._pause(attempt)

    @staticmethod
    def _interpret(status_code: int, answer: object, attempt: int) -> UploadResult:
        if status_code == 200 and isinstance(answer, (dict, list)):
            body = answer[0] if isinstance(answer, list) else answer
            status = "duplicate" if body.get("Status") == "AlreadyStored" else "imported"
            return UploadResult(status, orthanc_instance_id=body.get("ID"), attempts=attempt, http_status=200)
        if isinstance(answer, dict):
            message = answer.get("Details") or answer.get("Message") or str(answer)[:200]
        else:
            message = str(answer)[:200] or f"HTTP {status_code}"
        if status_code == 401:
            message = "Orthanc refused the credentials (HTTP 401)"
        return UploadResult("failed", error_message=f"HTTP {status_code}: {message}",
                            retryable=status_code in RETRYABLE_STATUS or status_code == 401,
                            attempts=attempt, http_status=status_code)
