"""Streaming a body to ``POST /instances`` over one persistent ``http.client`` connection per thread.

Chosen by measurement (benchmarks/README.md): http.client costs the least client CPU per upload of the
HTTP layers tried (0.4 ms per 9 KB file, ~1.5 ms for requests). The body is sent in bounded chunks
with ``Content-Length`` (never chunked transfer encoding) and hashed (SHA-1) as it goes, so a file of
several GB is read once and never held whole in memory. TCP_NODELAY is set: http.client sends the head
and the body in separate writes, which Nagle's algorithm would hold back for the server's delayed ACK.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import threading
from urllib.parse import urlsplit

from pacs_assets.errors import UploadBodyError


class _NoDelayConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayHTTPS(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BytesBody:
    """A body already in memory, with the interface of nas/body.py's UploadBody."""

    def __init__(self, data: bytes):
        self.data, self.length = bytes(data), len(data)

    def chunks(self):
        yield self.data

    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()


class StaleConnection(Exception):
    """A reused keep-alive connection that the server had closed: resend at once on a new one."""


class NoAnswer(OSError):
    """The request went out (all or part of it) and no answer came back: Orthanc may have stored the file with
    its answer lost (a node killed or a connection cut after the body arrived). Its cause is the network
    error; a failure before anything was sent (no connection) is raised as it is."""


class Poster:
    """``post(body)`` -> (http status, parsed JSON or text, SHA-1 of the bytes sent). Raises OSError or
    http.client.HTTPException when no answer came; the caller decides about retries."""

    def __init__(self, url: str, username: str | None, password: str | None, timeout: float):
        parts = urlsplit(url.rstrip("/"))
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.path = (parts.path or "") + "/instances"
        self.timeout = timeout
        self.headers = {"Content-Type": "application/dicom", "Accept": "application/json"}
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self._local = threading.local()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        conn = (_NoDelayHTTPS if self.https else _NoDelayConnection)(self.host, self.port, timeout=self.timeout)
        conn.connect()
        self._local.conn = conn
        return conn, False

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def post(self, body) -> tuple[int, object, str]:
        """Raises NoAnswer when the request may have reached Orthanc, OSError when it cannot have."""
        try:
            return self._post_once(body)
        except StaleConnection as stale:
            # Usually an idle connection the server closed; but a node killed while reading our request
            # looks the same, so a failure of the resend still leaves the first try's outcome unknown.
            try:
                return self._post_once(body)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, NoAnswer | UploadBodyError):
                    raise
                raise NoAnswer(str(exc)) from stale.__cause__

    def _post_once(self, body) -> tuple[int, object, str]:
        conn, reused = self._connection()
        digest = hashlib.sha1()
        try:
            conn.putrequest("POST", self.path, skip_accept_encoding=True)
            for name, value in self.headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(body.length))
            first = True
            for chunk in body.chunks():
                digest.update(chunk)
                if first:  # the head and a small body in one write: one segment on the wire
                    conn.endheaders(message_body=chunk)
                    first = False
                else:
                    conn.sock.sendall(chunk)
            if first:
                conn.endheaders()
            resp = conn.getresponse()
            data = resp.read()
            if resp.will_close:
                self.close()
        except BaseException as exc:
            self.close()  # half a request on the wire: this connection is unusable
            if reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                raise StaleConnection() from exc
            if isinstance(exc, UploadBodyError) or not isinstance(exc, OSError | http.client.HTTPException):
                raise  # the file, not the network: nothing complete was sent
            raise NoAnswer(str(exc) or type(exc).__name__) from exc
        answer: object = data.decode("utf-8", "replace")
        if data[:1] in (b"{", b"["):  # Orthanc's 4xx answers are JSON but not always labelled so
            try:
                answer = json.loads(data)
            except ValueError:
                pass
        return resp.status, answer, digest.hexdigest()
