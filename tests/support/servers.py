"""A real data plane on 127.0.0.1 that records what the SDK sends and misbehaves on request."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JsonDict = dict[str, Any]


@dataclass
class Reply:
    """What the server answers to one request (a test can script a sequence of them)."""

    status: int = 200
    body: str = '{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer (until the server stops)
    reset: bool = False  # close the connection with a TCP reset instead of answering


@dataclass
class Request:
    """One request as received: raw and decoded."""

    path: str
    headers: dict[str, str]
    raw_body: bytes  # as sent (gzip-compressed when Content-Encoding says so)
    body: bytes  # decompressed
    received_at: float
    status: int = 0  # what we answered

    @property
    def json(self) -> JsonDict:
        parsed: JsonDict = json.loads(self.body)
        return parsed

    @property
    def batch(self) -> list[JsonDict]:
        """The messages: a data plane's {"batch": [...]}, a webhook's list, or one message."""
        payload: Any = json.loads(self.body)
        if isinstance(payload, dict) and "batch" in payload:
            return list(payload["batch"])
        return list(payload) if isinstance(payload, list) else [payload]


class DataPlane(ThreadingHTTPServer):
    """Records every request; `script` answers in order, then `respond` decides.

    Accepted batches (2xx) are in `batches`/`events`; every request, answered or not, is in
    `requests`. A `respond(request) -> Reply | None` hook can reject by content (the 400
    for a poisoned message), `max_body` answers 413 above a size. `take_down()` and
    `bring_back()` stage an outage: nothing listens on the port for a while, then the
    server is back on the same port.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.batches: list[list[JsonDict]] = []
        self.script: list[Reply] = []
        self.respond: Callable[[Request], Reply | None] | None = None
        self.max_body: int | None = None
        self.stopping = threading.Event()
        self.received = threading.Condition(self.lock)
        self.down = False  # between take_down() and bring_back()
        self._answering = 0  # requests between being read and being answered
        self._idle = threading.Condition(self.lock)
        # Open connections -> whether a request on it is being answered right now.
        self._connections: dict[socket.socket, bool] = {}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def events(self) -> list[JsonDict]:
        with self.lock:
            return [event for batch in self.batches for event in batch]

    def message_ids(self) -> list[str]:
        return [event["messageId"] for event in self.events]

    def wait_for_events(self, count: int, timeout: float = 10.0) -> bool:
        """Block until `count` events were accepted, or `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        with self.received:
            while sum(len(b) for b in self.batches) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.received.wait(remaining)
            return True

    def wait_idle(self, requests: int = 0, timeout: float = 10.0) -> bool:
        """Block until no request is being answered and at least `requests` were received.

        A delayed reply records its batch only when its delay is over: wait for this before
        counting what the server accepted.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._answering or len(self.requests) < requests:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def take_down(self) -> None:
        """Stop listening (new connections are refused) and close idle keep-alive ones.

        A request being answered is answered in full and its connection closed after: the
        client sees either that answer or a connection error, never half of one.
        """
        with self.lock:
            self.down = True
            idle = [conn for conn, busy in self._connections.items() if not busy]
        self.shutdown()
        self.server_close()
        for conn in idle:
            with contextlib.suppress(OSError):  # closed meanwhile
                conn.shutdown(socket.SHUT_RDWR)  # the handler's read ends; the client sees EOF

    def bring_back(self) -> None:
        """Listen on the same port again after `take_down()`."""
        self.socket = socket.socket(self.address_family, self.socket_type)
        self.server_bind()  # server_address holds the port the first bind got
        self.server_activate()
        with self.lock:
            self.down = False
        self.start()

    def start(self) -> DataPlane:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def decide(self, request: Request) -> Reply:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        if self.max_body is not None and len(request.body) > self.max_body:
            return Reply(status=413, body="payload too large")
        if self.respond is not None:
            reply = self.respond(request)
            if reply is not None:
                return reply
        return Reply()


class _Handler(BaseHTTPRequestHandler):
    server: DataPlane
    protocol_version = "HTTP/1.1"  # keep-alive, as real data planes do
    disable_nagle_algorithm = True  # else headers + body wait out delayed ACKs (40 ms)

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server._connections[self.connection] = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server._connections.pop(self.connection, None)

    def do_POST(self) -> None:
        server = self.server
        with server.lock:
            refused = server.down  # a request that raced take_down(): as if the process died
            if not refused:
                server._answering += 1
                server._connections[self.connection] = True
        if refused:
            self._reset()
            return
        try:
            self._answer()
        finally:
            with server.lock:
                server._answering -= 1
                server._connections[self.connection] = False
                if server.down:
                    self.close_connection = True
                server._idle.notify_all()

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a RST: the client sees "connection reset".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        request = Request(
            path=self.path,
            headers={k: v for k, v in self.headers.items()},
            raw_body=raw,
            body=body,
            received_at=time.monotonic(),
        )
        reply = self.server.decide(request)
        request.status = reply.status
        with self.server.lock:
            self.server.requests.append(request)
        if reply.hang:
            self.server.stopping.wait(60)
            self.close_connection = True
            return
        if reply.reset:
            self._reset()
            return
        if reply.delay:
            time.sleep(reply.delay)
        if 200 <= reply.status < 300:
            with self.server.received:
                self.server.batches.append(request.batch)
                self.server.received.notify_all()
        payload = reply.body.encode()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json" if reply.status < 300 else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@contextmanager
def running_data_plane() -> Iterator[DataPlane]:
    server = DataPlane().start()
    try:
        yield server
    finally:
        server.stop()


def basic_auth_user(request: Request) -> str:
    """The user part of the Basic auth header (the write key)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(token).decode().split(":", 1)[0]
