"""`analytics-sdk` (also `python -m analytics_sdk`): serve, send calls, import a file, doctor.

Exit codes: 0 done; 1 something was not delivered, or doctor found a problem; 2 bad usage or
configuration (one line on stderr says which); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from analytics_sdk._version import __version__
from analytics_sdk.errors import AnalyticsError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_IMPORT_FLUSH_EVERY = 1000  # lines between flushes: the queue stays bounded, nothing dropped
_CALLS = ("identify", "track", "page", "screen", "group", "alias")


class UsageError(Exception):
    """A bad argument or setting: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        result: int = args.run(args)
        return result
    except UsageError as exc:
        print(f"analytics-sdk {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AnalyticsError as exc:  # ConfigurationError and friends: already one clear line
        print(f"analytics-sdk {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"analytics-sdk {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- the parser -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics-sdk",
        description="Send customer events from the shell, run a local data plane, check a setup.",
        epilog="Settings default to ANALYTICS_SDK_WRITE_KEY, ANALYTICS_SDK_DATA_PLANE_URL and "
        "ANALYTICS_SDK_CONTROL_PLANE_URL. Try: analytics-sdk serve, then, in another shell, "
        "analytics-sdk track --write-key dev-write-key --data-plane-url http://127.0.0.1:8080 "
        "--user-id u1 --event Signed_Up",
    )
    parser.add_argument("--version", action="version", version=f"analytics-sdk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the local data plane + control plane (dev server)",
        description="A local data plane and control plane storing events in SQLite. "
        "Ctrl-C stops it; every event it acknowledged is in the database.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port, 0 for any (default: 8080)")
    serve.add_argument("--workspace", type=Path, help="workspace JSON: sources, keys, destinations")
    serve.add_argument("--db", default="events.sqlite", help="SQLite file (default: events.sqlite)")
    serve.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests to fail")
    serve.add_argument("--status", type=int, default=503, help="status of failed requests (503)")
    serve.add_argument("--retry-after", type=float, help="Retry-After seconds on failed requests")
    serve.add_argument("--delay-ms", type=int, default=0, help="delay before every answer")
    serve.add_argument("--seed", type=int, help="make --fail-rate repeatable")
    serve.add_argument("--quiet", action="store_true", help="no line per event")
    serve.set_defaults(run=_serve)

    for call in _CALLS:
        sub = commands.add_parser(
            call,
            help=f"send one {call} call and wait for the answer",
            description=f"Send one {call} call (JSON arguments), flush, and report the outcome.",
        )
        _connection_arguments(sub)
        _call_arguments(sub, call)
        sub.set_defaults(run=_send_one, call=call)

    importer = commands.add_parser(
        "import",
        help="send a JSON-lines file of messages (replay, back-fill)",
        description="Send every line of FILE (one message object per line, with its type) "
        "keeping each line's messageId and timestamp. Ends with a summary: delivered, "
        "rejected with reasons, and the line numbers of malformed lines.",
    )
    importer.add_argument("file", type=Path, help="a .jsonl file ('-' for stdin)")
    _connection_arguments(importer)
    importer.add_argument("--no-progress", action="store_true", help="no progress bar")
    importer.set_defaults(run=_import)

    doctor = commands.add_parser(
        "doctor",
        help="check connectivity, the source config and the installed integrations",
        description="Check the data plane and the control plane, list the installed "
        "integrations, what the source config enables, and any options errors.",
    )
    _connection_arguments(doctor)
    doctor.add_argument("--control-plane-url", help="default: ANALYTICS_SDK_CONTROL_PLANE_URL")
    doctor.set_defaults(run=_doctor)
    return parser


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write-key", help="default: ANALYTICS_SDK_WRITE_KEY")
    parser.add_argument("--data-plane-url", help="default: ANALYTICS_SDK_DATA_PLANE_URL")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")


def _call_arguments(parser: argparse.ArgumentParser, call: str) -> None:
    parser.add_argument("--user-id", help="userId")
    parser.add_argument("--anonymous-id", help="anonymousId")
    if call == "track":
        parser.add_argument("--event", required=True, help="event name")
    if call in ("page", "screen"):
        parser.add_argument("--name", help=f"{call} name")
        parser.add_argument("--category", help=f"{call} category")
    if call == "group":
        parser.add_argument("--group-id", required=True, help="groupId")
    if call == "alias":
        parser.add_argument("--previous-id", required=True, help="previousId")
    if call in ("track", "page", "screen"):
        parser.add_argument("--properties", type=_json_object, help="JSON object")
    if call in ("identify", "group"):
        parser.add_argument("--traits", type=_json_object, help="JSON object")
    parser.add_argument("--context", type=_json_object, help="JSON object")
    parser.add_argument("--integrations", type=_json_object, help='JSON, e.g. {"All": false}')
    parser.add_argument("--timestamp", help="ISO-8601 time of the event (back-fill)")
    parser.add_argument("--message-id", help="messageId (default: a new uuid4)")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg}, column {exc.colno}"
        raise argparse.ArgumentTypeError(f"not valid JSON ({where})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object ({...})")
    return value


# -- serve ----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from analytics_sdk.devserver import DevServer, Faults, WorkspaceError

    try:
        faults = Faults(
            fail_rate=args.fail_rate,
            status=args.status,
            retry_after=args.retry_after,
            delay_ms=args.delay_ms,
            seed=args.seed,
        )
        server = DevServer(
            host=args.host,
            port=args.port,
            workspace=args.workspace,
            db=args.db,
            faults=faults,
            echo=None if args.quiet else sys.stdout,
        )
    except (ValueError, WorkspaceError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # even when started with it ignored
    with server:
        keys = ", ".join(server.workspace().write_keys)
        print(f"analytics-sdk dev server on {server.url}  (data plane and control plane)")
        print(f"  write keys: {keys}   events: {args.db}   Ctrl-C stops")
        if args.fail_rate:
            print(f"  faults: {args.fail_rate:.0%} of requests answered {args.status}")
        sys.stdout.flush()
        stop.wait()
    counts = server.counts
    print(
        f"stopped: {counts.stored} events stored, {counts.duplicates} duplicates, "
        f"{counts.refused} requests refused, {counts.faults} faults injected"
    )
    return EXIT_OK


# -- the six calls and import -----------------------------------------------------------------


class _Outcomes:
    """on_error collected: reason -> count, and which messageIds failed and why."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reasons: Counter[str] = Counter()
        self.failed: dict[str, str] = {}

    def __call__(self, error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with self.lock:
            self.reasons[error.reason] += len(messages) or 1
            for message in messages:
                self.failed[str(message.get("messageId"))] = f"{error.reason}: {error}"


def _client(args: argparse.Namespace, outcomes: _Outcomes) -> Any:
    from analytics_sdk.client import Client

    return Client(
        args.write_key,
        args.data_plane_url,
        on_error=outcomes,
        strict=True,
        shutdown_timeout=args.timeout,
    )


def _send_one(args: argparse.Namespace) -> int:
    outcomes = _Outcomes()
    client = _client(args, outcomes)
    try:
        keyword = {
            "user_id": args.user_id,
            "anonymous_id": args.anonymous_id,
            "context": args.context,
            "integrations": args.integrations,
            "timestamp": args.timestamp,
            "message_id": args.message_id,
        }
        for name in ("event", "name", "category", "group_id", "previous_id", "properties"):
            if hasattr(args, name):
                keyword[name] = getattr(args, name)
        if hasattr(args, "traits"):
            keyword["traits"] = args.traits
        if args.call == "alias":  # an alias names both ids itself
            if args.anonymous_id is not None:
                raise UsageError("alias takes --previous-id and --user-id, not --anonymous-id")
            del keyword["anonymous_id"]
        try:
            message_id = getattr(client, args.call)(**keyword)
        except AnalyticsError as exc:
            raise UsageError(str(exc)) from None
        delivered = client.flush(timeout=args.timeout)
    finally:
        client.shutdown(timeout=args.timeout)
    if message_id in outcomes.failed:
        print(f"not delivered: {outcomes.failed[message_id]}", file=sys.stderr)
        return EXIT_FAILED
    if not delivered:
        print(f"not confirmed within {args.timeout:g} s: {message_id}", file=sys.stderr)
        return EXIT_FAILED
    print(f"delivered {args.call} {message_id}")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    outcomes = _Outcomes()
    malformed: list[tuple[int, str]] = []
    sent: dict[str, int] = {}  # messageId -> line number
    total_lines = _count_lines(args.file)
    client = _client(args, outcomes)
    try:
        with _progress(total_lines, not args.no_progress) as advance:
            for number, line in _lines(args.file):
                advance()
                if not line.strip():
                    continue
                try:
                    call, keyword = _message_call(line)
                    message_id = getattr(client, call)(**keyword)
                except (ValueError, AnalyticsError) as exc:
                    malformed.append((number, str(exc)))
                    continue
                sent[message_id] = number
                if len(sent) % _IMPORT_FLUSH_EVERY == 0:
                    client.flush(timeout=args.timeout)
        client.flush(timeout=args.timeout)
    finally:
        client.shutdown(timeout=args.timeout)
    rejected = {mid: why for mid, why in outcomes.failed.items() if mid in sent}
    delivered = len(sent) - len(rejected)
    print(f"{delivered} delivered, {len(rejected)} rejected, {len(malformed)} malformed lines")
    for reason, count in sorted(outcomes.reasons.items()):
        print(f"  rejected ({reason}): {count}")
    for mid, why in sorted(rejected.items(), key=lambda item: sent[item[0]])[:20]:
        print(f"  line {sent[mid]}: {why}")
    for number, why in malformed[:50]:
        print(f"  line {number}: {why}")
    if len(malformed) > 50:
        print(f"  ... and {len(malformed) - 50} more malformed lines")
    return EXIT_OK if not rejected and not malformed else EXIT_FAILED


def _message_call(line: str) -> tuple[str, dict[str, Any]]:
    """One JSONL line (a wire message) -> the client method and its keyword arguments."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(message, dict):
        raise ValueError("must be a JSON object")
    call = message.get("type")
    if call not in _CALLS:
        raise ValueError(f"type: must be one of {', '.join(_CALLS)} (got {call!r})")
    keyword: dict[str, Any] = {
        "user_id": message.get("userId"),
        "anonymous_id": message.get("anonymousId"),
        "context": message.get("context"),
        "integrations": message.get("integrations"),
        "timestamp": message.get("timestamp") or message.get("originalTimestamp"),
        "message_id": message.get("messageId"),
    }
    fields = {
        "track": {"event": "event", "properties": "properties"},
        "identify": {"traits": "traits"},
        "page": {"name": "name", "category": "category", "properties": "properties"},
        "screen": {"name": "name", "category": "category", "properties": "properties"},
        "group": {"group_id": "groupId", "traits": "traits"},
        "alias": {"previous_id": "previousId"},
    }[call]
    for argument, key in fields.items():
        keyword[argument] = message.get(key)
    if call == "alias":  # previousId and userId are the alias's two ids
        del keyword["anonymous_id"]
    if isinstance(keyword["context"], dict):  # the library is ours now; traits come back
        keyword["context"] = {k: v for k, v in keyword["context"].items() if k != "library"}
    return call, keyword


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if str(path) == "-":
        yield from enumerate(sys.stdin, start=1)
        return
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            yield from enumerate(handle, start=1)
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror})") from None


