"""HTTP edge cases of the transport, with `responses`: statuses, retries, Retry-After, headers.

The data plane URL is never reached: `responses` answers in place of the network. The stop
event records the backoff waits and returns at once, so nothing here really sleeps.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses
from responses.registries import OrderedRegistry

from analytics_sdk import __version__
from analytics_sdk._serialization import dumps
from analytics_sdk._transport import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    MAX_RETRY_AFTER,
    Transport,
    build_body,
    retry_after_seconds,
)
from analytics_sdk.errors import DeliveryError, Reason
from analytics_sdk.options import ENVELOPE_BYTES, MESSAGE_OVERHEAD_BYTES, ClientOptions

BASE = "http://127.0.0.1:9"
URL = f"{BASE}/v1/batch"  # never reached: responses intercepts it
SENT_AT = "2026-01-01T00:00:00.000Z"


class RecordingStop(threading.Event):
    """The consumer's stop event, except that wait() records its bound and never sleeps.

    `set_on_wait=True` behaves as if shutdown's budget ran out during the first wait.
    """

    def __init__(self, *, set_on_wait: bool = False) -> None:
        super().__init__()
        self.delays: list[float] = []
        self._set_on_wait = set_on_wait

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "a backoff wait must always have a bound"
        self.delays.append(timeout)
        if self._set_on_wait:
            self.set()
        return self.is_set()


class FakeSession(requests.Session):
    """A real `session=` whose send() records what it was given and answers 200."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []
        self.closed = False

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.calls.append((request, kwargs))
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"ok":true}'
        return response

    def close(self) -> None:
        self.closed = True
        super().close()


def make_transport(stop: RecordingStop | None = None, **options: Any) -> Transport:
    opts = ClientOptions.build("wk_test", BASE, options, environ={})
    return Transport(opts, stop or RecordingStop())


def message(n: int = 1, **extra: Any) -> bytes:
    return dumps({"type": "track", "event": f"E{n}", "userId": "u1", "messageId": f"m{n}", **extra})


def request_body(call: Any) -> bytes:
    body = call.request.body
    assert isinstance(body, bytes)
    return body


def sent_json(call: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(gzip.decompress(request_body(call)))
    return parsed


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """Replies in the order registered; every registered reply must be used."""
    with responses.RequestsMock(
        registry=OrderedRegistry, assert_all_requests_are_fired=True
    ) as rsps:
        yield rsps


# -- statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_retryable_status_is_retried_then_delivered(
    mock: responses.RequestsMock, status: int
) -> None:
    mock.post(URL, status=status)
    mock.post(URL, status=status)
    mock.post(URL, status=200)
    stop = RecordingStop()
    transport = make_transport(stop)

    transport.send([message(1), message(2)])

    assert len(mock.calls) == 3
    assert transport.retries == 2
    assert len(stop.delays) == 2
    assert [e["messageId"] for e in sent_json(mock.calls[-1])["batch"]] == ["m1", "m2"]


@pytest.mark.parametrize("status", [401, 403, 404, 422, 400, 413])
def test_4xx_is_not_retried_and_reports_status_and_server_text(
    mock: responses.RequestsMock, status: int
) -> None:
    mock.post(URL, status=status, body=f"nope: server says {status} for this batch")
    stop = RecordingStop()
    transport = make_transport(stop)

    with pytest.raises(DeliveryError) as info:
        transport.send([message(1), message(2), message(3)])

    error = info.value
    assert (error.status, error.reason, error.count) == (status, Reason.REJECTED_4XX, 3)
    assert f"nope: server says {status} for this batch" in str(error)
    assert len(mock.calls) == 1
    assert stop.delays == []
    assert transport.retries == 0


def test_long_server_text_is_cut_to_a_snippet(mock: responses.RequestsMock) -> None:
    mock.post(URL, status=400, body="x" * 5000)
    transport = make_transport()

    with pytest.raises(DeliveryError) as info:
        transport.send([message()])

    assert "x" * 200 in str(info.value)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError("Connection reset by peer"),
        requests.Timeout("timed out"),
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectTimeout("connect timed out"),
    ],
    ids=["reset", "timeout", "read-timeout", "connect-timeout"],
)
def test_network_failure_is_retried_then_delivered(
    mock: responses.RequestsMock, failure: Exception
) -> None:
    mock.post(URL, body=failure)
    mock.post(URL, status=200)
    stop = RecordingStop()
    transport = make_transport(stop)

    transport.send([message()])

    assert len(mock.calls) == 2
    assert len(stop.delays) == 1
    assert transport.retries == 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_max_retries_bounds_the_attempts_then_reports_retries_exhausted(
    mock: responses.RequestsMock, max_retries: int
) -> None:
    for _ in range(max_retries + 1):
        mock.post(URL, status=503)
    stop = RecordingStop()
    transport = make_transport(stop, max_retries=max_retries)

    with pytest.raises(DeliveryError) as info:
        transport.send([message(1), message(2)])

    assert len(mock.calls) == max_retries + 1
    assert len(stop.delays) == max_retries
    assert (info.value.reason, info.value.status, info.value.count) == (
        Reason.RETRIES_EXHAUSTED,
        503,
        2,
    )
    assert f"{max_retries + 1} attempts" in str(info.value)


def test_network_failures_past_max_retries_report_no_status(
    mock: responses.RequestsMock,
) -> None:
    for _ in range(3):
        mock.post(URL, body=requests.ConnectionError("Connection reset by peer"))
    transport = make_transport(max_retries=2)

    with pytest.raises(DeliveryError) as info:
        transport.send([message()])

    assert (info.value.reason, info.value.status) == (Reason.RETRIES_EXHAUSTED, None)
    assert "ConnectionError" in str(info.value)
    assert len(mock.calls) == 3


def test_malformed_url_is_a_request_error_and_not_retried(mock: responses.RequestsMock) -> None:
    mock.post(URL, body=requests.exceptions.InvalidURL("bad host"))
    stop = RecordingStop()
    transport = make_transport(stop)

    with pytest.raises(DeliveryError) as info:
        transport.send([message()])

    assert info.value.reason == Reason.REQUEST_ERROR
    assert stop.delays == []


# -- Retry-After and backoff --------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_waited_at_least(mock: responses.RequestsMock, status: int) -> None:
    mock.post(URL, status=status, headers={"Retry-After": "7"})
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop).send([message()])

    assert stop.delays == [7.0]  # the first backoff step is at most 0.5 s: the hint wins


def test_retry_after_shorter_than_backoff_does_not_shorten_it(
    mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # jitter at its maximum
    for _ in range(4):
        mock.post(URL, status=429, headers={"Retry-After": "1"})
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop).send([message()])

    assert stop.delays == [1.0, 1.0, 2.0, 4.0]  # max(1, 0.5), max(1, 1), max(1, 2), max(1, 4)


def test_retry_after_http_date_is_honoured(mock: responses.RequestsMock) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=20)
    mock.post(URL, status=503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop).send([message()])

    (delay,) = stop.delays
    assert 10.0 <= delay <= 20.0  # whole seconds in the header; generous for a slow run


@pytest.mark.parametrize(
    "header",
    ["999999", format_datetime(datetime.now(timezone.utc) + timedelta(days=3), usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_retry_after_is_capped_at_300_seconds(mock: responses.RequestsMock, header: str) -> None:
    mock.post(URL, status=429, headers={"Retry-After": header})
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop).send([message()])

    assert stop.delays == [300.0]
    assert MAX_RETRY_AFTER == 300.0


@pytest.mark.parametrize("header", ["abc", "soon", "", "-5", "Wed, 99 Foo 2015 99:99:99 GMT"])
def test_garbage_retry_after_falls_back_to_backoff(
    mock: responses.RequestsMock, header: str
) -> None:
    mock.post(URL, status=503, headers={"Retry-After": header})
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop).send([message()])

    (delay,) = stop.delays
    assert 0.0 <= delay <= BACKOFF_BASE


def test_backoff_waits_stay_within_full_jitter_bounds(mock: responses.RequestsMock) -> None:
    retries = 12
    for _ in range(retries):
        mock.post(URL, status=500)
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop, max_retries=retries).send([message()])

    assert len(stop.delays) == retries
    for n, delay in enumerate(stop.delays):
        assert 0.0 <= delay <= min(BACKOFF_CAP, BACKOFF_BASE * 2**n), (n, delay)


