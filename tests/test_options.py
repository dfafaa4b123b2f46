"""Client options: clear ConfigurationErrors, no secrets in them, the environment, frozen."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeClient
from pydantic import ValidationError
from support.servers import DataPlane, basic_auth_user

from analytics_sdk import Client, ConfigurationError
from analytics_sdk.options import ClientOptions, ClientOptionsKwargs

URL = "http://127.0.0.1:9"
SECRET_KEY = "wk_live_SECRET_9f8e7d6c5b4a"
NUMERIC_KEY = 20240611987654
ENV_VARS = (
    "ANALYTICS_SDK_WRITE_KEY",
    "ANALYTICS_SDK_DATA_PLANE_URL",
    "ANALYTICS_SDK_CONTROL_PLANE_URL",
    "ANALYTICS_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ANALYTICS_SDK_* variables must not change these tests."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def configuration_error(*args: Any, **options: Any) -> str:
    """Build a Client that must fail; return the error's message."""
    with pytest.raises(ConfigurationError) as info:
        Client(*args, **options)
    return str(info.value)


def rendered(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def consumer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "analytics_sdk.consumer"}


# -- bad options name the field and the limit --------------------------------------------


@pytest.mark.parametrize(
    ("options", "field", "limit"),
    [
        ({"flush_at": 0}, "flush_at", "greater than or equal to 1"),
        ({"timeout": -1}, "timeout", "greater than 0"),
        ({"timeout": 0}, "timeout", "greater than 0"),
        ({"max_retries": -1}, "max_retries", "greater than or equal to 0"),
        ({"flush_interval": 0}, "flush_interval", "greater than 0"),
        ({"max_queue_size": 0}, "max_queue_size", "greater than or equal to 1"),
        ({"max_batch_bytes": 100}, "max_batch_bytes", "greater than or equal to 1024"),
    ],
)
def test_out_of_range_option_names_field_and_limit(
    options: dict[str, Any], field: str, limit: str
) -> None:
    message = configuration_error("wk_test", URL, **options)

    assert field in message
    assert limit in message


@pytest.mark.parametrize("url", ["ftp://x", "x", "127.0.0.1:8080", "http://"])
def test_data_plane_url_must_be_http_with_a_host(url: str) -> None:
    message = configuration_error("wk_test", url)

    assert "data_plane_url" in message
    assert "http:// or https://" in message


def test_data_plane_url_with_a_query_string_is_rejected() -> None:
    message = configuration_error("wk_test", "https://host/path?q=1")

    assert "data_plane_url" in message
    assert "query string" in message


def test_unknown_option_name_is_rejected_by_name() -> None:
    options: dict[str, Any] = {"flush_att": 5}

    message = configuration_error("wk_test", URL, **options)

    assert "flush_att" in message
    assert "not permitted" in message


def test_flush_at_larger_than_max_queue_size_names_both() -> None:
    message = configuration_error("wk_test", URL, flush_at=200, max_queue_size=100)

    assert "flush_at (200)" in message
    assert "max_queue_size (100)" in message


def test_max_message_bytes_too_big_for_max_batch_bytes_names_both() -> None:
    message = configuration_error("wk_test", URL, max_message_bytes=10_000, max_batch_bytes=10_000)

    assert "max_message_bytes (10000)" in message
    assert "max_batch_bytes (10000)" in message


def test_missing_write_key_says_where_to_put_it() -> None:
    message = configuration_error(None, URL)

    assert "write_key" in message
    assert "ANALYTICS_SDK_WRITE_KEY" in message


def test_missing_data_plane_url_says_where_to_put_it() -> None:
    message = configuration_error("wk_test")

    assert "data_plane_url" in message
    assert "ANALYTICS_SDK_DATA_PLANE_URL" in message


def test_configuration_error_is_raised_at_construction_not_later() -> None:
    with pytest.raises(ConfigurationError):
        Client("wk_test", URL, flush_at=0)


# -- the write key never appears in an error ------------------------------------------------


def test_mistyped_numeric_write_key_is_not_echoed() -> None:
    key: Any = NUMERIC_KEY

    with pytest.raises(ConfigurationError) as info:
        Client(key, URL)

    assert "write_key" in str(info.value)
    assert str(NUMERIC_KEY) not in str(info.value)
    assert str(NUMERIC_KEY) not in rendered(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"data_plane_url": "ftp://x"},
        {"data_plane_url": URL, "flush_at": 0},
        {"data_plane_url": URL, "unknown_option": True},
        {"data_plane_url": URL, "max_message_bytes": 10_000, "max_batch_bytes": 10_000},
    ],
    ids=["bad-url", "bad-limit", "unknown", "limits-clash"],
)
def test_secret_looking_write_key_is_never_in_the_error_or_traceback(
    options: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Client(SECRET_KEY, **options)

    assert SECRET_KEY not in str(info.value)
    assert SECRET_KEY not in repr(info.value)
    assert SECRET_KEY not in rendered(info.value)
    assert info.value.__cause__ is None  # pydantic's error, which echoes input, is not chained
    assert info.value.__suppress_context__ or info.value.__context__ is None


@pytest.mark.parametrize(
    "misplaced",
    [
        {"data_plane_url": SECRET_KEY},  # swapped arguments
        {"data_plane_url": URL, "flush_at": SECRET_KEY},
        {"data_plane_url": URL, "proxies": SECRET_KEY},
        {"data_plane_url": URL, "verify": ["x", SECRET_KEY]},
    ],
    ids=["as-url", "as-int", "as-dict", "in-a-list"],
)
def test_key_passed_in_the_wrong_place_is_not_echoed(misplaced: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        Client("https://dp.example.com", **misplaced)

    assert SECRET_KEY not in str(info.value)
    assert SECRET_KEY not in rendered(info.value)


# -- environment ------------------------------------------------------------------------------


def test_environment_supplies_write_key_and_data_plane_url(
    monkeypatch: pytest.MonkeyPatch, make_client: MakeClient, data_plane: DataPlane
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_WRITE_KEY", "wk_from_env")
    monkeypatch.setenv("ANALYTICS_SDK_DATA_PLANE_URL", data_plane.url)

    client = make_client(write_key=None, data_plane_url=None)
    client.track("u1", "From Env")
    assert client.flush(timeout=10)

    assert client.options.data_plane_url == data_plane.url
    (request,) = data_plane.requests
    assert basic_auth_user(request) == "wk_from_env"


def test_explicit_arguments_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, make_client: MakeClient, data_plane: DataPlane
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_WRITE_KEY", "wk_from_env")
    monkeypatch.setenv("ANALYTICS_SDK_DATA_PLANE_URL", URL)  # nothing listens there

    client = make_client(write_key="wk_explicit", data_plane_url=data_plane.url)
    client.track("u1", "Explicit")
    assert client.flush(timeout=10)

    assert client.options.data_plane_url == data_plane.url
    (request,) = data_plane.requests
    assert basic_auth_user(request) == "wk_explicit"


def test_environment_fills_only_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, make_client: MakeClient, data_plane: DataPlane
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_DATA_PLANE_URL", data_plane.url)

    client = make_client(write_key="wk_explicit", data_plane_url=None)
    client.track("u1", "Mixed")
    assert client.flush(timeout=10)

    (request,) = data_plane.requests
    assert basic_auth_user(request) == "wk_explicit"


@pytest.mark.parametrize("value", ["1", "true"])
def test_disabled_environment_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
    make_client: MakeClient,
    data_plane: DataPlane,
    value: str,
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_DISABLED", value)
    threads_before = consumer_threads()

    client = make_client()
    ids = [
        client.track("u1", "Disabled"),
        client.identify("u1", {"plan": "pro"}),
        client.page("u1", name="Home"),
    ]

    assert client.options.send is False
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == 3
    assert client.flush(timeout=10) is True
    stats = client.stats()
    assert (stats.accepted, stats.discarded, stats.delivered, stats.queued) == (3, 3, 0, 0)
    assert consumer_threads() - threads_before == set()
    assert client.shutdown(timeout=5) is True
    assert data_plane.requests == []


def test_disabled_zero_does_not_disable(
    monkeypatch: pytest.MonkeyPatch, make_client: MakeClient, data_plane: DataPlane
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_DISABLED", "0")

    client = make_client()
    client.track("u1", "Enabled")

    assert client.options.send is True
    assert client.flush(timeout=10)
    assert len(data_plane.events) == 1


def test_disabled_client_still_validates_calls(
    monkeypatch: pytest.MonkeyPatch, make_client: MakeClient
) -> None:
    monkeypatch.setenv("ANALYTICS_SDK_DISABLED", "1")

    client = make_client()

    assert client.track("u1", "") is None  # an empty event name is still invalid
    assert client.stats().dropped == {"invalid_input": 1}
    assert client.stats().discarded == 0


def test_send_false_needs_no_write_key_or_url() -> None:
    client = Client(send=False)
    try:
        message_id = client.track("u1", "Offline")

        assert message_id is not None
        assert client.options.data_plane_url is None
        assert client.stats().discarded == 1
        assert client.flush(timeout=1) is True
    finally:
        assert client.shutdown(timeout=1) is True


# -- storage --------------------------------------------------------------------------------


def test_storage_path_and_sync_mode_do_not_combine(tmp_path: Path) -> None:
    message = configuration_error("wk_test", URL, storage_path=tmp_path / "q", sync_mode=True)

    assert "storage_path cannot be combined with sync_mode" in message


def test_storage_sync_takes_normal_or_full(tmp_path: Path) -> None:
    message = configuration_error("wk_test", URL, storage_sync="sometimes")

    assert "storage_sync" in message
    assert ClientOptions.build("wk_test", URL, {}).storage_sync == "normal"


def test_the_control_plane_url_comes_from_the_environment_under_explicit_arguments() -> None:
    environ = {"ANALYTICS_SDK_CONTROL_PLANE_URL": "https://cp.example.com/"}
    from_env = ClientOptions.build("wk_test", URL, {}, environ=environ)
    explicit = ClientOptions.build(
        "wk_test", URL, {"control_plane_url": "https://mine.example.com"}, environ=environ
    )
    assert from_env.control_plane_url == "https://cp.example.com"
    assert explicit.control_plane_url == "https://mine.example.com"


# -- the options object ---------------------------------------------------------------------


def test_kwargs_typeddict_matches_the_options_model() -> None:
    typed = ClientOptionsKwargs.__required_keys__ | ClientOptionsKwargs.__optional_keys__
    model = set(ClientOptions.model_fields) - {"write_key", "data_plane_url"}

    assert typed == model
    assert ClientOptionsKwargs.__required_keys__ == frozenset()


def test_options_are_frozen() -> None:
    options = ClientOptions.build("wk_test", URL, {"flush_at": 10}, environ={})

    with pytest.raises(ValidationError):
        options.flush_at = 5  # type: ignore[misc]

    assert options.flush_at == 10


def test_client_options_are_validated_and_exposed(make_client: MakeClient) -> None:
    client = make_client(flush_at=7, timeout=2.5, gzip=False)

    assert (client.options.flush_at, client.options.timeout, client.options.gzip) == (7, 2.5, False)
    assert client.options.write_key.get_secret_value() == "wk_test_key"


def test_reprs_never_contain_the_write_key(make_client: MakeClient) -> None:
    client = make_client(write_key=SECRET_KEY)

    assert client.options.write_key.get_secret_value() == SECRET_KEY
    for text in (
        repr(client),
        str(client),
        repr(client.options),
        str(client.options),
        client.options.model_dump_json(),
        repr(client.options.model_dump()),
    ):
        assert SECRET_KEY not in text
    assert "SECRET" not in repr(client.options)
