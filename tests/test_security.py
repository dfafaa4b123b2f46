"""Security: secrets, private files, TLS and clear text (LESSONS 16, 17, 11.4; issue 6).

A run that retries, is refused with 401 and is given invalid calls, with every logger at
DEBUG: the key shows up in no log record, no reported error, no repr and no traceback. The
identity and sourceConfig cache files are 0600 in 0700 directories whatever the umask; TLS
is verified by default against a real HTTPS server on 127.0.0.1; plain http:// to another
machine is warned about once. Device mode's secrets: test_security_device_mode.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import MakeClient
from requests.adapters import HTTPAdapter
from support.control_plane import ControlPlane, running_control_plane
from support.leaks import formatted, leak_surfaces, rendered
from support.servers import DataPlane, Reply

from analytics_sdk import (
    AnalyticsError,
    Client,
    ConfigurationError,
    DeliveryError,
    InvalidMessageError,
    Reason,
)
from analytics_sdk._logging import child_logger, register_secret
from analytics_sdk._source_config import SourceConfigClient
from analytics_sdk._transport import warn_if_cleartext
from analytics_sdk.options import ClientOptions

KEY = "wk_SECRET_abc123"
TOKEN = base64.b64encode(f"{KEY}:".encode()).decode()  # what the Authorization header holds

Reported = list[tuple[AnalyticsError, list[dict[str, Any]]]]


def assert_no_secret(text: str) -> None:
    assert KEY not in text
    assert TOKEN not in text
    assert "SECRET" not in text


def is_sdk(record: logging.LogRecord) -> bool:
    return record.name == "analytics_sdk" or record.name.startswith("analytics_sdk.")




def run_retry_reject_and_invalid_calls(
    make_client: MakeClient, data_plane: DataPlane, reported: Reported
) -> Client:
    client = make_client(
        write_key=KEY,
        max_retries=1,
        on_error=lambda error, messages: reported.append((error, messages)),
    )
    # A 503 then a 200: one retry, delivered.
    data_plane.script = [Reply(status=503, body="try later", headers={"Retry-After": "0"})]
    assert client.track("u1", "Retried", {"n": 1}) is not None
    assert client.flush(timeout=10)
    # A 401: rejected, reported, not retried.
    data_plane.script = [Reply(status=401, body="Unauthorized")]
    assert client.track("u1", "Refused") is not None
    assert client.flush(timeout=10)
    # Invalid calls: rejected at once.
    assert client.track("u1", None) is None
    assert client.track("u1", "NaN", {"x": float("nan")}) is None
    bad_id: Any = 3.5
    assert client.identify(bad_id, {"plan": "pro"}) is None
    assert client.group("u1", None) is None
    return client


@pytest.mark.usefixtures("_all_loggers_at_debug")
def test_write_key_never_in_logs_errors_reprs_or_stats(
    make_client: MakeClient, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    reported: Reported = []

    client = run_retry_reject_and_invalid_calls(make_client, data_plane, reported)

    # The run really did what it should, so the checks below see every path.
    assert [r.status for r in data_plane.requests] == [503, 200, 401]
    assert [e["event"] for e in data_plane.events] == ["Retried"]
    stats = client.stats()
    assert stats.retried == 1
    assert stats.dropped == {"rejected_4xx": 1, "invalid_input": 3, "serialization_error": 1}
    reasons = [error.reason for error, _ in reported]
    assert reasons.count(Reason.REJECTED_4XX) == 1
    assert reasons.count(Reason.INVALID_INPUT) == 3
    assert reasons.count(Reason.SERIALIZATION_ERROR) == 1
    sdk_records = [r for r in caplog.records if r.name.startswith("analytics_sdk")]
    assert any(r.levelno == logging.DEBUG and "retry" in r.getMessage() for r in sdk_records)
    assert any(r.levelno == logging.ERROR and "401" in r.getMessage() for r in sdk_records)

    for text in leak_surfaces(caplog.records, reported):
        assert_no_secret(text)
    assert_no_secret(repr(client))
    assert_no_secret(repr(stats))
    assert_no_secret(repr(client.options))


@pytest.mark.usefixtures("_all_loggers_at_debug")
def test_only_the_analytics_sdk_logger_speaks(
    make_client: MakeClient, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    reported: Reported = []

    run_retry_reject_and_invalid_calls(make_client, data_plane, reported)

    assert caplog.records, "nothing was logged: the capture is not working"
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud  # the 401 and the invalid calls log at ERROR
    assert [r.name for r in loud if not is_sdk(r)] == []
    assert [r.getMessage() for r in caplog.records if r.name.split(".")[0] == "backoff"] == []
    # Only requests' own stack (urllib3) may speak, and only at DEBUG.
    foreign = [(r.name, r.levelname) for r in caplog.records if not is_sdk(r)]
    assert all(level == "DEBUG" for _name, level in foreign), foreign


@pytest.fixture
def _all_loggers_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the root: every library's records reach caplog
    caplog.set_level(logging.DEBUG, logger="backoff")  # backoff sets INFO on itself
    caplog.set_level(logging.DEBUG, logger="analytics_sdk")


def test_401_error_names_the_likely_cause(
    make_client: MakeClient, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """LESSONS R11.4: an auth failure says "check the write key", whatever the body says."""
    reported: Reported = []
    client = make_client(
        write_key=KEY, on_error=lambda error, messages: reported.append((error, messages))
    )
    data_plane.script = [Reply(status=401, body="Unauthorized")]

    client.track("u1", "Refused")
    assert client.flush(timeout=10)

    ((error, _messages),) = reported
    assert isinstance(error, DeliveryError)
    assert error.status == 401
    assert "write key" in str(error).lower()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "write key" in errors[0].getMessage().lower()


def test_repeated_401s_log_one_error(
    make_client: MakeClient, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(write_key=KEY, flush_at=1)
    data_plane.respond = lambda _request: Reply(status=401, body="Unauthorized")

    for n in range(5):
        client.track("u1", f"Refused {n}")
    assert client.flush(timeout=10)

    assert len(data_plane.requests) == 5
    assert client.stats().dropped == {"rejected_4xx": 5}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1


def echo_the_key(make_client: MakeClient, data_plane: DataPlane) -> Reported:
    reported: Reported = []
    client = make_client(
        write_key=KEY, on_error=lambda error, messages: reported.append((error, messages))
    )
    data_plane.script = [Reply(status=401, body=f"invalid write key {KEY} (token {TOKEN})")]
    client.track("u1", "Refused")
    assert client.flush(timeout=10)
    return reported


def test_key_echoed_in_a_rejection_body_is_masked_in_the_error(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    """Some servers quote what they were given; errors.py promises no error contains the key."""
    ((error, _messages),) = echo_the_key(make_client, data_plane)

    assert error.reason == Reason.REJECTED_4XX
    assert "invalid write key" in str(error)  # the server's text is kept...
    assert_no_secret(str(error))  # ...but not the secret in it
    assert_no_secret(rendered(error))


def test_key_echoed_in_a_rejection_body_is_masked_in_the_log(
    make_client: MakeClient, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """The write key and the Authorization token it becomes are both secrets."""
    echo_the_key(make_client, data_plane)

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "invalid write key" in errors[0].getMessage()
    for record in caplog.records:
        assert_no_secret(record.getMessage())


def test_strict_errors_and_their_tracebacks_hold_no_key(make_client: MakeClient) -> None:
    client = make_client(write_key=KEY, strict=True, send=False)

    with pytest.raises(InvalidMessageError) as info:
        client.track("u1", "Bad", {"when": object()})

    assert info.value.field == "properties.when"
    assert_no_secret(str(info.value))
    assert_no_secret(rendered(info.value))


def test_importing_and_creating_a_client_leaves_logging_configuration_alone() -> None:
    """In a fresh interpreter: no root handler, no basicConfig, nothing on stderr."""
    code = """
