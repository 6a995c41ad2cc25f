"""The lost-answers proxy (services/lost_answers.py) itself: a candidate that Orthanc holds for long is let go, so
it cannot keep every later drop point from the other node (a CI run of the failover test reached 1 of 6 that way).
Upstreams are two plain HTTP servers answering like Orthanc's ``POST /instances``; the first upload stalls."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pacs_assets_tests.services.lost_answers import STALLED_SECONDS, LostAnswers

STALL = b"stall"


class _Orthanc(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == STALL:
            time.sleep(STALLED_SECONDS + 1.5)
        answer = json.dumps({"Status": "Success", "ID": hashlib.sha1(body).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def _post(url: str, body: bytes) -> int | None:
    """The HTTP status of an upload, or None when the connection was reset instead (the answer lost)."""
    host, port = url.removeprefix("http://").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        con.request("POST", "/instances", body=body)
        return con.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return None
    finally:
        con.close()


def test_a_stalled_candidate_is_let_go_and_the_next_upload_takes_its_drop_point():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Orthanc) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        upstreams = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
        with LostAnswers(upstreams, drop_at={1}) as proxy:
            stalled: list = []
            first = threading.Thread(target=lambda: stalled.append(_post(proxy.urls[0], STALL)))
            first.start()  # the first upload: the candidate, held by "Orthanc"
            time.sleep(0.3)
            assert _post(proxy.urls[1], b"early") == 200  # a candidate in flight on node 0: node 1 is left alone
            time.sleep(STALLED_SECONDS)
            assert _post(proxy.urls[1], b"late") is None  # the stalled one let go: this one took the drop point
            first.join()
            assert stalled == [200]  # the stalled upload's answer passed when it came
            assert proxy.dropped == [hashlib.sha1(b"late").hexdigest()]
            assert proxy.let_go == 1
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
