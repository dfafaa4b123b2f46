"""A fake Mixpanel ingestion API on https://127.0.0.1 for the Mixpanel wrapper's tests.

The Mixpanel SDK builds `https://{api_host}/track` (and /engage, /groups, /import) and
mounts its retry adapter on https only, so the fake speaks TLS: the real SDK code path runs
unchanged. Its certificate (below, for 127.0.0.1 only, valid until 2126, made with
`openssl req -x509 -newkey ec`) is trusted through `REQUESTS_CA_BUNDLE`, which requests
reads for every verified request; it is a test fixture and protects nothing.

Each request is recorded with its form fields (`data` holds the JSON array of records the
SDK sent); `script` answers in order, then `respond` decides, else `{"status":1}`.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["OK", "Answer", "FakeMixpanel", "Received", "write_certificate"]

OK = '{"status":1,"error":null}'  # what Mixpanel answers to a verbose=1 request it took

CERTIFICATE = """\
-----BEGIN CERTIFICATE-----
MIIBqjCCAVGgAwIBAgIUSvs5DCYuHYNprKrKdatTdvc/KxswCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyMzAzMzIwM1oYDzIxMjYxMDMw
MDMzMjAzWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARddnZ7Zga5Ga8Xmv0FWl/3OY1YFR55jaiGhSG/w96N1To5iTJUN8uN
vDj4NLbe5Y4LY2RpCuRZVyO3IfaL2wQwo38wfTAdBgNVHQ4EFgQU7S4xoigCDohg
81i172otHx2s6E0wHwYDVR0jBBgwFoAU7S4xoigCDohg81i172otHx2s6E0wGgYD
VR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0P
AQH/BAQDAgKEMAoGCCqGSM49BAMCA0cAMEQCIFTF1YElLj0hej8FLAidaQNnDGcZ
5lzJm5htk/eC9YGQAiB8fjtAoVqD3E3Tf4+5gSCkpz9D8IWx7SwBIFYMLq86+w==
-----END CERTIFICATE-----
"""
PRIVATE_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgavHCwALizwddVJmR
zK4lic7xCTvQb2FnPScaXu+BxzahRANCAARddnZ7Zga5Ga8Xmv0FWl/3OY1YFR55
jaiGhSG/w96N1To5iTJUN8uNvDj4NLbe5Y4LY2RpCuRZVyO3IfaL2wQw
-----END PRIVATE KEY-----
"""


def write_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) files in `directory`: the certificate doubles as the CA bundle."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "mixpanel-fake.crt", directory / "mixpanel-fake.key"
    cert.write_text(CERTIFICATE)
    key.write_text(PRIVATE_KEY)
    return cert, key


@dataclass
class Answer:
    """What the fake answers to one request."""

    status: int = 200
    body: str = OK
    hang: bool = False  # answer nothing until the server stops: the client's read times out


@dataclass
class Received:
    """One request as the SDK sent it."""

    path: str  # "/track", "/engage", "/groups" or "/import"
    query: dict[str, str]
    form: dict[str, str]  # data (the JSON records), verbose, ip, api_key
    headers: dict[str, str]
    status: int = 0  # what the fake answered (0: nothing)

    @property
    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = json.loads(self.form["data"])
        return records

    @property
    def basic_user(self) -> str | None:
        """The user part of a Basic Authorization header (an API secret or account name)."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme != "Basic":
            return None
        return base64.b64decode(token).decode().split(":", 1)[0]


class FakeMixpanel(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, certificate: tuple[Path, Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, certificate))
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.script: list[Answer] = []
        self.respond: Callable[[Received], Answer | None] | None = None
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """What the wrapper's `api_host` option takes: `127.0.0.1:<port>`."""
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def records(self, path: str) -> list[dict[str, Any]]:
        """Every record posted to `path` and answered with success, in order."""
        return [rec for r in self.requests_to(path) if r.status == 200 for rec in r.records]

    def start(self) -> FakeMixpanel:
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

    def decide(self, request: Received) -> Answer:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        if self.respond is not None:
            answer = self.respond(request)
            if answer is not None:
                return answer
        return Answer()


class _Handler(BaseHTTPRequestHandler):
    server: FakeMixpanel
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' pooled sessions expect
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        url = urlsplit(self.path)
        request = Received(
            path=url.path,
            query=dict(parse_qsl(url.query)),
            form=dict(parse_qsl(raw.decode())),
            headers=dict(self.headers.items()),
        )
        answer = self.server.decide(request)
        request.status = 0 if answer.hang else answer.status
        with self.server.lock:
            self.server.received.append(request)
        if answer.hang:
            self.server.stopping.wait(30)
            self.close_connection = True
            return
        payload = answer.body.encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass
