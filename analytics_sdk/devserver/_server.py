"""The dev server: HTTP plumbing around the protocol rules, the store and the workspace."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from analytics_sdk._logging import child_logger
from analytics_sdk.devserver._protocol import (
    CALL_TYPES,
    MAX_REQUEST_BYTES,
    Refused,
    decode_body,
    received,
    validate_messages,
)
from analytics_sdk.devserver._store import EventStore
from analytics_sdk.devserver._workspace import Workspace, WorkspaceError

__all__ = ["DevServer", "Faults"]

logger = child_logger("devserver")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle (or a body may stall)


@dataclass(frozen=True)
class Faults:
    """Outage rehearsal for the ingestion endpoints (`/v1/...`); sourceConfig is spared.

    Attributes:
        fail_rate: fraction of requests (0..1) answered with `status` instead of taking them.
        status: the failing answer (e.g. 503, 429, 500).
        retry_after: seconds to put in a Retry-After header of the failing answers.
        delay_ms: wait this long before answering every request (a slow data plane).
        seed: makes the failing requests repeatable.
    """

    fail_rate: float = 0.0
    status: int = 503
    retry_after: float | None = None
    delay_ms: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within 0..1 (got {self.fail_rate})")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code (got {self.status})")
        if self.retry_after is not None and not 0 <= self.retry_after <= 3600:
            raise ValueError(f"retry_after must be within 0..3600 s (got {self.retry_after})")
        if not 0 <= self.delay_ms <= 600_000:
            raise ValueError(f"delay_ms must be within 0..600000 (got {self.delay_ms})")


@dataclass
class Counts:
    requests: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0  # requests answered 4xx
    faults: int = 0  # requests failed on purpose


class DevServer:
    """A local data plane and control plane on one port, storing events in SQLite.

    ::

        with DevServer() as server:          # 127.0.0.1, a free port, in-memory store
            client = Client(server.write_key, server.url, control_plane_url=server.url)
            ...
            server.events(type="track")

    Args:
        host: interface to listen on; keep the default (loopback) unless you mean it.
        port: 0 picks a free port (see `url`).
        workspace: a Workspace, a workspace document (dict) or a JSON file path, which is
            re-read when it changes; default: one source with the write key `dev-write-key`.
        db: SQLite file to store events in (WAL); default: in memory.
        faults: failures to inject into ingestion (see Faults); change with `set_faults`.
        echo: a text stream that gets one line per request and event (the CLI passes stdout).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workspace: Workspace | dict[str, Any] | str | os.PathLike[str] | None = None,
        db: str | os.PathLike[str] | None = None,
        faults: Faults | None = None,
        echo: TextIO | None = None,
    ) -> None:
        self._workspace_path: Path | None = None
        self._workspace_mtime = 0.0
        if workspace is None:
            self._workspace = Workspace.default()
        elif isinstance(workspace, Workspace):
            self._workspace = workspace
        elif isinstance(workspace, dict):
            self._workspace = Workspace(workspace)
        else:
            self._workspace_path = Path(workspace)
            self._workspace_mtime = _mtime(self._workspace_path)
            self._workspace = Workspace.load(self._workspace_path)
        self.store = EventStore(":memory:" if db is None else os.fspath(db))
        self.counts = Counts()
        self._faults = faults or Faults()
        self._random = random.Random(self._faults.seed)
        self._echo = echo
        self._lock = threading.Lock()
        self._http = _HTTPServer((host, port), _Handler, self)
        self._thread: threading.Thread | None = None
        self._stopped = False
        if host not in _LOOPBACK:
            logger.warning("the dev server listens on %s: it has no TLS, keep it private", host)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}"

    @property
    def write_key(self) -> str:
        """The first source's write key (the only one, with the default workspace)."""
        return self._workspace.write_keys[0]

    def start(self) -> DevServer:
        """Serve in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="analytics_sdk.devserver",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (within `timeout`), close the store.

        Idempotent. Every request answered 200 was committed before its answer, so nothing
        acknowledged is lost.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout)
        self._http.close_connections(timeout)
        self._http.server_close()
        self.store.close()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inspection and control -------------------------------------------------------------

    def events(
        self, *, limit: int = 1000, type: str | None = None, user_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored events, oldest first (the newest `limit`), each with receivedAt."""
        return self.store.query(limit=limit, type=type, user_id=user_id)

    def wait_for_events(self, count: int, timeout: float = 10.0) -> bool:
        """True once at least `count` events are stored; False after `timeout` seconds."""
        return self.store.wait_for(count, timeout)

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._random = random.Random(faults.seed)

    def set_workspace(self, workspace: Workspace | dict[str, Any]) -> None:
        """Replace the sources and destinations (sourceConfig ETags change with them)."""
        replacement = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        with self._lock:
            self._workspace = replacement
            self._workspace_path = None

    def workspace(self) -> Workspace:
        """The current workspace, re-read first if its file changed (a bad edit is ignored)."""
        with self._lock:
            path = self._workspace_path
            if path is None:
                return self._workspace
            mtime = _mtime(path)
            if mtime != self._workspace_mtime:
                self._workspace_mtime = mtime
                try:
                    self._workspace = Workspace.load(path)
                    logger.info("workspace %s reloaded", path.name)
                except WorkspaceError as exc:
                    logger.warning("%s; the previous workspace stays in use", exc)
            return self._workspace

    # -- used by the handler ----------------------------------------------------------------

    def fault(self) -> tuple[Faults, bool]:
        """The current faults, and whether this request fails on purpose."""
        with self._lock:
            faults = self._faults
            fails = faults.fail_rate > 0 and self._random.random() < faults.fail_rate
            if fails:
                self.counts.faults += 1
            return faults, fails

    def tally(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.counts, name, getattr(self.counts, name) + value)

    def say(self, line: str) -> None:
        if self._echo is None:
            return
        with self._lock:
            try:
                self._echo.write(line + "\n")
                self._echo.flush()
            except (OSError, ValueError):  # a closed terminal never stops the server
                self._echo = None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes connections itself, within its timeout

    def __init__(self, address: tuple[str, int], handler: type[_Handler], dev: DevServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dev = dev
        self.busy = 0
        self.idle: set[socket.socket] = set()
        self.conn_lock = threading.Condition()
        self.closing = False
        super().__init__(address, handler)

    def close_connections(self, timeout: float) -> None:
        """Wait for requests in progress, then close every kept-alive connection."""
        with self.conn_lock:
            self.closing = True
            self.conn_lock.wait_for(lambda: self.busy == 0, timeout)
            for sock in list(self.idle):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "analytics-sdk-devserver"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall
    timeout = _IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.idle.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.idle.discard(self.connection)
        super().finish()

    def parse_request(self) -> bool:
        with self.server.conn_lock:  # the request line is in: this connection is busy
            if self.server.closing:
                self.close_connection = True
                return False
            self.server.busy += 1
            self.server.idle.discard(self.connection)
        self._busy = True
        return super().parse_request()

    def handle_one_request(self) -> None:
        self._busy = False
        self._body_read = False
        try:
            super().handle_one_request()
        finally:
            if self._busy:
                with self.server.conn_lock:
                    self.server.busy -= 1
                    if self.server.closing:
                        self.close_connection = True
                    else:
                        self.server.idle.add(self.connection)
                    self.server.conn_lock.notify_all()

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        if path == "/health":
            self._reply(200, json.dumps({"status": "ok"}), "application/json")
        elif path == "/sourceConfig":
            self._source_config()
        elif path == "/v1/events":
            self._list_events(parse_qs(parts.query))
        else:
            self._reply(404, f"no such endpoint: GET {parts.path}")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        kind = path.removeprefix("/v1/")
        if not path.startswith("/v1/") or (kind != "batch" and kind not in CALL_TYPES):
            self._discard_body()
            self._reply(404, f"no such endpoint: POST {path}")
            return
        dev = self.server.dev
        dev.tally(requests=1)
        try:
            source = self._source()
            faults, fails = dev.fault()
            if faults.delay_ms:
                time.sleep(faults.delay_ms / 1000)
            if fails:
                self._discard_body()
                headers = {}
                if faults.retry_after is not None:
                    headers["Retry-After"] = f"{faults.retry_after:g}"
                dev.say(f"{_clock()}  fault injected: answered {faults.status}")
                self._reply(faults.status, "fault injected by the dev server", headers=headers)
                return
            body = decode_body(self._read_body(), self.headers.get("Content-Encoding"))
            messages = validate_messages(body, None if kind == "batch" else kind)
        except Refused as refused:
            dev.tally(refused=1)
            dev.say(f"{_clock()}  refused {refused.status}: {refused.reason}")
            self._reply(refused.status, refused.reason)
            return
        now = datetime.now(timezone.utc)
        stored = [received(message, now) for message in messages]
        fresh = dev.store.insert(source.id, stored)
        dev.tally(stored=sum(fresh), duplicates=len(fresh) - sum(fresh))
        for message, new in zip(stored, fresh, strict=True):
            dev.say(_event_line(message, source.id, new))
        self._reply(200, "OK")

    def _source_config(self) -> None:
        try:
            source = self._source(allow_disabled=True)
        except Refused as refused:
            self._reply(refused.status, refused.reason)
            return
        if source.etag in _etags(self.headers.get("If-None-Match")):
            self._reply(304, "", headers={"ETag": source.etag})
            return
        body = json.dumps(source.document, separators=(",", ":"))
        self._reply(200, body, "application/json", headers={"ETag": source.etag})

    def _list_events(self, query: dict[str, list[str]]) -> None:
        try:
            limit = int(query.get("limit", ["100"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 10_000:
            self._reply(400, "limit: must be an integer within 1..10000")
            return
        events = self.server.dev.store.query(
            limit=limit,
            type=query.get("type", [None])[0],
            user_id=query.get("userId", [None])[0],
        )
        self._reply(200, json.dumps({"events": events}), "application/json")

    # -- plumbing ---------------------------------------------------------------------------

    def _source(self, *, allow_disabled: bool = False) -> Any:
        key = _basic_user(self.headers.get("Authorization"))
        source = self.server.dev.workspace().source(key) if key else None
        if source is None:
            self._discard_body()
            raise Refused(401, "invalid write key (send it as the Basic auth user name)")
        if not source.enabled and not allow_disabled:
            self._discard_body()
            raise Refused(404, f"source {source.id!r} is disabled")
        return source

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise Refused(411, "a Content-Length header is required")
        size = int(length)
        if size > MAX_REQUEST_BYTES:
            self.close_connection = True  # the unread body would be taken for a request
            raise Refused(413, f"request body is {size} bytes, over the limit of "
                               f"{MAX_REQUEST_BYTES}")  # fmt: skip
        self._body_read = True
        return self.rfile.read(size)

    def _discard_body(self) -> None:
        """Answering before reading the body: read it (small) or close the connection."""
        if getattr(self, "_body_read", False):
            return
        length = self.headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) <= MAX_REQUEST_BYTES:
            self.rfile.read(int(length))
        else:
            self.close_connection = True
        self._body_read = True

    def _reply(
        self,
        status: int,
        body: str,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if status != 304:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _basic_user(header: str | None) -> str | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _clock() -> str:
    now = datetime.now()
    return now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d}"


def _event_line(message: dict[str, Any], source_id: str, new: bool) -> str:
    who = message.get("userId") or f"anon:{message.get('anonymousId')}"
    kind = message["type"]
    what = {
        "track": message.get("event"),
        "page": message.get("name"),
        "screen": message.get("name"),
        "group": message.get("groupId"),
        "alias": f"from {message.get('previousId')}",
    }.get(kind, "")
    detail = message.get("properties") or message.get("traits") or {}
    text = json.dumps(detail, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) > 60:
        text = text[:57] + "..."
    mark = "" if new else "  (duplicate, not stored again)"
    return f"{_clock()}  {source_id:<10} {kind:<8} {str(who)[:30]:<30} {str(what or '')[:24]:<24} {text}{mark}"  # noqa: E501