def _count_lines(path: Path) -> int | None:
    if str(path) == "-":
        return None
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror})") from None


class _progress:  # noqa: N801 - used as a function: `with _progress(...) as advance`
    """tqdm when installed (the `cli` extra) and wanted; else a counter on a terminal."""

    def __init__(self, total: int | None, wanted: bool) -> None:
        self._total = total
        self._wanted = wanted and sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0
        self._last = 0.0

    def __enter__(self) -> Callable[[], None]:
        if not self._wanted:
            return lambda: None
        try:
            from tqdm import tqdm
        except ImportError:
            return self._plain
        self._bar = tqdm(total=self._total, unit=" lines", file=sys.stderr)
        return lambda: self._bar.update(1)

    def _plain(self) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            of = f"/{self._total}" if self._total else ""
            sys.stderr.write(f"\r{self._done}{of} lines")
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._wanted and self._done:
            sys.stderr.write("\n")


# -- doctor -----------------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    import requests

    from analytics_sdk._factory import Factory
    from analytics_sdk._source_config import SourceConfig, SourceConfigError
    from analytics_sdk.options import ClientOptions

    options = ClientOptions.build(
        args.write_key,
        args.data_plane_url,
        {"control_plane_url": args.control_plane_url} if args.control_plane_url else {},
    )
    key = options.write_key.get_secret_value()
    problems = 0
    out = sys.stdout
    print("analytics-sdk doctor", __version__, file=out)
    data_plane = str(options.data_plane_url)
    try:
        answer = requests.get(f"{data_plane}/health", timeout=args.timeout)
        _row(out, "data plane", data_plane, f"reachable (GET /health: {answer.status_code})")
    except requests.RequestException as exc:
        problems += 1
        _row(out, "data plane", data_plane, f"UNREACHABLE ({type(exc).__name__})")
    config = None
    if options.control_plane_url is None:
        _row(out, "control plane", "-", "not configured (device mode off)")
    else:
        url = f"{options.control_plane_url}/sourceConfig/"
        try:
            answer = requests.get(url, auth=(key, ""), timeout=args.timeout)
            if answer.status_code != 200:
                raise SourceConfigError(f"answered HTTP {answer.status_code}")
            config = SourceConfig.parse(answer.content)
            state = "enabled" if config.source.enabled else "DISABLED"
            _row(out, "control plane", options.control_plane_url, f"{config.summary()}, {state}")
            problems += 0 if config.source.enabled else 1
        except (requests.RequestException, SourceConfigError) as exc:
            problems += 1
            what = str(exc) if isinstance(exc, SourceConfigError) else type(exc).__name__
            _row(out, "control plane", options.control_plane_url, f"FAILED ({what})")
    factory = Factory(lambda: "doctor", lambda error, messages: None, [])
    entries = factory.check(config) if config is not None else factory.status()
    print("\nintegrations:", file=out)
    print(f"  {'key':<12} {'installed':<44} {'enabled':<8} options", file=out)
    for entry in entries:
        installed = "yes" if entry["installed"] else f"no: {entry.get('hint') or '-'}"
        enabled = "yes" if entry["enabled_by_config"] else "no"
        error = entry.get("options_error")
        if entry["enabled_by_config"] and (error or not entry["installed"]):
            problems += 1
        print(f"  {entry['key']:<12} {installed:<44} {enabled:<8} {error or 'ok'}", file=out)
    print(f"\n{problems} problem(s) found" if problems else "\nno problems found", file=out)
    return EXIT_FAILED if problems else EXIT_OK


def _row(out: TextIO, what: str, where: str, state: str) -> None:
    print(f"  {what:<14} {where:<32} {state}", file=out)
