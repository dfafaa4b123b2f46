"""Batching, retries, splitting, flush and shutdown against a real data plane on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import MakeClient
from support.servers import DataPlane, Reply, Request, basic_auth_user

from analytics_sdk import AnalyticsError, DeliveryError

Reports = list[tuple[AnalyticsError, list[dict[str, Any]]]]


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 0-10 ms instead of 0.5 s and up: same code path, shorter sleeps."""
    monkeypatch.setattr("analytics_sdk._transport.BACKOFF_BASE", 0.01)


def recorder() -> tuple[Reports, Any]:
    reports: Reports = []
    lock = threading.Lock()

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        with lock:
            reports.append((error, messages))

    return reports, on_error


# -- batching ---------------------------------------------------------------------------------


def test_every_message_is_delivered_once_in_batches_of_at_most_flush_at(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    # flush_interval=60: only a full batch or flush() can send, so waiting cannot pass this.
    client = make_client(flush_at=10, flush_interval=60)
    ids = [client.track(f"u{i}", "Order Completed") for i in range(205)]

    assert client.flush(timeout=10)

    assert sorted(data_plane.message_ids()) == sorted(i for i in ids if i is not None)
    assert len(ids) == 205
    assert all(ids)
    assert max(len(batch) for batch in data_plane.batches) <= 10
    assert client.stats().delivered == 205


def test_no_request_body_exceeds_max_batch_bytes(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    # 40 messages of ~25 KB: a 500 KB body holds 19 of them, never 20 (LESSONS R12.1).
    client = make_client(flush_interval=60)
    for i in range(40):
        client.track("u1", "Big", {"blob": "x" * 25_000, "i": i})

    assert client.flush(timeout=10)

    assert len(data_plane.events) == 40
    sizes = [len(request.body) for request in data_plane.requests]
    assert max(sizes) <= 500_000
    assert len(sizes) >= 3


def test_body_fills_up_to_exactly_max_batch_bytes(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    """The byte budget is exact, not approximate: a body may reach the limit, never pass it."""
    client = make_client(flush_interval=60, max_batch_bytes=5_000, max_message_bytes=1_000)
    for i in range(60):
        client.track("u1", "E", {"pad": "y" * (i % 7) * 50})
    assert client.flush(timeout=10)
    sizes = [len(request.body) for request in data_plane.requests]
    assert max(sizes) <= 5_000
    assert max(sizes) > 5_000 - 1_000  # batches are packed, not cut early
    assert len(data_plane.events) == 60


def test_a_partial_batch_goes_out_after_flush_interval(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(flush_interval=0.05)
    client.track("u1", "Lonely")
    assert data_plane.wait_for_events(1, timeout=5)


def test_flush_sends_a_partial_batch_at_once(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client(flush_at=100, flush_interval=60)
    client.track("u1", "One")
    started = time.monotonic()
    assert client.flush(timeout=5)
    assert time.monotonic() - started < 5
    assert len(data_plane.events) == 1


def test_requests_carry_auth_gzip_and_user_agent(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    client.track("u1", "E")
    assert client.flush(timeout=5)
    (request,) = data_plane.requests
    assert request.path == "/v1/batch"
    assert basic_auth_user(request) == "wk_test_key"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["User-Agent"].startswith("analytics-sdk-python/")
    assert request.json["sentAt"] == request.batch[0]["sentAt"]


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_retryable_statuses_are_retried_with_the_same_message_ids(
    make_client: MakeClient, data_plane: DataPlane, status: int
) -> None:
    data_plane.script = [Reply(status=status), Reply(status=status)]
    client = make_client()
    ids = [client.track("u1", f"E{i}") for i in range(3)]

    assert client.flush(timeout=10)

    assert data_plane.message_ids() == ids
    first, second, third = data_plane.requests
    assert [m["messageId"] for m in first.batch] == ids  # the same ids on every attempt
    assert [m["messageId"] for m in second.batch] == ids
    assert first.batch[0]["event"] == third.batch[0]["event"]
    assert client.stats().retried == 2


def test_sent_at_is_refreshed_on_every_attempt(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.script = [Reply(status=503, headers={"Retry-After": "1"})]
    client = make_client()
    client.track("u1", "E")
    assert client.flush(timeout=10)
    first, second = data_plane.requests
    assert second.json["sentAt"] > first.json["sentAt"]  # ISO strings sort as times
    assert second.batch[0]["sentAt"] == second.json["sentAt"]
    assert first.batch[0]["originalTimestamp"] == second.batch[0]["originalTimestamp"]


def test_retry_after_is_honoured(make_client: MakeClient, data_plane: DataPlane) -> None:
    data_plane.script = [Reply(status=429, headers={"Retry-After": "1"})]
    client = make_client()
    client.track("u1", "E")
    assert client.flush(timeout=10)
    first, second = data_plane.requests
    assert second.received_at - first.received_at >= 0.95


@pytest.mark.parametrize("status", [401, 403, 404, 422])
def test_client_errors_are_reported_not_retried(
    make_client: MakeClient, data_plane: DataPlane, status: int
) -> None:
    data_plane.script = [Reply(status=status, body=f"nope {status}")]
    reports, on_error = recorder()
    client = make_client(on_error=on_error)
    ids = [client.track("u1", f"E{i}") for i in range(3)]

    assert client.flush(timeout=10)

    assert len(data_plane.requests) == 1
    ((error, messages),) = reports
    assert isinstance(error, DeliveryError)
    assert (error.status, error.reason, error.count) == (status, "rejected_4xx", 3)
    assert f"nope {status}" in str(error)
    assert [m["messageId"] for m in messages] == ids
    assert client.stats().failed == 3
    assert client.stats().dropped == {"rejected_4xx": 3}


def test_connection_resets_are_retried(make_client: MakeClient, data_plane: DataPlane) -> None:
    data_plane.script = [Reply(reset=True), Reply(reset=True)]
    client = make_client()
    client.track("u1", "E")
    assert client.flush(timeout=10)
    assert len(data_plane.events) == 1
    assert len(data_plane.requests) == 3


def test_timeouts_are_retried(make_client: MakeClient, data_plane: DataPlane) -> None:
    data_plane.script = [Reply(delay=1.0)]
    client = make_client(timeout=0.2)
    client.track("u1", "E")
    assert client.flush(timeout=10)
    assert data_plane.message_ids().count(data_plane.requests[-1].batch[0]["messageId"]) >= 1
    assert client.stats().retried >= 1
    assert client.stats().failed == 0


def test_retries_end_and_are_reported(make_client: MakeClient, data_plane: DataPlane) -> None:
    data_plane.respond = lambda request: Reply(status=500)
    reports, on_error = recorder()
    client = make_client(max_retries=2, on_error=on_error)
    client.track("u1", "E")
    assert client.flush(timeout=10)
    assert len(data_plane.requests) == 3
    ((error, _),) = reports
    assert isinstance(error, DeliveryError)
    assert (error.reason, error.status) == ("retries_exhausted", 500)
    # The client stays usable once the data plane recovers.
    data_plane.respond = None
    client.track("u1", "Recovered")
    assert client.flush(timeout=10)
    assert [e["event"] for e in data_plane.events] == ["Recovered"]


def test_413_splits_the_batch_until_it_fits(make_client: MakeClient, data_plane: DataPlane) -> None:
    data_plane.max_body = 20_000
    reports, on_error = recorder()
    client = make_client(flush_interval=60, on_error=on_error)
    for i in range(50):
        client.track("u1", "Chunky", {"pad": "z" * 1_000, "i": i})
    client.track("u1", "Huge", {"pad": "q" * 25_000})  # alone it is still too large

    assert client.flush(timeout=10)

    assert sorted(e["properties"]["i"] for e in data_plane.events) == list(range(50))
    ((error, messages),) = reports
    assert error.reason == "too_large"
    assert messages[0]["event"] == "Huge"


def test_a_400_caused_by_one_message_costs_only_that_message(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    def reject_poison(request: Request) -> Reply | None:
        if any(m["event"] == "Poison" for m in request.batch):
            return Reply(status=400, body="invalid event in batch")
        return None

    data_plane.respond = reject_poison
    reports, on_error = recorder()
    client = make_client(flush_interval=60, on_error=on_error)
    ids = [client.track("u1", "Poison" if i == 37 else "Fine") for i in range(100)]

    assert client.flush(timeout=10)

    assert sorted(data_plane.message_ids()) == sorted(str(i) for n, i in enumerate(ids) if n != 37)
    ((error, messages),) = reports
    assert isinstance(error, DeliveryError)
    assert error.status == 400
    assert [m["messageId"] for m in messages] == [ids[37]]
    assert Counter(data_plane.message_ids()).most_common(1)[0][1] == 1  # no duplicates
    stats = client.stats()
    assert (stats.delivered, stats.failed, stats.dropped) == (99, 1, {"rejected_4xx": 1})


def test_an_acknowledged_batch_is_never_sent_again(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    count = {"n": 0}

    def fail_second_batch(request: Request) -> Reply | None:
        count["n"] += 1
        return Reply(status=503) if count["n"] == 2 else None

    data_plane.respond = fail_second_batch
    client = make_client(flush_at=5, flush_interval=60)
    ids = [client.track("u1", f"E{i}") for i in range(15)]
    assert client.flush(timeout=10)
    assert sorted(data_plane.message_ids()) == sorted(i for i in ids if i)
    assert len(data_plane.requests) == 4


# -- flush, shutdown, queue -------------------------------------------------------------------


@pytest.mark.allow_sdk_errors
def test_flush_returns_false_within_its_timeout_when_the_server_hangs(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(hang=True)
    client = make_client(timeout=30)
    client.track("u1", "E")

    started = time.monotonic()
    assert client.flush(timeout=0.5) is False
    assert time.monotonic() - started < 2.0


def test_shutdown_reports_what_it_cannot_deliver_within_its_budget(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(status=503)
    reports, on_error = recorder()
    client = make_client(on_error=on_error, flush_at=5, flush_interval=60)
    for i in range(12):
        client.track("u1", f"E{i}")

    started = time.monotonic()
    assert client.shutdown(timeout=0.5) is False
    assert time.monotonic() - started < 2.0

    assert sum(error.count for error, _ in reports if isinstance(error, DeliveryError)) == 12
    assert all(error.reason == "shutdown" for error, _ in reports)
    assert "within the shutdown budget (0.5 s)" in str(reports[0][0])  # the one it was given
    stats = client.stats()
    assert (stats.failed, stats.queued, stats.dropped) == (12, 0, {"shutdown": 12})
    started = time.monotonic()
    client.shutdown(timeout=0.1)  # idempotent: a second call neither raises nor hangs
    assert time.monotonic() - started < 1.0


def test_shutdown_is_idempotent_and_thread_safe(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    for i in range(50):
        client.track("u1", f"E{i}")
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.shutdown(5))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [True] * 8
    assert len(data_plane.events) == 50


def test_on_error_may_call_flush_and_shutdown_without_deadlock(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(status=400)
    calls: list[bool] = []
    holder: dict[str, Any] = {}

    def on_error(error: AnalyticsError, messages: list[dict[str, Any]]) -> None:
        calls.append(holder["client"].flush(timeout=1))

    client = make_client(on_error=on_error)
    holder["client"] = client
    client.track("u1", "E")
    assert client.flush(timeout=5)
    assert calls == [False]  # from the delivery thread, flush cannot wait for itself


def test_a_full_queue_rejects_the_newest_and_reports_it(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.respond = lambda request: Reply(hang=True)
    reports, on_error = recorder()
    client = make_client(max_queue_size=10, flush_at=5, flush_interval=60, on_error=on_error)

    results = [client.track("u1", f"E{i}") for i in range(1_000)]

    accepted = [r for r in results if r is not None]
    assert 10 <= len(accepted) <= 15  # 10 queued + at most one batch taken in flight
    assert results[-1] is None
    stats = client.stats()
    assert stats.dropped["queue_full"] == 1_000 - len(accepted)
    assert sum(1 for error, _ in reports if error.reason == "queue_full") == 1_000 - len(accepted)


def test_the_queue_is_bounded_by_bytes_too(make_client: MakeClient) -> None:
    client = make_client(send=False)  # counting only: no thread takes from the queue
    bounded = make_client(max_queue_bytes=50_000, flush_at=1_000, flush_interval=60)
    accepted = sum(1 for _ in range(100) if bounded.track("u1", "E", {"p": "x" * 1_000}))
    assert 30 <= accepted <= 50
    assert bounded.stats().dropped["queue_full"] == 100 - accepted
    assert client.stats().dropped == {}


def test_16_threads_x_2000_calls_are_all_delivered_once(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    client = make_client()
    barrier = threading.Barrier(16)
    ids: list[list[str | None]] = [[] for _ in range(16)]

    def produce(n: int) -> None:
        barrier.wait()
        ids[n] = [client.track(f"user-{n}", "Threaded", {"i": i}) for i in range(2_000)]

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert client.flush(timeout=60)
    sent = [i for chunk in ids for i in chunk]
    assert len(sent) == 32_000
    assert all(sent)
    received = data_plane.message_ids()
    assert len(received) == 32_000
    assert set(received) == set(sent)
    assert max(len(batch) for batch in data_plane.batches) <= 100


def test_sync_mode_delivers_on_the_callers_thread_with_retries(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.script = [Reply(status=503)]
    client = make_client(sync_mode=True)
    message_id = client.track("u1", "Now")
    assert message_id is not None
    assert data_plane.message_ids() == [message_id]  # before any flush
    assert not any(t.name == "analytics_sdk.consumer" for t in threading.enumerate())
    assert client.stats().delivered == 1


def test_sync_mode_reports_a_rejection_and_returns_none(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    data_plane.script = [Reply(status=400, body="bad")]
    reports, on_error = recorder()
    client = make_client(sync_mode=True, on_error=on_error)
    assert client.track("u1", "Bad") is None
    assert [error.reason for error, _ in reports] == ["rejected_4xx"]


def consumer_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name == "analytics_sdk.consumer"}


def test_no_thread_starts_before_the_first_message(make_client: MakeClient) -> None:
    before = consumer_threads()  # other tests' threads may still be on their way out
    clients = [make_client() for _ in range(20)]
    assert consumer_threads() <= before
    clients[0].track("u1", "E")
    assert consumer_threads() - before


def test_shut_down_clients_release_their_threads_and_memory(data_plane: DataPlane) -> None:
    import gc
    import weakref

    from analytics_sdk import Client

    baseline = len(threading.enumerate())
    refs = []
    for i in range(200):
        client = Client("wk_test_key", data_plane.url)
        client.track("u1", "E", {"i": i})
        assert client.shutdown(timeout=5)
        refs.append(weakref.ref(client))
        del client
    gc.collect()
    assert len(threading.enumerate()) <= baseline + 1  # the server may still be answering
    assert all(ref() is None for ref in refs)
    assert len(data_plane.events) == 200


def test_aflush_and_ashutdown_wait_off_the_event_loop(
    make_client: MakeClient, data_plane: DataPlane
) -> None:
    import asyncio

    data_plane.script = [Reply(delay=0.3)]
    client = make_client()
    lags: list[float] = []

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - started - 0.01)

    async def main() -> tuple[bool, bool]:
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop))
        client.track("u1", "Async")
        flushed = await client.aflush(timeout=5)
        closed = await client.ashutdown(timeout=5)
        stop.set()
        await beat
        return flushed, closed

    assert asyncio.run(main()) == (True, True)
    assert len(data_plane.events) == 1
    assert len(lags) >= 10  # the loop kept beating while we waited 0.3 s for the server


def test_uwsgi_without_threads_gets_one_warning(
    make_client: MakeClient,
    data_plane: DataPlane,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import sys
    import types

    from analytics_sdk import _consumer

    fake = types.ModuleType("uwsgi")
    fake.opt = {"master": True}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    monkeypatch.setattr(_consumer, "_threads_checked", False)
    client = make_client()
    client.track("u1", "E")
    client.track("u1", "E")
    assert client.flush(timeout=5)
    warnings = [r for r in caplog.records if "enable-threads" in r.getMessage()]
    assert len(warnings) == 1
