"""A node that dies after storing a file, at chosen uploads and without timing luck: HTTP proxies on
127.0.0.1 in front of the nodes of a cluster (services/orthanc_cluster.py).

``LostAnswers(urls, drop_at={10, 30, ...})`` gives one proxy URL per node. From the Nth ``POST /instances``
on (N in ``drop_at``, counted over all nodes), the next upload is a candidate: it is forwarded to Orthanc and,
if Orthanc stored it (``"Status": "Success"``), the client's connection is reset instead of answering: the
answer is lost, as when a node is killed between its commit and its reply. A candidate Orthanc did not store
(a 503 after colliding with the other node's transactions, which can take seconds when both write one
series) is answered as it is, and the next upload becomes the candidate: a drop point is never spent on a
file Orthanc did not keep, and the node is not "dead" while Orthanc is still deciding. After a drop, that
node refuses every upload (reads it, resets the connection, forwards nothing) until the dropped file has
reached another node, which is what a client does when a node does not answer: so each drop forces a
failover, whatever the threads do. A failover always finds a live node: no candidate is chosen while a node
is dead, while a refused upload has not reached a live node yet, or while a candidate is in flight on another
node, and a file already dropped or refused once is never a candidate. Several candidates may be in flight on
one node (a candidate can stay inside Orthanc for a second when both nodes write one series and PostgreSQL
retries its transaction; with one candidate at a time the drop points came due only after the uploads were
over), and a node that dropped several answers is back only when every one of those files reached another
node. A candidate still inside Orthanc after ``STALLED_SECONDS`` is let go (its answer passes, it is never a
candidate again), so one upload Orthanc holds for most of a run cannot keep every drop point from the other
node: a CI run reached 1 of 6 that way. Other requests (``GET``, ``/tools/find``)
always pass, so a check of the stored MD5 never races a drop.

Everything runs in daemon threads of the test process; ``close`` stops the listeners and connections.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
# A candidate's round trip takes milliseconds; one Orthanc holds longer (PostgreSQL retrying a transaction while
# both nodes write one series) no longer counts as a candidate.
STALLED_SECONDS = 2.0


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed process's sockets end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class LostAnswers:
    def __init__(self, upstream_urls: list[str], drop_at: set[int]):
        self.drop_at = sorted(drop_at)
        self.posts = 0  # POST /instances forwarded, all nodes
        self.dropped: list[str] = []  # SHA-1 of each body whose answer was dropped
        self.not_stored = 0  # candidates Orthanc answered with anything but a stored Success: passed on
        # Uploads in flight, dropped if Orthanc stores them -> (their node, when they were forwarded).
        self._candidates: dict[str, tuple[int, float]] = {}
        self.let_go = 0  # candidates that stalled in Orthanc and were let go (their answers passed)
        self.refused = 0  # uploads refused by a "dead" node
        self._dead: dict[int, set[str]] = {}  # dead node -> dropped bodies that must reach another node first
        self._failing_over: set[str] = set()  # bodies a dead node refused, not yet forwarded by a live one
        self._troubled: set[str] = set()  # bodies dropped or refused once: their retries are left alone
        self._lock = threading.Lock()
        self.events: list[tuple] = []  # (seconds, posts, what, node, body): what a failure message shows
        self._t0 = time.monotonic()
        self._closing = False
        self._sockets: set[socket.socket] = set()
        self._listeners = []
        self.urls = []
        for index, url in enumerate(upstream_urls):
            listener = socket.create_server(("127.0.0.1", 0))
            self._listeners.append(listener)
            self.urls.append(f"http://127.0.0.1:{listener.getsockname()[1]}")
            parts = urlsplit(url)
            threading.Thread(target=self._accept, args=(listener, index, parts.hostname, parts.port),
                             daemon=True).start()

    def __enter__(self) -> LostAnswers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closing = True
        for sock in self._listeners + list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def state(self) -> dict:
        """What decides the next candidate (for a failure message): dead nodes and the body each waits for,
        bodies failing over, the candidates in flight, the dropped bodies."""
        with self._lock:
            return {"dead": {node: sorted(bodies) for node, bodies in self._dead.items()},
                    "failing_over": sorted(self._failing_over),
                    "candidates": {d: node for d, (node, _) in self._candidates.items()},
                    "let_go": self.let_go,
                    "dropped": list(self.dropped), "posts": self.posts, "events": self.events[-60:]}

    def _event(self, what: str, node: int, digest: str) -> None:  # under the lock
        self.events.append((round(time.monotonic() - self._t0, 2), self.posts, what, node, digest[:8]))

    def _accept(self, listener: socket.socket, index: int, host: str, port: int) -> None:
        while not self._closing:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._sockets.add(client)
            threading.Thread(target=self._serve, args=(client, index, host, port), daemon=True).start()

    def _verdict(self, index: int, digest: str) -> str:
        """'forward', 'candidate' (forward, then lose the answer if Orthanc stored the file: ``_settle``) or
        'refuse' (the node is dead) for an upload."""
        with self._lock:
            if index in self._dead:
                self.refused += 1
                if digest not in self._failing_over:
                    self._event("refused", index, digest)
                self._failing_over.add(digest)
                self._troubled.add(digest)
                return "refuse"
            for node, waiting in list(self._dead.items()):
                waiting.discard(digest)
                if not waiting:  # every file it dropped reached another node: the dead one is back
                    del self._dead[node]
                    self._event("back", node, digest)
            if digest in self._failing_over:
                self._event("failed over", index, digest)
            self._failing_over.discard(digest)
            self.posts += 1
            now = time.monotonic()
            for stalled in [d for d, (_, t) in self._candidates.items() if now - t > STALLED_SECONDS]:
                del self._candidates[stalled]
                self._troubled.add(stalled)
                self.let_go += 1
                self._event("let go (stalled)", index, stalled)
            spent = len(self.dropped) + len(self._candidates)  # drop points taken, or taken if Orthanc stores
            due = spent < len(self.drop_at) and self.posts >= self.drop_at[spent]
            # Candidates only ever on one node at a time, so only that node can die and the other stays live.
            calm = (not self._dead and not self._failing_over
                    and all(node == index for node, _ in self._candidates.values()))
            if due and calm and digest not in self._troubled and digest not in self._candidates:
                self._candidates[digest] = (index, now)
                self._event("candidate", index, digest)
                return "candidate"
            return "forward"

    def _settle(self, index: int, digest: str, status: int, data: bytes) -> bool:
        """True to drop a candidate's answer: Orthanc stored the file, and the node "dies" now."""
        try:
            stored = status == 200 and json.loads(data).get("Status") == "Success"
        except (ValueError, AttributeError):
            stored = False
        with self._lock:
            if digest not in self._candidates:  # let go while Orthanc held it: its answer passes
                self._event(f"answered after it was let go ({status})", index, digest)
                return False
            del self._candidates[digest]
            self._event("dropped" if stored else f"not stored ({status})", index, digest)
            if not stored:
                self.not_stored += 1
                return False
            self._troubled.add(digest)
            self.dropped.append(digest)
            self._dead.setdefault(index, set()).add(digest)
            return True

    def _serve(self, client: socket.socket, index: int, host: str, port: int) -> None:
        reader = client.makefile("rb")
        try:
            while not self._closing:
                line = reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, value = header.decode("latin-1").split(":", 1)
                    headers[name.strip()] = value.strip()
                body = reader.read(int(headers.get("Content-Length", 0)))
                verdict, digest = "forward", ""
                if method == "POST" and path.rstrip("/").endswith("/instances"):
                    digest = hashlib.sha1(body).hexdigest()
                    verdict = self._verdict(index, digest)
                if verdict == "refuse":
                    _reset(client)
                    return
                # A connection per request: Orthanc closes idle keep-alive connections, and a forward on one
                # it has just closed would fail the client's request for nothing.
                upstream = http.client.HTTPConnection(host, port, timeout=120)
                try:
                    upstream.request(method, path, body=body,
                                     headers={k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP})
                    answer = upstream.getresponse()
                    data = answer.read()
                except OSError:
                    if verdict == "candidate":  # no answer from Orthanc: the next upload is the candidate
                        self._settle(index, digest, 0, b"")
                    raise
                finally:
                    upstream.close()
                if verdict == "candidate" and self._settle(index, digest, answer.status, data):
                    _reset(client)  # Orthanc stored it and answered; the client never hears it
                    return
                head = [f"HTTP/1.1 {answer.status} {answer.reason}"]
                head += [f"{k}: {v}" for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP]
                head += [f"Content-Length: {len(data)}", "", ""]
                client.sendall("\r\n".join(head).encode("latin-1") + data)
        except OSError:
            return
        finally:
            self._sockets.discard(client)
            try:
                reader.close()
                client.close()
            except OSError:
                pass