import json, logging
root_handlers, root_level = list(logging.root.handlers), logging.root.level
import analytics_sdk
from analytics_sdk import Client
after_import = list(logging.root.handlers)
client = Client("wk_SECRET_abc123", "http://127.0.0.1:9", max_retries=0, timeout=5)
client.track("u1", "Lost")  # port 9 refuses: an ERROR goes to the analytics_sdk logger
flushed = client.flush(timeout=30)
client.shutdown(timeout=5)
sdk = logging.getLogger("analytics_sdk")
print(json.dumps({
    "root_unchanged": logging.root.handlers == root_handlers == after_import,
    "root_level_unchanged": logging.root.level == root_level,
    "sdk_handlers": [type(h).__name__ for h in sdk.handlers],
    "sdk_level": sdk.level,
    "sdk_propagates": sdk.propagate,
    "flushed": flushed,
    "failed": client.stats().dropped,
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )

    assert json.loads(result.stdout) == {
        "root_unchanged": True,
        "root_level_unchanged": True,
        "sdk_handlers": [],
        "sdk_level": logging.NOTSET,
        "sdk_propagates": True,
        "flushed": True,
        "failed": {"retries_exhausted": 1},
    }
    # An app that configured no logging still hears of a loss, once, through Python's
    # last-resort handler on stderr; the key is masked there too.
    (line,) = result.stderr.splitlines()
    assert "dropped 1 message(s)" in line
    assert "retries_exhausted" in line
    assert "wk_SECRET_abc123" not in result.stderr


# -- secrets in tracebacks and configuration errors -------------------------------------------


@pytest.mark.allow_sdk_errors  # it logs tracebacks at ERROR on purpose
def test_a_secret_in_a_logged_traceback_is_masked_at_every_level() -> None:
    """A wrapper's exception may quote its API key; DEBUG lines with exc_info are records too."""
    register_secret(KEY)
    records: list[logging.LogRecord] = []
    capture = _Capture(records)
    loggers = [logging.getLogger("analytics_sdk"), child_logger("integrations.acme")]
    loggers[0].addHandler(capture)  # the child's records propagate to it
    try:
        for log in loggers:
            for level in (logging.DEBUG, logging.ERROR):
                try:
                    raise RuntimeError(f"the destination refused {KEY}")
                except RuntimeError:
                    log.log(level, "the wrapper failed", exc_info=True, stack_info=True)
            try:
                raise ValueError("nothing secret here")
            except ValueError:
                log.debug("a harmless failure", exc_info=True)
    finally:
        loggers[0].removeHandler(capture)

    assert len(records) == 6
    for record in records:
        assert_no_secret(formatted(record))
    masked = [r for r in records if r.getMessage() == "the wrapper failed"]
    assert all(r.exc_info is None for r in masked)  # no handler can format it anew
    assert all("RuntimeError: the destination refused **********" in formatted(r) for r in masked)
    harmless = [r for r in records if r.getMessage() == "a harmless failure"]
    assert all(r.exc_info is not None for r in harmless)  # untouched without a secret


class _Capture(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


@pytest.mark.parametrize(
    ("write_key", "data_plane_url", "options"),
    [
        (KEY, "not a url", {}),
        ("https://dp.example.com", KEY, {}),  # the arguments swapped
        (KEY, f"https://dp.example.com/?key={KEY}", {}),
        (KEY, "https://dp.example.com", {"control_plane_url": KEY}),
        (KEY, "https://dp.example.com", {"flush_at": KEY}),
        (KEY, "https://dp.example.com", {"timeout": KEY}),
        (KEY, "https://dp.example.com", {"context": KEY}),
        (KEY, "https://dp.example.com", {"verify": {"key": KEY}}),
        (KEY, "https://dp.example.com", {"on_error": KEY}),
        (KEY, "https://dp.example.com", {"unknown_option": KEY}),
        (KEY, "https://dp.example.com", {"integrations": [KEY]}),
    ],
)
def test_configuration_errors_never_quote_the_key(
    write_key: str, data_plane_url: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Client(write_key, data_plane_url, **options)

    assert "invalid client options" in str(info.value)
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))
    assert_no_secret(rendered(info.value))


def test_a_url_with_a_password_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        Client(KEY, "http://user:hunter22@127.0.0.1:9", send=False)

    assert "hunter22" not in str(info.value)


# -- private files: the identity and the sourceConfig cache ----------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: what the process asks for is what files get, unless the SDK asks for less."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_identity_and_config_cache_are_private_even_under_umask_0(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_sdk._factory.discover", dict)  # no wrapper reaches out
    identity = tmp_path / "state" / "app" / "identity.json"
    cache = tmp_path / "cache" / "sdk"
    with running_control_plane(KEY) as control_plane:
        client = make_client(
            write_key=KEY,
            identity_path=identity,
            control_plane_url=control_plane.url,
            config_cache_path=cache,
            config_refresh_interval=0.01,
        )
        client.track(event="Opened")  # the anonymousId is made and saved; device mode starts
        assert control_plane.wait_for_requests(2)  # the first answer is handled: cached
        client.reset()  # the identity is written again

    (cached,) = cache.iterdir()
    for directory in (tmp_path / "state", identity.parent, tmp_path / "cache", cache):
        assert mode(directory) == 0o700, directory
    for file in (identity, cached):
        assert mode(file) == 0o600, file
    assert sorted(p.name for p in identity.parent.iterdir()) == ["identity.json"]  # no temp left


@pytest.mark.usefixtures("permissive_umask")
def test_a_loose_file_left_by_someone_else_becomes_private_when_rewritten(
    make_client: MakeClient, tmp_path: Path
) -> None:
    identity = tmp_path / "identity.json"
    identity.write_text('{"anonymousId": "a-1", "userId": null, "traits": {}}')
    identity.chmod(0o644)
    client = make_client(identity_path=identity, stateful=True)

    client.identify("u1", {"plan": "pro"})

    assert mode(identity) == 0o600
    assert json.loads(identity.read_text())["userId"] == "u1"


# -- TLS --------------------------------------------------------------------------------------

WAIT = 10.0


def recorder(reported: Reported) -> Callable[[AnalyticsError, list[dict[str, Any]]], None]:
    return lambda error, messages: reported.append((error, messages))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by `openssl`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS tests need the openssl command (.ci/run installs it)")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def https_url(server: DataPlane | ControlPlane, certificate: tuple[Path, Path]) -> str:
    """Serve TLS on `server`'s socket (before it starts); its https:// URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server.url.replace("http://", "https://")


@pytest.fixture
def https_data_plane(certificate: tuple[Path, Path]) -> Iterator[tuple[DataPlane, str]]:
    server = DataPlane()
    url = https_url(server, certificate)
    server.start()
    try:
        yield server, url
    finally:
        server.stop()


@pytest.fixture
def verify_seen(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The `verify` argument of every request requests' adapter sends."""
    seen: list[object] = []
    original = HTTPAdapter.send

    def send(self: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("verify"))
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", send)
    return seen


def test_tls_is_verified_by_default_and_the_failure_is_reported(
    make_client: MakeClient,
    https_data_plane: tuple[DataPlane, str],
    verify_seen: list[object],
) -> None:
    server, url = https_data_plane
    reported: Reported = []
    client = make_client(data_plane_url=url, max_retries=0,
                         on_error=recorder(reported))  # fmt: skip

    assert client.track("u1", "Untrusted") is not None
    assert client.flush(timeout=WAIT)

    assert server.events == []
    ((error, messages),) = reported
    assert error.reason == Reason.RETRIES_EXHAUSTED
    assert "certificate is not trusted" in str(error)
    assert "verify=" in str(error)  # what to do about it
    assert [m["event"] for m in messages] == ["Untrusted"]
    assert client.stats().dropped == {"retries_exhausted": 1}
    assert verify_seen
    assert all(v is True or (isinstance(v, str) and v.strip()) for v in verify_seen)


def test_a_ca_bundle_given_as_verify_reaches_the_transport_and_delivers(
    make_client: MakeClient,
    https_data_plane: tuple[DataPlane, str],
    certificate: tuple[Path, Path],
    verify_seen: list[object],
) -> None:
    server, url = https_data_plane
    client = make_client(data_plane_url=url, verify=str(certificate[0]))

    client.track("u1", "Trusted")
    assert client.flush(timeout=WAIT)

    assert [e["event"] for e in server.events] == ["Trusted"]
    assert verify_seen == [str(certificate[0])]


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_verify_does_not_switch_verification_off(
    make_client: MakeClient, https_data_plane: tuple[DataPlane, str], blank: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """requests reads verify="" as "do not verify": an unset variable passed through."""
    server, url = https_data_plane
    reported: Reported = []
    client = make_client(data_plane_url=url, max_retries=0, verify=blank,
                         on_error=recorder(reported))  # fmt: skip

    client.track("u1", "Untrusted")
    assert client.flush(timeout=WAIT)

    assert server.events == []
    assert [error.reason for error, _ in reported] == [Reason.RETRIES_EXHAUSTED]
    assert "verification stays on" in caplog.text


def test_a_missing_ca_bundle_is_a_request_error_not_a_crash(
    make_client: MakeClient, https_data_plane: tuple[DataPlane, str], tmp_path: Path
) -> None:
    _server, url = https_data_plane
    reported: Reported = []
    client = make_client(data_plane_url=url, verify=str(tmp_path / "missing.pem"),
                         on_error=recorder(reported))  # fmt: skip

    client.track("u1", "Lost")
    assert client.flush(timeout=WAIT)

    ((error, _messages),) = reported
    assert error.reason == Reason.REQUEST_ERROR  # not retried, not an internal error
    assert "verify=" in str(error)


def test_the_source_config_fetch_verifies_tls_too(
    certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr("analytics_sdk._source_config.BACKOFF_BASE", 0.001)
    server = ControlPlane(KEY)
    url = https_url(server, certificate)
    server.start()
    outcomes: queue.Queue[str] = queue.Queue()
    try:
        for verify in (None, str(certificate[0])):
            options = ClientOptions.build(KEY, "http://127.0.0.1:9", {
                "control_plane_url": url, "verify": verify, "config_cache_path": tmp_path,
                "config_refresh_interval": 60.0}, environ={})  # fmt: skip
            config = SourceConfigClient(
                options,
                lambda _config, origin: outcomes.put(origin),
                lambda reason: outcomes.put(f"unavailable: {reason}"),
            )
            config.start()
            try:
                outcome = outcomes.get(timeout=WAIT)
            finally:
                config.stop(2.0)
            if verify is None:
                assert outcome.startswith("unavailable")
                assert "certificate is not trusted" in caplog.text
            else:
                assert outcome == "control_plane"
    finally:
        server.stop()


# -- plain http:// to another machine ----------------------------------------------------------


@pytest.fixture(autouse=True)
def _cleartext_warnings_not_given_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics_sdk._transport._cleartext_warned", set())


class OfflineSession(requests.Session):
    """A `session=` that answers without any network: 200 to batches, a sourceConfig to GETs."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.urls.append(str(request.url))
        response = requests.Response()
        response.status_code = 200
        response.url = str(request.url)
        body = {"source": {"id": "s", "destinations": []}} if request.method == "GET" else {}
        response._content = json.dumps(body).encode()
        response._content_consumed = True  # type: ignore[attr-defined]
        return response


def cleartext_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and "clear text" in r.getMessage()
    ]  # fmt: skip


def test_plain_http_to_another_machine_warns_once_per_host_without_dns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a DNS lookup: {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr("analytics_sdk._factory.discover", dict)
    session = OfflineSession()
    clients = [
        Client(KEY, "http://analytics.example.com", session=session,
               control_plane_url="http://analytics.example.com:8080"),
        Client(KEY, "http://analytics.example.com", session=session),  # the same host again
        Client(KEY, "https://secure.example.com", session=session,
               control_plane_url="http://10.1.2.3"),
    ]  # fmt: skip
    try:
        for client in clients:
            assert client.track("u1", "Over The Wire") is not None
            assert client.flush(timeout=WAIT)  # waits for the config too
    finally:
        for client in clients:
            client.shutdown(timeout=1.0)

    assert len(session.urls) == 5  # three batches and two sourceConfig fetches, offline
    # One per host: the first client's data plane and control plane share one.
    warnings = sorted(cleartext_warnings(caplog), key=lambda w: "10.1.2.3" in w)
    assert len(warnings) == 2, warnings
    assert re.match(r"(data|control)_plane_url is plain http:// to analytics\.example\.com,",
                    warnings[0])  # fmt: skip
    assert warnings[1].startswith("control_plane_url is plain http:// to 10.1.2.3,")
    for warning in warnings:
        assert "write key" in warning
        assert "https://" in warning
        assert_no_secret(warning)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.45.6.7",
        "http://localhost:8080/rudder",
        "http://LOCALHOST",
        "http://localhost.:9",
        "http://[::1]:8080",
        "http://[::ffff:127.0.0.1]:8080",
        "http://127.0.0.1.:8080",
        "http://localhost.localdomain",
        "http://api.localhost:8080",  # RFC 6761: under .localhost is this machine
        "http://0.0.0.0:8080",
        "https://analytics.example.com",
        "https://10.1.2.3:8443",
    ],
)
def test_loopback_and_https_urls_stay_quiet(url: str, caplog: pytest.LogCaptureFixture) -> None:
    warn_if_cleartext("data_plane_url", url)

    assert cleartext_warnings(caplog) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://analytics.example.com",
        "http://127.0.0.1.nip.io",  # resolves to loopback, but only DNS knows: warned
        "http://10.0.0.5:8080",
        "http://[2001:db8::1]",
        "http://[::2]",
        "HTTP://Analytics.Example.com",
    ],
)
def test_plain_http_to_other_hosts_warns(url: str, caplog: pytest.LogCaptureFixture) -> None:
    warn_if_cleartext("data_plane_url", url)
    warn_if_cleartext("control_plane_url", url)

    assert len(cleartext_warnings(caplog)) == 1


def test_the_cleartext_warning_comes_at_construction_not_in_track(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_sdk._transport._cleartext_warned", set())
    client = Client(KEY, "http://sync-mode.example.com", sync_mode=True, send=True)
    try:
        assert len(cleartext_warnings(caplog)) == 1  # before any call: sync_mode sends in it
    finally:
        client.shutdown(timeout=0.1)


def test_a_write_key_with_a_lone_surrogate_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="write_key: is not valid Unicode text"):
        Client("wk_\udcff_key", "http://127.0.0.1:9")


# -- the secret guesses: which settings are secrets, and masking them whole --------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("apiKey", True), ("appKey", True), ("sdkKey", True), ("licenseKey", True),
        ("client_secret", True), ("API_KEY", True), ("APIKEY", True), ("X-Api-Key", True),
        ("password", True), ("accessTokenSecret", True), ("apiKeys", True), ("sentryDsn", True),
        ("key", False), ("keyPrefix", False), ("monkey", False), ("apiKeyHeaderName", False),
        ("tokenEndpoint", False), ("passwordPolicy", False), ("secretName", False),
        ("credentialsType", False),
    ],
)  # fmt: skip
def test_a_setting_is_a_secret_when_its_name_ends_in_a_secret_word(
    name: str, secret: bool
) -> None:
    from analytics_sdk._secrets import is_secret_name

    assert is_secret_name(name) is secret


def test_renames_are_not_secrets_but_headers_and_key_lists_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import analytics_sdk._logging as sdk_logging
    from analytics_sdk._secrets import register_setting_secrets

    monkeypatch.setattr(sdk_logging, "_SECRETS", set())
    monkeypatch.setattr(sdk_logging, "_MASK_ORDER", ())
    register_setting_secrets({
        "eventsMapping": [{"from": "Password Reset", "to": "Password Reset"}],
        "propertiesMapping": [{"from": "token", "to": "device_token"}],
        "headers": [{"from": "X-Api-Key", "to": "hdr-0123456789"}],
        "apiKeys": ["list-key-0123456789", "list-key-9876543210"],
    })  # fmt: skip

    registered = sdk_logging._SECRETS
    assert registered == {"hdr-0123456789", "list-key-0123456789", "list-key-9876543210"}


def test_a_secret_inside_another_is_masked_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import analytics_sdk._logging as sdk_logging

    for seed in range(8):  # the order secrets were registered in must not matter
        monkeypatch.setattr(sdk_logging, "_SECRETS", set())
        monkeypatch.setattr(sdk_logging, "_MASK_ORDER", ())
        pair = ["AKIAEXAMPLE123", "AKIAEXAMPLE123:wJalrXUtnFEMI/K7MDENG"]
        for secret in pair if seed % 2 else reversed(pair):
            register_secret(secret)
        assert sdk_logging.mask_secrets(f"creds {pair[1]} sent") == "creds ********** sent"


def test_tracebacks_are_formatted_by_the_filter_only_when_they_hold_a_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import analytics_sdk._logging as sdk_logging

    register_secret("tb-secret-0123456789")
    calls: list[int] = []
    original = sdk_logging._TRACEBACKS.formatException

    def counted(exc_info: Any) -> str:
        calls.append(1)
        return original(exc_info)

    monkeypatch.setattr(sdk_logging._TRACEBACKS, "formatException", counted)
    log = child_logger("test_filter")
    try:
        raise ValueError("nothing to hide")
    except ValueError:
        log.debug("plain failure", exc_info=True)
    assert calls == []  # left for the handler, which may never format it

    try:
        try:
            raise KeyError("tb-secret-0123456789")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError:
        log.debug("chained failure", exc_info=True)
    assert calls == [1]
    assert "tb-secret-0123456789" not in formatted(caplog.records[-1])
