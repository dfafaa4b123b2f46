"""A real control plane on 127.0.0.1 serving GET /sourceConfig/ with ETags and scripted faults."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

JsonDict = dict[str, Any]
PATH = "/sourceConfig/"


def sample_document(write_key: str = "wk_test_key", **source: Any) -> JsonDict:
    """A sourceConfig like RudderStack's: one device-mode and one cloud-mode destination."""
    document: JsonDict = {
        "isHosted": True,
        "source": {
            "id": "src_1",
            "name": "backend",
            "enabled": True,
            "writeKey": write_key,
            "config": {},
            "sourceDefinition": {"name": "Python"},
            "destinations": [
                {
                    "id": "dst_am",
                    "name": "Amplitude prod",
                    "enabled": True,
                    "destinationDefinition": {"name": "AM", "displayName": "Amplitude"},
                    "config": {"apiKey": "am-secret-123", "connectionMode": "device"},
                },
                {
                    "id": "dst_mp",
                    "name": "Mixpanel",
                    "enabled": True,
                    "destinationDefinition": {"name": "MP", "displayName": "Mixpanel"},
                    "config": {"token": "mp-secret-456", "connectionMode": "cloud"},
                },
            ],
        },
    }
    document["source"].update(source)
    return document


@dataclass
class ConfigRequest:
    """One request as received."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    received_at: float
    status: int = 0  # what we answered (0: nothing, the request hung)


class ControlPlane(ThreadingHTTPServer):
    """Serves `document` to requests with the right Basic auth; misbehaves on request.

    The ETag is computed from the body; a matching If-None-Match gets 304. `fail(status,
    times)` answers the next requests with an error, `hang(times)` never answers them (until
    `release()` or `stop()`), `delay` slows every answer down. Every request, answered or
    not, is in `requests` (recorded before it is answered).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, write_key: str = "wk_test_key", document: JsonDict | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.write_key = write_key
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.requests: list[ConfigRequest] = []
        self.etags = True  # False: a server that never sends ETags nor answers 304
        self.delay = 0.0  # seconds before every answer
        self.released = threading.Event()  # set: hanging requests give up and close
        self._body = b""
        self._failures: list[tuple[int, dict[str, str]]] = []
        self._hangs = 0
        self._thread: threading.Thread | None = None
        self.set_config(document if document is not None else sample_document(write_key))

    # -- what it serves ------------------------------------------------------------------

    def set_config(self, document: JsonDict | bytes | str) -> None:
        """Serve this document from now on; bytes and str are served verbatim (malformed)."""
        if isinstance(document, dict):
            body = json.dumps(document).encode()
        elif isinstance(document, str):
            body = document.encode()
        else:
            body = document
        with self.lock:
            self._body = body

    @property
    def etag(self) -> str:
        with self.lock:
            return _etag_of(self._body)

    def fail(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` requests with `status` (after those already scripted)."""
        with self.lock:
            self._failures.extend([(status, dict(headers or {}))] * times)

    def hang(self, times: int = 1) -> None:
        """Never answer the next `times` requests (until release() or stop())."""
        with self.lock:
            self._hangs += times

    def release(self) -> None:
        self.released.set()

    # -- what it saw ---------------------------------------------------------------------

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until `count` requests arrived in total, or `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.arrived.wait(remaining)
            return True

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ControlPlane:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading an oversized answer closes with unread data, which
        # the kernel turns into a reset: expected here, not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    # -- answering -----------------------------------------------------------------------

    def _next_fault(self) -> tuple[int, dict[str, str]] | str | None:
        with self.lock:
            if self._hangs:
                self._hangs -= 1
                return "hang"
            if self._failures:
                return self._failures.pop(0)
            return None

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme != "Basic":
            return False
        try:
            user, _, _ = base64.b64decode(token, validate=True).decode().partition(":")
        except ValueError:
            return False
        return user == self.write_key


def _etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class _Handler(BaseHTTPRequestHandler):
    server: ControlPlane
    protocol_version = "HTTP/1.1"  # keep-alive, as real control planes do
    disable_nagle_algorithm = True  # else headers and body wait out delayed ACKs

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        request = ConfigRequest(
            path=parts.path,
            query=parse_qs(parts.query),
            headers=dict(self.headers.items()),
            received_at=time.monotonic(),
        )
        with self.server.arrived:
            self.server.requests.append(request)
            self.server.arrived.notify_all()
        fault = self.server._next_fault()
        if fault == "hang":
            self.server.released.wait(60)
            self.close_connection = True
            return
        if self.server.delay:
            time.sleep(self.server.delay)
        if parts.path != PATH:
            self._answer(request, 404, b"not found")
        elif not self.server._authorized(self.headers.get("Authorization", "")):
            self._answer(request, 401, b"invalid write key")
        elif isinstance(fault, tuple):
            status, headers = fault
            self._answer(request, status, b"scripted failure", headers)
        else:
            with self.server.lock:
                body = self.server._body
                etags = self.server.etags
            etag = _etag_of(body)
            if etags and self.headers.get("If-None-Match") == etag:
                self._answer(request, 304, b"", {"ETag": etag})
            else:
                self._answer(request, 200, body, {"ETag": etag} if etags else {})

    def _answer(
        self,
        request: ConfigRequest,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        request.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:  # a 304 has no body, and so no Content-Length of one
            self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@contextmanager
def running_control_plane(write_key: str = "wk_test_key") -> Iterator[ControlPlane]:
    server = ControlPlane(write_key).start()
    try:
        yield server
    finally:
        server.stop()