def test_backoff_steps_double_from_half_a_second_to_a_60_second_cap(
    mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds: list[tuple[float, float]] = []

    def at_maximum(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", at_maximum)
    for _ in range(9):
        mock.post(URL, status=502)
    mock.post(URL, status=200)
    stop = RecordingStop()

    make_transport(stop, max_retries=9).send([message()])

    assert stop.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert all(low == 0 for low, _ in bounds)  # full jitter: anywhere from zero


def test_stop_set_during_a_backoff_wait_gives_up_with_reason_shutdown(
    mock: responses.RequestsMock,
) -> None:
    mock.post(URL, status=503)
    stop = RecordingStop(set_on_wait=True)
    transport = make_transport(stop)

    with pytest.raises(DeliveryError) as info:
        transport.send([message(1), message(2)])

    assert (info.value.reason, info.value.status, info.value.count) == (Reason.SHUTDOWN, 503, 2)
    assert len(mock.calls) == 1
    assert len(stop.delays) == 1


# -- the request ----------------------------------------------------------------------------


def test_request_headers(mock: responses.RequestsMock) -> None:
    mock.post(URL, status=200)

    make_transport().send([message()])

    headers = mock.calls[0].request.headers
    expected_token = base64.b64encode(b"wk_test:").decode()
    assert headers["Authorization"] == f"Basic {expected_token}"
    assert headers["User-Agent"] == f"analytics-sdk-python/{__version__}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Encoding"] == "gzip"


def test_gzip_body_gunzips_to_the_batch(mock: responses.RequestsMock) -> None:
    mock.post(URL, status=200)
    messages = [message(1), message(2, properties={"price": 9.5})]

    make_transport().send(messages)

    body = request_body(mock.calls[0])
    assert body[:2] == b"\x1f\x8b"  # the gzip magic number
    parsed = json.loads(gzip.decompress(body))
    assert [m["messageId"] for m in parsed["batch"]] == ["m1", "m2"]
    assert parsed["batch"][1]["properties"] == {"price": 9.5}


def test_gzip_false_sends_plain_json(mock: responses.RequestsMock) -> None:
    mock.post(URL, status=200)

    make_transport(gzip=False).send([message(1)])

    request = mock.calls[0].request
    assert "Content-Encoding" not in request.headers
    body = request_body(mock.calls[0])
    parsed = json.loads(body)
    assert parsed["batch"][0]["event"] == "E1"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://127.0.0.1:9/", "http://127.0.0.1:9/v1/batch"),
        ("http://127.0.0.1:9/rudder", "http://127.0.0.1:9/rudder/v1/batch"),
    ],
)
def test_batch_url_is_joined_without_a_double_slash(
    mock: responses.RequestsMock, base: str, url: str
) -> None:
    mock.post(url, status=200)
    opts = ClientOptions.build("wk_test", base, {}, environ={})

    Transport(opts, RecordingStop()).send([message()])

    assert mock.calls[0].request.url == url


def test_proxies_verify_and_timeout_are_passed_to_the_session() -> None:
    session = FakeSession()
    proxies = {"https": "http://proxy.internal:3128"}
    transport = make_transport(
        session=session, proxies=proxies, verify="/etc/ssl/corp-ca.pem", timeout=3.5
    )

    transport.send([message()])

    ((request, kwargs),) = session.calls
    assert request.url == URL
    assert kwargs["proxies"]["https"] == proxies["https"]
    assert kwargs["verify"] == "/etc/ssl/corp-ca.pem"
    assert kwargs["timeout"] == 3.5
    assert request.headers["Authorization"].startswith("Basic ")


def test_environment_proxies_are_honoured_and_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://env-proxy.internal:3128")
    session = FakeSession()
    transport = make_transport(session=session)
    monkeypatch.delenv("HTTPS_PROXY")  # read at construction, not per request
    monkeypatch.delenv("HTTP_PROXY")

    transport.send([message()])

    ((_request, kwargs),) = session.calls
    assert kwargs["proxies"]["http"] == "http://env-proxy.internal:3128"
    assert kwargs["verify"] not in (False, None)  # True, or the environment's CA bundle
    assert kwargs["timeout"] == 10.0


def test_verify_false_is_passed_through() -> None:
    session = FakeSession()

    make_transport(session=session, verify=False).send([message()])

    ((_request, kwargs),) = session.calls
    assert kwargs["verify"] is False


def test_a_proxy_password_never_reaches_errors_or_reprs() -> None:
    proxies = {"http": "http://alice:hunter2@proxy.internal:99999"}
    transport = make_transport(proxies=proxies, max_retries=0)
    with pytest.raises(DeliveryError) as info:
        transport.send([message()])
    assert "hunter2" not in str(info.value)
    opts = ClientOptions.build("wk_test", BASE, {"proxies": proxies}, environ={})
    assert "hunter2" not in repr(opts)


