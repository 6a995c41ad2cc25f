"""Several Orthanc nodes sharing one index (PostgreSQL) and one storage: uploads spread across them, and a
node that is down is skipped while the work goes on with the others.

This is Orthanc's own way to grow past one server (the ``orthanc-postgresql`` plugin 4.0: several
Orthanc processes with ``"Lock": false`` on one database, one shared ``StorageDirectory``). Every node
answers for every instance, so reads go to any live node. Each upload thread starts on its own node
(round robin); a connection failure marks that node down for ``down_seconds`` and the same file is sent
to the next live node at once. The ledger row says which node answered (``orthanc_node``) and, after a
failover, which node was skipped (its ``error_message``). A node that took the body and died before
answering may have stored it: the next node then answers ``AlreadyStored`` for the same bytes, which the
client records ``imported``, confirmed (orthanc/client.py), not ``duplicate``.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.client import (
    OrthancClient,
    OrthancRefused,
    OrthancUnavailable,
    UploadResult,
)


class OrthancNodes(OrthancApi):
    """One or more nodes behind the interface of one: uploads and ``system`` fail over, reads (OrthancApi's,
    written once) go to this thread's live node, since every node answers from the same index."""

    def __init__(self, clients: list[OrthancClient], *, down_seconds: float = 30.0):
        if not clients:
            raise ValueError("at least one Orthanc node")
        self.clients = clients
        self.down_seconds = down_seconds
        self._down_until: dict[str, float] = {}
        self._next = itertools.count()
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.clients[0].url if len(self.clients) == 1 else ", ".join(c.url for c in self.clients)

    @property
    def timeout(self) -> float:
        return self.clients[0].timeout

    def _order(self) -> list[OrthancClient]:
        """This thread's node first (round robin across threads), then the others; nodes marked down last."""
        start = getattr(self._local, "start", None)
        if start is None:
            start = self._local.start = next(self._next) % len(self.clients)
        ring = self.clients[start:] + self.clients[:start]
        now = time.monotonic()
        return sorted(ring, key=lambda c: self._down_until.get(c.url, 0) > now)  # stable: live ones first

    def _mark_down(self, client: OrthancClient) -> None:
        with self._lock:
            self._down_until[client.url] = time.monotonic() + self.down_seconds

    def upload(self, body, md5: str | None = None) -> UploadResult:
        skipped: list[str] = []
        result = None
        lost = False  # a node may have stored the file before it stopped answering: the next one is told
        for client in self._order():
            result = client.upload(body, md5=md5, answer_lost=lost)
            unreachable = result.status == "failed" and result.http_status is None and result.attempts > 0
            if not unreachable:
                if skipped and result.status != "failed":
                    note = f"node {', '.join(skipped)} unreachable; sent to {client.url}"
                    message = f"{note}; {result.error_message}" if result.error_message else note
                    result = dataclasses.replace(result, error_message=message)
                return result
            lost = lost or result.answer_lost
            self._mark_down(client)
            skipped.append(client.url)
        return result

    def system(self) -> dict:
        """``GET /system`` of the first node that answers; every node unreachable raises OrthancUnavailable
        naming them all, a refusal (401) is raised at once."""
        errors = []
        for client in self._order():
            try:
                return client.system()
            except OrthancRefused:
                raise
            except OrthancUnavailable as exc:
                self._mark_down(client)
                errors.append(str(exc))
        raise OrthancUnavailable(errors[0] if len(errors) == 1 else
                                 f"No Orthanc node answers ({len(errors)} tried): {errors[0]}")

    def _get(self, path: str, **kw):
        return self._order()[0]._get(path, **kw)

    def _request(self, method: str, path: str, what: str, **kw):
        return self._order()[0]._request(method, path, what, **kw)
