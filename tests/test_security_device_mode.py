"""Device mode keeps secrets and survives a hostile control plane (issue 6, LESSONS 16, 24).

Two realistic runs against real servers on 127.0.0.1. The first enables integrations from a
control plane whose destination configs hold API keys, tokens and passwords (top level,
nested, in header lists), makes every path fail once (5xx, 401 echoing the keys, a wrapper
raising, rejecting, failing setup, invalid options, a stop that overruns) and shuts down; no
secret may show in any log record at any level, any error, repr, stats or file name. The
second serves one good sourceConfig and then every kind of bad document: events keep flowing
to the data plane and to the integration the last good config enabled.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import stat
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from analytics_sdk_webhook import WebhookIntegration
from conftest import MakeClient
from pydantic import Field, SecretStr
from support.control_plane import ControlPlane
from support.leaks import formatted, leak_surfaces
from support.servers import DataPlane, Reply, running_data_plane

from analytics_sdk import AnalyticsError, Client, Reason
from analytics_sdk._factory import Discovered
from analytics_sdk._source_config import MAX_DOCUMENT_BYTES, SourceConfigClient
from analytics_sdk.integration import Integration, IntegrationOptions, RejectedMessage
from analytics_sdk.models import TrackMessage
from analytics_sdk.options import ClientOptions

KEY = "wk_SECRET_abc123"
TOKEN = base64.b64encode(f"{KEY}:".encode()).decode()  # the Authorization header's value
HEADER_SECRET = "wh-SECRET-header-7f3a"  # a webhook header value: a SecretStr in a list
API_KEY = "lk-SECRET-apikey-91c2"  # a plain `str` option of a third-party wrapper
CLIENT_SECRET = "lk-SECRET-client-5d1e"  # a SecretStr option
NESTED_PASSWORD = "lk-SECRET-nested-0b7c"  # auth.password, a nested plain value
BROKEN_TOKEN = "bk-SECRET-token-44aa"  # in a destination whose options are invalid
SETUP_SECRET = "sf-SECRET-setup-88e1"  # quoted by a wrapper whose setup() fails
CLOUD_TOKEN = "mp-SECRET-cloud-3c9d"  # a cloud-mode destination's: never used by us
SECRETS = (KEY, TOKEN, HEADER_SECRET, API_KEY, CLIENT_SECRET, NESTED_PASSWORD, BROKEN_TOKEN,
           SETUP_SECRET, CLOUD_TOKEN)  # fmt: skip
WAIT = 10.0  # seconds any single wait may take before the test fails

Reported = list[tuple[AnalyticsError, list[dict[str, Any]]]]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    assert "SECRET" not in text  # catches a cut or partly masked secret too



def sdk_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.split(".")[0] == "analytics_sdk"]


# -- the wrappers the control plane enables -------------------------------------------------


class RecordingWebhook(WebhookIntegration):
    """The real webhook wrapper, remembered so the test can look at it."""

    instances: ClassVar[list[RecordingWebhook]] = []

    def setup(self) -> None:
        super().setup()
        RecordingWebhook.instances.append(self)


class LeakyOptions(IntegrationOptions):
    api_key: str  # plain str on purpose: third-party wrappers do not all use SecretStr
    client_secret: SecretStr
    auth: dict[str, Any] = Field(default_factory=dict)


class Leaky(Integration[LeakyOptions]):
    """A careless wrapper: it logs, raises, rejects and interrupts quoting its secrets."""

    key = "leaky"
    display_name = "Leaky"
    destination_names = frozenset({"LEAKY"})
    options_model = LeakyOptions
    instances: ClassVar[list[Leaky]] = []

    def setup(self) -> None:
        self.events: list[str] = []
        self.release = threading.Event()
        self.logger.debug(
            "connecting with key %s, password %s", self.options.api_key,
            self.options.auth.get("password"),
        )  # fmt: skip
        Leaky.instances.append(self)

    def track(self, message: TrackMessage) -> None:
        self.events.append(message.event)
        if message.event == "Explode":
            raise RuntimeError(f"the destination refused api key {self.options.api_key}")
        if message.event == "Refuse":
            secret = self.options.client_secret.get_secret_value()
            raise RejectedMessage(f"bad client secret {secret}")
        if message.event == "Block":
            self.release.wait(WAIT)  # until interrupt(): the stop overruns its deadline

    def interrupt(self) -> None:
        self.release.set()
        raise RuntimeError(f"could not cancel the request made with {self.options.api_key}")


class BrokenOptions(IntegrationOptions):
    token: SecretStr
    region: Literal["us", "eu"] = "us"


class Broken(Integration[BrokenOptions]):
    key = "broken"
    display_name = "Broken"
    destination_names = frozenset({"BROKEN"})
    options_model = BrokenOptions


class SetupFailsOptions(IntegrationOptions):
    api_key: SecretStr


class SetupFails(Integration[SetupFailsOptions]):
    key = "setupfails"
    display_name = "Setup Fails"
    destination_names = frozenset({"SETUPFAILS"})
    options_model = SetupFailsOptions

    def setup(self) -> None:
        raise ConnectionError(f"auth failed for {self.options.api_key.get_secret_value()}")


@pytest.fixture(autouse=True)
def _installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """These wrappers, and no real one that would try to reach the internet."""
    RecordingWebhook.instances = []
    Leaky.instances = []
    found = {
        cls.key: Discovered(cls.key, cls) for cls in (RecordingWebhook, Leaky, Broken, SetupFails)
    }
    monkeypatch.setattr("analytics_sdk._factory.discover", lambda: found)
    monkeypatch.setattr("analytics_sdk_webhook._BACKOFF_BASE", 0.001)  # same path, no waits


def destination(
    dst_id: str, name: str, display: str, config: dict[str, Any], mode: str = "device"
) -> dict[str, Any]:
    return {
        "id": dst_id,
        "name": display,
        "enabled": True,
        "destinationDefinition": {"name": name, "displayName": display},
        "config": {"connectionMode": mode, **config},
    }


def webhook(hook_url: str) -> dict[str, Any]:
    headers = [{"from": "X-Api-Key", "to": HEADER_SECRET}, {"from": "X-Plain", "to": "hello"}]
    return destination("dst_wh", "WEBHOOK", "Webhook",
                       {"webhookUrl": hook_url, "headers": headers})  # fmt: skip


def secret_document(hook_url: str) -> dict[str, Any]:
    leaky = {
        "apiKey": API_KEY,
        "clientSecret": CLIENT_SECRET,
        "auth": {"user": "svc", "password": NESTED_PASSWORD},
    }
    return {
        "source": {
            "id": "src_1",
            "name": "backend",
            "enabled": True,
            "writeKey": KEY,
            "config": {},
            "destinations": [
                webhook(hook_url),
                destination("dst_lk", "LEAKY", "Leaky", leaky),
                destination(
                    "dst_bk", "BROKEN", "Broken", {"token": BROKEN_TOKEN, "region": BROKEN_TOKEN}
                ),
                destination("dst_sf", "SETUPFAILS", "Setup Fails", {"apiKey": SETUP_SECRET}),
                destination("dst_mp", "MP", "Mixpanel", {"token": CLOUD_TOKEN}, mode="cloud"),
            ],
        }
    }


def wait_until(condition: Callable[[], object], timeout: float = WAIT) -> bool:
    """Poll a condition the test cannot be notified of (another thread's list)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- 1. secrets ------------------------------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[DataPlane]:
    """The webhook's receiver."""
    with running_data_plane() as server:
        yield server


@pytest.fixture
def secret_control_plane(hook: DataPlane) -> Iterator[ControlPlane]:
    server = ControlPlane(KEY, secret_document(f"{hook.url}/hook")).start()
    try:
        yield server
    finally:
        server.stop()


def test_device_mode_secrets_never_leak_through_failures_and_shutdown(
    make_client: MakeClient,
    data_plane: DataPlane,
    hook: DataPlane,
    secret_control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root too: every record of every library
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache location
    reported: Reported = []
    client = make_client(
        write_key=KEY,
        control_plane_url=secret_control_plane.url,
        max_retries=1,
        on_error=lambda error, messages: reported.append((error, messages)),
    )
    hook.script = [Reply(status=500), Reply(status=401, body=f"bad key {HEADER_SECRET}")]
    data_plane.script = [
        Reply(status=503, headers={"Retry-After": "0"}),
        Reply(status=401, body=f"write key {KEY} ({TOKEN}) refused; {HEADER_SECRET}"),
    ]

    client.track("u1", "Hello")  # starts device mode: the config is fetched in the background
    assert wait_until(lambda: RecordingWebhook.instances and Leaky.instances)
    for event in ("Explode", "Refuse", "Fine"):
        client.track("u1", event, integrations={"All": False, "Leaky": True})
    assert client.flush(timeout=WAIT)
    client.track("u1", "Block", integrations={"All": False, "Leaky": True})
    assert wait_until(lambda: "Block" in Leaky.instances[0].events)
    assert client.shutdown(timeout=1.0) is False  # Leaky's stop overran: abandoned

    # The run went through every path the checks below must see.
    statuses = [r.status for r in data_plane.requests]  # batch sizes vary with timing
    assert statuses[:2] == [503, 401]
    assert set(statuses[2:]) <= {200}
    assert [r.status for r in hook.requests] == [500, 401]
    assert hook.requests[0].headers["X-Api-Key"] == HEADER_SECRET  # the secret was in play
    (webhook_instance,) = RecordingWebhook.instances
    (leaky,) = Leaky.instances
    assert leaky.events == ["Hello", "Explode", "Refuse", "Fine", "Block"]
    reasons = [error.reason for error, _ in reported]
    assert reasons.count(Reason.REJECTED_4XX) == 1  # the data plane's 401
    assert reasons.count(Reason.REJECTED_BY_INTEGRATION) == 2  # the webhook's 401, Leaky's
    status = {entry["key"]: entry for entry in client.integrations_status()}
    assert (status["leaky"]["counters"]["failed"], status["leaky"]["counters"]["rejected"]) == (
        1,
        1,
    )
    assert "region" in status["broken"]["options_error"]
    assert "ConnectionError" in status["setupfails"]["options_error"]
    records = sdk_records(caplog)
    assert any(r.levelno == logging.DEBUG and "connecting with key" in r.getMessage()
               for r in records)  # fmt: skip
    interrupted = [r for r in records if "failed to interrupt" in r.getMessage()]
    assert interrupted
    assert "RuntimeError" in formatted(interrupted[0])  # its traceback is there, masked

    for text in leak_surfaces(caplog.records, reported):
        assert_no_secret(text)
    for thing in (client, client.options, client.stats(), client.integrations_status(),
                  webhook_instance, webhook_instance.options, leaky):  # fmt: skip
        assert_no_secret(repr(thing))
        assert_no_secret(str(thing))
    assert not [r for r in records if "clear text" in r.getMessage()]  # loopback: quiet

    # The cache, in its default place: private, named without the key, no fast hash of it.
    directory = tmp_path / "xdg" / "analytics-sdk"
    (cache,) = directory.iterdir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert_no_secret(cache.name)
    for algorithm in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b",
                      "blake2s", "sha3_256"):  # fmt: skip
        for form in (KEY, TOKEN, f"{KEY}:"):
            assert hashlib.new(algorithm, form.encode()).hexdigest()[:8] not in cache.name
    stored = json.loads(cache.read_text())
    assert KEY not in json.dumps(stored)  # the document's writeKey is not stored either


def test_a_source_config_dict_keeps_its_secrets_too(
    make_client: MakeClient, hook: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    reported: Reported = []
    client = make_client(
        write_key=KEY,
        source_config=secret_document(f"{hook.url}/hook"),
        on_error=lambda error, messages: reported.append((error, messages)),
    )

    for event in ("Explode", "Refuse"):
        client.track("u1", event, integrations={"All": False, "Leaky": True})
    assert wait_until(lambda: Leaky.instances)
    assert client.flush(timeout=WAIT)
    client.shutdown(timeout=2.0)

    assert [error.reason for error, _ in reported] == [Reason.REJECTED_BY_INTEGRATION]
    for record in caplog.records:
        assert_no_secret(formatted(record))
    for error, _messages in reported:
        assert_no_secret(str(error))
    assert_no_secret(repr(client))
    assert_no_secret(repr(client.stats()))
    assert_no_secret(repr(client.integrations_status()))


def test_the_options_repr_hides_a_source_config_dict(hook: DataPlane) -> None:
    client = Client(KEY, hook.url, send=False, source_config=secret_document(hook.url))
    try:
        assert_no_secret(repr(client.options))
    finally:
        client.shutdown(timeout=1.0)


# -- 5. a hostile control plane ----------------------------------------------------------------

FRESH = "fresh-SECRET-never-registered"  # in the bad documents: must never be quoted
Answer = Callable[[BaseHTTPRequestHandler], None]


class HostileControlPlane(ThreadingHTTPServer):
    """GET /sourceConfig/ answered by `answer`, which may lie about sizes or never end.

    `count` is incremented before the answer: the client handles one answer completely
    before it sends the next request, so once request n + 1 arrived, answer n is dealt with.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer) -> None:
        super().__init__(("127.0.0.1", 0), _HostileHandler)
        self.answer = answer
        self.arrived = threading.Condition()
        self.count = 0
        self.streamed: list[tuple[int, int]] = []  # (cap, bytes out) per endless answer
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, answer: Answer) -> int:
        """Answer with `answer` from now on; returns the requests seen so far."""
        with self.arrived:
            self.answer = answer
            return self.count

    def wait_for_requests(self, count: int, timeout: float = WAIT) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.count >= count, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading an endless answer resets the connection: expected

    def __enter__(self) -> HostileControlPlane:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class _HostileHandler(BaseHTTPRequestHandler):
    server: HostileControlPlane
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        with self.server.arrived:
            self.server.count += 1
            answer = self.server.answer
            self.server.arrived.notify_all()
        answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def document_answer(body: bytes, *, length: int | None = None, gzipped: bool = False) -> Answer:
    """A 200 with `body`; `length` overrides the Content-Length header (a lie)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        payload = gzip.compress(body) if gzipped else body
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if gzipped:
            handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(payload) if length is None else length))
        handler.end_headers()
        handler.wfile.write(payload)
        if length is not None and length != len(payload):
            handler.close_connection = True  # what follows the declared length is garbage

    return answer