def test_close_leaves_a_callers_session_open() -> None:
    session = FakeSession()
    transport = make_transport(session=session)
    transport.send([message()])

    transport.close()

    assert session.closed is False


# -- sentAt per attempt, ids and bytes stable ----------------------------------------------


def test_sent_at_is_refreshed_per_attempt_and_messages_stay_byte_identical(
    mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    times = iter(["2026-03-01T10:00:00.000Z", "2026-03-01T10:00:01.250Z"])
    monkeypatch.setattr("analytics_sdk._transport.now_iso", lambda: next(times))
    mock.post(URL, status=503)
    mock.post(URL, status=200)
    messages = [message(1, properties={"a": [1, 2]}), message(2), message(3)]

    make_transport().send(messages)

    first, second = (sent_json(call) for call in mock.calls)
    assert first["sentAt"] == "2026-03-01T10:00:00.000Z"
    assert second["sentAt"] == "2026-03-01T10:00:01.250Z"
    for body in (first, second):
        assert [m["sentAt"] for m in body["batch"]] == [body["sentAt"]] * 3
    assert [m["messageId"] for m in first["batch"]] == ["m1", "m2", "m3"]
    assert [m["messageId"] for m in second["batch"]] == ["m1", "m2", "m3"]
    # Byte for byte: only the sentAt values differ between the two attempts.
    raw = [gzip.decompress(request_body(call)) for call in mock.calls]
    assert raw[0] == build_body(messages, b"2026-03-01T10:00:00.000Z")
    assert raw[1] == build_body(messages, b"2026-03-01T10:00:01.250Z")
    assert raw[0].replace(b"10:00:00.000Z", b"T") == raw[1].replace(b"10:00:01.250Z", b"T")


def test_build_body_size_is_exactly_the_budgeted_size() -> None:
    messages = [
        message(1),
        message(2, properties={"text": "héllo", "n": [1, 2, 3]}),
        dumps({"type": "identify", "userId": "u", "traits": {}}),
    ]

    body = build_body(messages, SENT_AT.encode())

    expected = sum(len(m) + MESSAGE_OVERHEAD_BYTES for m in messages) - 1 + ENVELOPE_BYTES
    assert len(body) == expected
    parsed = json.loads(body)
    assert parsed["sentAt"] == SENT_AT
    assert [m["sentAt"] for m in parsed["batch"]] == [SENT_AT] * 3
    assert parsed["batch"][1]["properties"] == {"text": "héllo", "n": [1, 2, 3]}
    assert [{k: v for k, v in m.items() if k != "sentAt"} for m in parsed["batch"]] == [
        json.loads(m) for m in messages
    ]


def test_build_body_of_one_message() -> None:
    body = build_body([b'{"a":1}'], SENT_AT.encode())

    assert body == b'{"batch":[{"a":1,"sentAt":"%s"}],"sentAt":"%s"}' % (
        SENT_AT.encode(),
        SENT_AT.encode(),
    )
    assert len(body) == len(b'{"a":1}') + MESSAGE_OVERHEAD_BYTES - 1 + ENVELOPE_BYTES


# -- retry_after_seconds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("300", 300.0),
        ("301", 300.0),
        ("999999", 300.0),
    ],
)
def test_retry_after_seconds_delta_seconds(header: str, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds


@pytest.mark.parametrize(
    "header", [None, "", "   ", "abc", "nan", "inf", "1e999", "12 seconds", "Tomorrow"]
)
def test_retry_after_seconds_ignores_garbage(header: str | None) -> None:
    assert retry_after_seconds(header) is None


@pytest.mark.parametrize("header", ["-5", "-0.5", "-inf"])
def test_retry_after_seconds_negative_never_waits(header: str) -> None:
    assert retry_after_seconds(header) in (None, 0.0)


def test_retry_after_seconds_http_date() -> None:
    now = datetime.now(timezone.utc)
    future = format_datetime(now + timedelta(seconds=90), usegmt=True)
    past = format_datetime(now - timedelta(hours=1), usegmt=True)
    far = format_datetime(now + timedelta(days=30), usegmt=True)

    in_future = retry_after_seconds(future)
    assert in_future is not None
    assert 80.0 <= in_future <= 90.0
    assert retry_after_seconds(past) == 0.0
    assert retry_after_seconds(far) == 300.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # RFC 9110's example
