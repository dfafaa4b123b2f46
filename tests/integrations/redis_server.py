"""A real `redis-server` on 127.0.0.1 for the Redis wrapper's tests, and a flaky TCP proxy.

`RedisServer(directory, *args).start()` runs `redis-server` as a child process (no
persistence, loopback only) and returns once its log says it accepts connections; `stop()`
ends it. Readiness and cluster state come from the server's own log lines, read by a
thread that sets an Event: nothing polls or sleeps.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import redis  # imported when used: other wrappers' tests load this module's conftest

__all__ = [
    "FlakyProxy",
    "RedisServer",
    "RedisServerMissingError",
    "free_port",
    "self_signed_certificate",
    "start_or_fail",
]

START_TIMEOUT = 10.0  # seconds for redis-server to say it is ready
READY = "Ready to accept connections"
CLUSTER_OK = "Cluster state changed: ok"


class RedisServerMissingError(RuntimeError):
    """`redis-server` is not on PATH."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_or_fail(directory: Path, *args: str, tls: bool = False) -> RedisServer:
    """A running server, or the test fails saying how to install redis-server (no skip)."""
    server = RedisServer(directory, *args, tls=tls)
    try:
        return server.start()
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


class RedisServer:
    """One `redis-server` child process; `args` are extra command-line settings."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, *args: str, tls: bool = False) -> None:
        self.directory = directory
        self.args = args
        self.tls = tls
        self.port = 0
        self.output: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._waiting_for = ""
        self._seen = threading.Event()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerMissingError(
                "redis-server is not on PATH; the Redis integration tests need a real one "
                "(Debian/Ubuntu: apt-get install -y redis-server)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # another process may grab the free port first
            self.port = free_port()
            port_args = ["--port", "0", "--tls-port", str(self.port)] if self.tls else [
                "--port", str(self.port)]  # fmt: skip
            command = [binary, *port_args, "--bind", self.host, "--save", "",
                       "--appendonly", "no", "--dir", str(self.directory), *self.args]  # fmt: skip
            if self._launch(command):
                return self
            self.stop()
        raise RuntimeError("redis-server did not start:\n" + "".join(self.output[-20:]))

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT) -> bool:
        """True once a log line containing `text` appeared (also if it already had)."""
        with self._lock:
            if self._logged(text):
                return True
            self._waiting_for = text
            self._seen.clear()
        self._seen.wait(timeout)  # set by the reader on a match, or at EOF
        with self._lock:
            return self._logged(text)

    def _logged(self, text: str) -> bool:
        return any(text in line for line in self.output)

    def client(self, **options: Any) -> redis.Redis:
        """A plain redis-py client to inspect what the wrapper wrote (close it after use)."""
        import redis

        return redis.Redis(host=self.host, port=self.port, decode_responses=True, **options)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)  # ends at EOF, once the process is gone
            self._reader = None

    def _launch(self, command: list[str]) -> bool:
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        return self.wait_for_log(READY) and self._process.poll() is None

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                with self._lock:
                    self.output.append(line)
                    if self._waiting_for and self._waiting_for in line:
                        self._seen.set()
        self._seen.set()  # EOF: the process ended; wake whoever waits


class FlakyProxy:
    """A TCP proxy to `target` that drops the first `drop` connections it accepts.

    A dropped connection is accepted and closed at once, as a server that restarts does;
    later connections are forwarded both ways.
    """

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port = target_port
        self.drop = drop
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FlakyProxy:
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # never connected, or closed by the peer
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: stop() was called
            with self._lock:
                self.accepted += 1
                dropped = self.accepted <= self.drop
                self._sockets.append(downstream)
                if self._closed:
                    return
            if dropped:
                downstream.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
            self._spawn(self._pipe, downstream, upstream)
            self._spawn(self._pipe, upstream, downstream)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # either side closed: the other copy loop ends the same way
        finally:
            with contextlib.suppress(OSError):  # already closed
                sink.shutdown(socket.SHUT_WR)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made by `openssl`; the test fails without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS test needs the openssl command (apt-get install -y openssl)",
                    pytrace=False)  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key
