"""anonymousId persistence, stateful identity across restarts, and the file's safety."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from analytics_sdk import Client
from analytics_sdk.identity import Identity


def test_the_anonymous_id_is_created_once_and_stays(tmp_path: Path) -> None:
    identity = Identity()
    first = identity.anonymous_id
    assert identity.anonymous_id == first
    assert len(first) == 36


def test_identity_path_persists_the_anonymous_id_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    first = Client("wk_test_key", send=False, identity_path=path).anonymous_id

    assert Client("wk_test_key", send=False, identity_path=path).anonymous_id == first
    assert json.loads(path.read_text())["anonymousId"] == first


def test_the_identity_file_is_private_to_the_user(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    Client("wk_test_key", send=False, identity_path=path).anonymous_id  # noqa: B018
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]  # no temp files left


def test_a_stateful_user_survives_a_restart_and_reset_forgets_it(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    cli = Client("wk_test_key", send=False, stateful=True, identity_path=path)
    cli.identify("u-1", {"plan": "pro"})
    anonymous_id = cli.anonymous_id

    restarted = Client("wk_test_key", send=False, stateful=True, identity_path=path)
    assert restarted.user_id == "u-1"
    assert restarted.anonymous_id == anonymous_id
    restarted.reset()

    again = Client("wk_test_key", send=False, stateful=True, identity_path=path)
    assert again.user_id is None
    assert again.anonymous_id not in (anonymous_id, None)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"anonymousId": 42}', ""])
def test_a_malformed_identity_file_starts_a_new_identity(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "identity.json"
    path.write_text(content)
    client = Client("wk_test_key", send=False, identity_path=path)
    assert len(client.anonymous_id) == 36
    assert json.loads(path.read_text())["anonymousId"] == client.anonymous_id
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_an_unwritable_identity_path_keeps_the_id_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    client = Client("wk_test_key", send=False, identity_path=blocker / "identity.json")
    assert client.track(event="Still Works") is not None
    assert any("cannot write identity file" in r.getMessage() for r in caplog.records)
