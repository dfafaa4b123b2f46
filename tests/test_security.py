"""The write key stays secret, and the SDK logs only through its own logger (LESSONS 16, 11.4).

A run that retries, is refused with 401 and is given invalid calls, with every logger at
DEBUG: the key shows up in no log record, no reported error, no repr and no traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import traceback
from typing import Any

import pytest
from conftest import MakeClient
from support.servers import DataPlane, Reply

from analytics_sdk import AnalyticsError, Client, DeliveryError, InvalidMessageError, Reason

KEY = "wk_SECRET_abc123"
TOKEN = base64.b64encode(f"{KEY}:".encode()).decode()  # what the Authorization header holds

Reported = list[tuple[AnalyticsError, list[dict[str, Any]]]]


def assert_no_secret(text: str) -> None:
    assert KEY not in text
    assert TOKEN not in text
    assert "SECRET" not in text


def is_sdk(record: logging.LogRecord) -> bool:
    return record.name == "analytics_sdk" or record.name.startswith("analytics_sdk.")


def rendered(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def formatted(record: logging.LogRecord) -> str:
    """The record as a handler would write it, traceback and stack included."""
    return logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)


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

    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(formatted(record))
    for error, messages in reported:
        assert_no_secret(str(error))
        assert_no_secret(repr(error))
        assert_no_secret(rendered(error))
        assert_no_secret(json.dumps(messages))
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
