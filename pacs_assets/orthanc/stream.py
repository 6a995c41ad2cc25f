"""Streaming a body to ``POST /instances`` over one persistent ``http.client`` connection per thread.

Chosen by measurement (benchmarks/README.md): http.client costs the least client CPU per upload of the
HTTP layers tried (requests costs several times as much per small file). It opens the connection (TLS included); the
request and the answer go over its socket directly: the request head and a small body in one write (one
segment, one wake-up of Orthanc; http.client writes them apart), and the answer read without the e-mail
header parser. The body is sent in bounded chunks with ``Content-Length`` (never chunked transfer encoding)
and hashed (SHA-1) as it goes, so a file of several GB is read once and never held whole in memory.
TCP_NODELAY is set: a large body goes out in several writes, which Nagle's algorithm would hold back for the
server's delayed ACK.
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

ONE_WRITE = 256 * 1024  # a first chunk up to this size goes out with the head (one copy, one write)
RECV_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024


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
        host = self.host if ":" not in self.host else f"[{self.host}]"
        default_port = self.port == (443 if self.https else 80)
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {host}" + ("" if default_port else f":{self.port}"),
                 *(f"{name}: {value}" for name, value in self.headers.items()), "Content-Length: "]
        self._head = "\r\n".join(lines).encode("latin-1")  # + the length, then a blank line
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
            sock = conn.sock
            head = b"%s%d\r\n\r\n" % (self._head, body.length)
            for chunk in body.chunks():
                digest.update(chunk)
                if head:  # the head and a small body in one write: one segment on the wire
                    sock.sendall(head + chunk if len(chunk) <= ONE_WRITE else head)
                    if len(chunk) > ONE_WRITE:
                        sock.sendall(chunk)
                    head = b""
                else:
                    sock.sendall(chunk)
            if head:
                sock.sendall(head)
            status, data, will_close = read_response(sock)
            if will_close:
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
        return status, answer, digest.hexdigest()


def read_response(sock) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection) of one HTTP/1.x answer read from ``sock``.
    Raises what http.client would: RemoteDisconnected for a connection closed before any answer (a stale
    keep-alive connection), IncompleteRead, BadStatusLine or LineTooLong for a broken one."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD:
            raise http.client.LineTooLong("HTTP answer head")
        more = sock.recv(RECV_SIZE)
        if not more:
            if not buf:
                raise http.client.RemoteDisconnected("Remote end closed connection without response")
            raise http.client.IncompleteRead(bytes(buf))
        buf += more
    status_line, *lines = buf[:end].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise http.client.BadStatusLine(status_line)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    will_close = version == "HTTP/1.0" or "close" in headers.get("connection", "").lower()
    body = buf[end + 4:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return int(code), _read_chunked(sock, body), will_close
    length = headers.get("content-length")
    if length is None:  # the answer ends with the connection
        while more := sock.recv(RECV_SIZE):
            body += more
        return int(code), bytes(body), True
    want = int(length)
    while len(body) < want:
        more = sock.recv(max(RECV_SIZE, want - len(body)))
        if not more:
            raise http.client.IncompleteRead(bytes(body), want - len(body))
        body += more
    if len(body) > want:
        raise http.client.HTTPException("more bytes than the answer's Content-Length")
    return int(code), bytes(body), will_close


def _read_chunked(sock, buf: bytearray) -> bytes:
    out = bytearray()

    def line() -> bytes:
        nonlocal buf
        while (end := buf.find(b"\r\n")) < 0:
            more = sock.recv(RECV_SIZE)
            if not more:
                raise http.client.IncompleteRead(bytes(out))
            buf += more
        found, buf = bytes(buf[:end]), buf[end + 2:]
        return found

    while size := int(line().split(b";")[0], 16):
        while len(buf) < size + 2:
            more = sock.recv(RECV_SIZE)
            if not more:
                raise http.client.IncompleteRead(bytes(out))
            buf += more
        out += buf[:size]
        buf = buf[size + 2:]
    while line():  # trailers, up to the blank line
        pass
    return bytes(out)