ENDLESS_CAP = 64 << 20  # bytes: 12 times the document limit


def endless_answer(chunk: bytes, *, gzipped: bool = False, cap: int = ENDLESS_CAP) -> Answer:
    """A 200 without Content-Length that streams `chunk` until the client hangs up, or `cap`
    bytes went out: a regression that reads everything ends too, and fails on `streamed`."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if gzipped:
            handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        sent = 0
        try:
            while sent < cap:
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:  # the client stopped reading and closed
            pass
        handler.server.streamed.append((cap, sent))  # type: ignore[attr-defined]

    return answer


def good_document(hook_url: str, *extra: dict[str, Any]) -> bytes:
    source = {"id": "src_1", "writeKey": KEY, "destinations": [webhook(hook_url), *extra]}
    return json.dumps({"source": source}).encode()


def nested(depth: int) -> bytes:
    return b'{"source": {"id": "s", "config": ' + b"[" * depth + b"]" * depth + b"}}"


# A gzip member that inflates 1 MiB of zeros from about 1 KiB: repeated, a bomb.
_ZEROS_MEMBER = gzip.compress(bytes(1 << 20), compresslevel=9)

UNUSABLE: dict[str, bytes] = {
    "not JSON": f"<html>{FRESH}</html>".encode(),
    "truncated JSON": f'{{"source": {{"id": "{FRESH}", "destinations": ['.encode(),
    "an array": f'["{FRESH}"]'.encode(),
    "no source": f'{{"sources": [{{"id": "{FRESH}"}}]}}'.encode(),
    "source of the wrong type": f'{{"source": "{FRESH}"}}'.encode(),
    "destinations not a list": f'{{"source": {{"id": "s", "destinations": "{FRESH}"}}}}'.encode(),
    "wrong types": f'{{"source": {{"id": 7, "enabled": "{FRESH}", "config": []}}}}'.encode(),
    "nested too deeply": nested(100_000),
    "a huge integer": b'{"source": {"id": "s", "n": ' + b"9" * 100_000 + b"}}",
    "NaN for an id": b'{"source": {"id": NaN}}',
    "not UTF-8": b'{"source": {"id": "\xff\xfe"}}',
    "over the limit": b'{"source": {"id": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}}',
}


def test_a_hostile_control_plane_never_stops_delivery_nor_the_last_good_config(
    make_client: MakeClient,
    data_plane: DataPlane,
    hook: DataPlane,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    hook_url = f"{hook.url}/hook"
    with HostileControlPlane(document_answer(good_document(hook_url))) as control_plane:
        client = make_client(
            write_key=KEY,
            control_plane_url=control_plane.url,
            config_refresh_interval=0.01,
            config_cache_path=tmp_path,
        )
        delivered = 0

        def track_and_check(event: str) -> None:
            nonlocal delivered
            delivered += 1
            assert client.track("u1", event) is not None
            assert client.flush(timeout=WAIT)
            assert data_plane.wait_for_events(delivered), event  # cloud delivery goes on
            assert hook.wait_for_events(delivered), event  # the last good config is in force
            assert hook.events[-1]["event"] == event

        track_and_check("Before")  # the good config arrived and enabled the webhook

        # Usable documents with junk in them: thousands of destinations, most malformed.
        junk = [{"id": n, "destinationDefinition": FRESH, "config": [FRESH]} for n in range(3000)]
        unknown = [
            destination(f"dst_{n}", "NOPE", "Nope", {"apiKey": "nope-SECRET-apikey"})
            for n in range(1000)
        ]
        cloud = [destination(f"dst_c{n}", "MP", "Mixpanel", {}, mode="cloud") for n in range(1000)]
        for name, body in {
            "malformed destinations": good_document(hook_url, *junk),
            "unknown integrations": good_document(hook_url, *unknown, *cloud),
        }.items():
            seen = control_plane.serve(document_answer(body))
            assert control_plane.wait_for_requests(seen + 2), name
            track_and_check(f"After {name}")
        assert client.integrations_status()  # still answers, with 4000 destinations known

        # Unusable answers: each one is refused, the config stays as it was.
        answers: dict[str, Answer] = {n: document_answer(b) for n, b in UNUSABLE.items()}
        answers.update({
            "a Content-Length over the limit": document_answer(b"{}", length=1 << 40),
            "a Content-Length shorter than the body": document_answer(
                good_document(hook_url, *unknown), length=100),
            "an endless body": endless_answer(b'{"source": {"id": "' + b"x" * 65536),
            "a gzip bomb": endless_answer(_ZEROS_MEMBER, gzipped=True, cap=64 << 10),
            "gzip over the limit": document_answer(UNUSABLE["over the limit"], gzipped=True),
        })  # fmt: skip
        for name, answer in answers.items():
            seen = control_plane.serve(answer)
            assert control_plane.wait_for_requests(seen + 2), name
            track_and_check(f"After {name}")

        # The endless body was not read to the end: the client hung up after the limit.
        endless = [sent for cap, sent in control_plane.streamed if cap == ENDLESS_CAP]
        assert endless
        assert max(endless) < ENDLESS_CAP
        # No bad answer replaced the cached config either.
        (cache,) = tmp_path.glob("sourceconfig-*.json")
        cached = json.loads(cache.read_text())["document"]["source"]["destinations"]
        assert cached[0]["config"]["webhookUrl"] == hook_url
        assert len(cached) == 2001  # the last good document: webhook, unknown and cloud ones

        # The config thread is alive: a new good document still takes effect.
        seen = control_plane.serve(document_answer(good_document(f"{hook.url}/moved")))
        assert control_plane.wait_for_requests(seen + 2)
        track_and_check("Moved")
        assert hook.requests[-1].path == "/moved"

    warnings = [r.getMessage() for r in sdk_records(caplog) if r.levelno >= logging.WARNING]
    for line in warnings:
        assert_no_secret(line)
    assert not any(FRESH in formatted(r) for r in caplog.records)
    # Rate-limited: one line per kind of trouble, not one per document or destination.
    assert len([w for w in warnings if "unusable document" in w]) == 1, warnings
    assert len([w for w in warnings if "refresh failed" in w]) == 1, warnings
    assert len([w for w in warnings if "no integration for it is installed" in w]) == 1, warnings
    assert len([w for w in warnings if "skipped" in w]) == 6, warnings  # 5 named, 1 summary
    assert len(warnings) <= 12, warnings


def test_a_gzip_bomb_is_never_inflated_past_the_limit(tmp_path: Path) -> None:
    """256 KiB on the wire, 256 MiB inflated: the fetch stops after MAX_DOCUMENT_BYTES, so
    memory stays a few times that (reading it all would take the whole 256 MiB)."""
    refused = threading.Event()
    bomb = endless_answer(_ZEROS_MEMBER, gzipped=True, cap=256 * len(_ZEROS_MEMBER))
    with HostileControlPlane(bomb) as control_plane:
        options = ClientOptions.build(KEY, "http://127.0.0.1:9", {
            "control_plane_url": control_plane.url, "config_cache_path": tmp_path,
            "config_refresh_interval": 60.0,
        }, environ={})  # fmt: skip
        config = SourceConfigClient(options, lambda *_: None, lambda _reason: refused.set())
        tracemalloc.start()
        try:
            config.start()
            assert refused.wait(WAIT)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            config.stop(2.0)

    assert peak < 4 * MAX_DOCUMENT_BYTES  # 20 MiB, against 256 MiB when read to the end
