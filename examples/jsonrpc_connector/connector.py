"""A small JSON-RPC 2.0 connector for analytics-sdk's `jsonrpc` integration, stdlib only.

It implements the four methods of the protocol (see README.md next to this file):

    behavior  {}                                    -> {"batchSize": N, "operations": [...]}
    validate  {"configuration": {...}}              -> ["error", ...]  (empty: valid)
    add       {"idColumn", "configuration", "rows"} -> {"rejectedRows": [{"id", "reason"}]}
    change    (the same as add)

and keeps the rows it accepts in memory (`Connector.rows`) and, with `--store PATH`, appends
them to a JSON-lines file. Rows are deduplicated by their id column, so a retried call never
stores a row twice.

Its one configuration setting, `requiredFields`, is a list of dotted paths
(`"properties.orderId"`, `"traits.email"`): a row missing one of them, or with it null or
empty, is rejected with a reason naming the path. A row sent to the wrong operation (an
identify row in `add`) is rejected too.

Run it::

    python examples/jsonrpc_connector/connector.py --port 0 [--store rows.jsonl]
        [--batch-size 100] [--operations add,change] [--token SECRET]

It prints the URL it listens on. Tests import it: `start_connector()` serves on
127.0.0.1:<free port> from a daemon thread and returns the server (`.url`, `.connector`,
`.stop()`).
"""

from __future__ import annotations

import argparse
import hmac
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = [
    "Call",
    "Connector",
    "ConnectorServer",
    "RpcError",
    "main",
    "start_connector",
]

JsonDict = dict[str, Any]

OPERATION_TYPES: dict[str, frozenset[str]] = {
    "add": frozenset({"track", "page", "screen"}),
    "change": frozenset({"identify", "group"}),
}
MAX_BODY_BYTES = 50 * 1024 * 1024  # a larger request is refused with HTTP 413

# JSON-RPC 2.0 error codes (https://www.jsonrpc.org/specification#error_object)
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602


class RpcError(Exception):
    """A JSON-RPC error answer: `{"code": code, "message": message}`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Call:
    """One request the connector answered: what a test wants to look at."""

    method: str
    id: Any
    rows: int  # how many rows it carried (0 for behavior and validate)


class Connector:
    """The protocol, without HTTP: `answer(request)` turns one request object into a reply."""

    def __init__(
        self,
        *,
        batch_size: int = 100,
        operations: Iterable[str] = ("add", "change"),
        store: Path | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.operations = [op for op in OPERATION_TYPES if op in set(operations)]
        self.store = store
        self.rows: list[JsonDict] = []  # accepted rows, each with the operation it came by
        self.calls: list[Call] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    # -- the methods -----------------------------------------------------------------------

    def behavior(self, params: JsonDict) -> JsonDict:
        return {"batchSize": self.batch_size, "operations": list(self.operations)}

    def validate(self, params: JsonDict) -> list[str]:
        return configuration_errors(params.get("configuration"))

    def write(self, operation: str, params: JsonDict) -> JsonDict:
        """add and change: store what passes the rules, say why the others did not."""
        if operation not in self.operations:
            raise RpcError(METHOD_NOT_FOUND, f"this connector does not take {operation} rows")
        configuration = params.get("configuration")
        problems = configuration_errors(configuration)
        if problems:
            raise RpcError(INVALID_PARAMS, "invalid configuration: " + "; ".join(problems))
        assert isinstance(configuration, dict)
        id_column, rows = params.get("idColumn"), params.get("rows")
        if not isinstance(id_column, str) or not id_column:
            raise RpcError(INVALID_PARAMS, "idColumn must be a non-empty string")
        if not isinstance(rows, list):
            raise RpcError(INVALID_PARAMS, "rows must be an array")
        if len(rows) > self.batch_size:
            raise RpcError(INVALID_PARAMS, f"at most {self.batch_size} rows per call")
        for index, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get(id_column), str):
                raise RpcError(INVALID_PARAMS, f"row {index} has no string {id_column!r}")
        required = configuration.get("requiredFields", [])
        rejected: list[JsonDict] = []
        accepted: list[JsonDict] = []
        with self._lock:
            for row in rows:
                row_id = row[id_column]
                reason = row_problem(operation, row, required)
                if reason is not None:
                    rejected.append({"id": row_id, "reason": reason})
                elif row_id not in self._seen:  # a retried call: taken already, keep one copy
                    self._seen.add(row_id)
                    accepted.append({"operation": operation, "row": row})
            self.rows.extend(accepted)
            if self.store is not None and accepted:
                with self.store.open("a", encoding="utf-8") as file:
                    file.writelines(json.dumps(entry) + "\n" for entry in accepted)
        return {"rejectedRows": rejected}

    # -- JSON-RPC 2.0 ----------------------------------------------------------------------

    def answer(self, request: Any) -> JsonDict:
        """The response object for one request object (errors included, never raises)."""
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            method, params = _unpack(request)
            with self._lock:
                rows = params.get("rows")
                count = len(rows) if isinstance(rows, list) else 0
                self.calls.append(Call(method, request_id, count))
            result: Any
            if method == "behavior":
                result = self.behavior(params)
            elif method == "validate":
                result = self.validate(params)
            elif method in OPERATION_TYPES:
                result = self.write(method, params)
            else:
                raise RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}")
        except RpcError as exc:
            error = {"code": exc.code, "message": exc.message}
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def stored(self, operation: str | None = None) -> list[JsonDict]:
        """The accepted rows (of one operation), oldest first."""
        with self._lock:
            return [e["row"] for e in self.rows if operation in (None, e["operation"])]

    def requests(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if method in (None, c.method)]


def _unpack(request: Any) -> tuple[str, JsonDict]:
    if isinstance(request, list):
        raise RpcError(INVALID_REQUEST, "batch requests are not supported: one request per POST")
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'a request is an object with "jsonrpc": "2.0"')
    method, params = request.get("method"), request.get("params", {})
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, "method must be a string")
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object")
    return method, params


def configuration_errors(configuration: Any) -> list[str]:
    """What is wrong with a configuration (empty when it is valid)."""
    if not isinstance(configuration, dict):
        return ["configuration must be an object"]
    errors = [f"unknown setting {key!r}" for key in configuration if key != "requiredFields"]
    required = configuration.get("requiredFields", [])
    if not isinstance(required, list) or not all(
        isinstance(path, str) and path for path in required
    ):
        errors.append("requiredFields must be a list of field paths like 'properties.orderId'")
    return errors


def row_problem(operation: str, row: JsonDict, required: Sequence[str]) -> str | None:
    """Why this row is rejected, or None when it is accepted."""
    kind = row.get("type")
    if kind not in OPERATION_TYPES[operation]:
        return f"a {kind!r} row does not belong in {operation}"
    for path in required:
        value: Any = row
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or value == "" or value == [] or value == {}:
            return f"missing required field {path}"
    return None


# -- HTTP ------------------------------------------------------------------------------------


class ConnectorServer(ThreadingHTTPServer):
    """Serves one `Connector` over HTTP POST on every path; `token` requires a Bearer header."""

    daemon_threads = True

    def __init__(
        self,
        connector: Connector,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.connector = connector
        self.token = token
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/rpc"

    def start(self) -> ConnectorServer:
        """Serve from a daemon thread (tests); `serve_forever()` serves from this one."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: ConnectorServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(413, b"request too large", "text/plain")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        if self.server.token is not None and not hmac.compare_digest(
            self.headers.get("Authorization", ""), f"Bearer {self.server.token}"
        ):
            self._send(401, b"missing or wrong Authorization header", "text/plain")
            return
        try:
            request = json.loads(body)
        except ValueError:
            error = {"code": PARSE_ERROR, "message": "the body is not JSON"}
            response: JsonDict = {"jsonrpc": "2.0", "id": None, "error": error}
        else:
            response = self.server.connector.answer(request)
        self._send(200, json.dumps(response).encode(), "application/json")

    def do_GET(self) -> None:
        self._send(405, b"POST JSON-RPC 2.0 requests here", "text/plain")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the rows are the output


def start_connector(
    *,
    port: int = 0,
    batch_size: int = 100,
    operations: Iterable[str] = ("add", "change"),
    store: Path | None = None,
    token: str | None = None,
) -> ConnectorServer:
    """A connector serving on 127.0.0.1:`port` (0: a free one) from a daemon thread."""
    connector = Connector(batch_size=batch_size, operations=operations, store=store)
    return ConnectorServer(connector, "127.0.0.1", port, token).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A JSON-RPC 2.0 connector for analytics-sdk.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--store", type=Path, help="append accepted rows to this JSON-lines file")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per call it accepts")
    parser.add_argument("--operations", default="add,change", help="operations it takes")
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on each request")
    args = parser.parse_args(argv)
    connector = Connector(
        batch_size=args.batch_size, operations=args.operations.split(","), store=args.store
    )
    server = ConnectorServer(connector, args.host, args.port, args.token)
    print(f"JSON-RPC connector listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
