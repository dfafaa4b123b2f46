"""The `analytics-sdk` command, run as a user runs it: a subprocess against a DevServer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.processes import ROOT

from analytics_sdk.devserver import DevServer


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer() as dev:
        yield dev


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_SDK_")}
    return subprocess.run(
        [sys.executable, "-m", "analytics_sdk", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def target(server: DevServer) -> dict[str, str]:
    return {"ANALYTICS_SDK_WRITE_KEY": server.write_key, "ANALYTICS_SDK_DATA_PLANE_URL": server.url}


@pytest.mark.parametrize(
    ("call", "arguments", "field", "value"),
    [
        ("track", ["--user-id", "u1", "--event", "Signed Up", "--properties", '{"plan": "pro"}'],
         "properties", {"plan": "pro"}),
        ("identify", ["--user-id", "u1", "--traits", '{"email": "a@example.com"}'],
         "traits", {"email": "a@example.com"}),
        ("page", ["--anonymous-id", "a1", "--name", "Docs", "--category", "Help"], "name", "Docs"),
        ("screen", ["--user-id", "u1", "--name", "Home"], "name", "Home"),
        ("group", ["--user-id", "u1", "--group-id", "acme"], "groupId", "acme"),
        ("alias", ["--user-id", "u1", "--previous-id", "a1"], "previousId", "a1"),
    ],
)  # fmt: skip
def test_each_call_subcommand_delivers_and_says_so(
    server: DevServer, call: str, arguments: list[str], field: str, value: Any
) -> None:
    result = cli(call, *arguments, "--message-id", f"cli-{call}", env=target(server))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == f"delivered {call} cli-{call}"
    (event,) = server.events()
    assert (event["type"], event["messageId"], event[field]) == (call, f"cli-{call}", value)


def test_bad_arguments_are_one_clear_line_and_exit_2(server: DevServer) -> None:
    result = cli("track", "--user-id", "u1", "--event", "E", "--properties", "[1]",
                 env=target(server))  # fmt: skip
    assert result.returncode == 2
    assert "argument --properties: must be a JSON object" in result.stderr
    result = cli("track", "--user-id", "u1", "--event", "E", "--data-plane-url", server.url)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "write_key" in result.stderr
    result = cli("track", "--user-id", "u1", "--event", "E", "--timestamp", "yesterday",
                 env=target(server))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("analytics-sdk track: timestamp")
    assert server.events() == []


def test_a_refused_call_exits_1_with_the_reason(server: DevServer) -> None:
    env = {**target(server), "ANALYTICS_SDK_WRITE_KEY": "wrong-key"}
    result = cli("track", "--user-id", "u1", "--event", "E", env=env)
    assert result.returncode == 1
    assert "not delivered: rejected_4xx" in result.stderr
    assert "wrong-key" not in result.stderr + result.stdout


def test_import_sends_a_file_and_names_the_malformed_lines(
    server: DevServer, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    bad = {17: "{not json", 4000: json.dumps({"type": "track", "userId": "u1"}), 9999: "[]"}
    with path.open("w") as out:
        for number in range(1, 10_001):
            line = bad.get(number) or json.dumps({
                "type": "track", "userId": f"u{number % 7}", "event": "Imported",
                "messageId": f"imp-{number}", "timestamp": "2026-01-02T03:04:05.678Z",
                "properties": {"n": number},
            })  # fmt: skip
            out.write(line + "\n")
    result = cli("import", str(path), "--no-progress", env=target(server))
    assert result.returncode == 1  # malformed lines are a failure worth an exit code
    lines = result.stdout.splitlines()
    assert lines[0] == "9997 delivered, 0 rejected, 3 malformed lines"
    assert lines[1].startswith("  line 17: invalid JSON")
    assert lines[2] == "  line 4000: event is required and must be a non-empty string"
    assert lines[3] == "  line 9999: must be a JSON object"
    stored = server.events(limit=10_000)
    assert len(stored) == 9997
    first = stored[0]
    assert (first["messageId"], first["timestamp"]) == ("imp-1", "2026-01-02T03:04:05.678Z")


def test_import_reports_what_the_data_plane_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text(
        json.dumps({"type": "identify", "userId": "u1", "messageId": "ok-1"}) + "\n"
        + json.dumps({"type": "identify", "userId": "u2", "messageId": "bad-2"}) + "\n"
    )  # fmt: skip
    with DevServer() as server:
        env = {**target(server), "ANALYTICS_SDK_WRITE_KEY": "not-the-key"}
        result = cli("import", str(path), "--no-progress", env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "0 delivered, 2 rejected, 0 malformed lines"
    assert "rejected (rejected_4xx): 2" in result.stdout
    assert "line 2: rejected_4xx" in result.stdout


def test_doctor_lists_integrations_and_config_problems(tmp_path: Path) -> None:
    workspace = {"sources": [{
        "id": "backend", "writeKey": "doctor-key", "destinations": [
            {"id": "d1", "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook"},
             "config": {"webhookUrl": "ftp://nowhere", "connectionMode": "device"}},
            {"id": "d2", "destinationDefinition": {"name": "NOPE", "displayName": "Nowhere"},
             "config": {"connectionMode": "device"}},
        ]}]}  # fmt: skip
    with DevServer(workspace=workspace) as server:
        env = {
            "ANALYTICS_SDK_WRITE_KEY": "doctor-key",
            "ANALYTICS_SDK_DATA_PLANE_URL": server.url,
            "ANALYTICS_SDK_CONTROL_PLANE_URL": server.url,
        }
        result = cli("doctor", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "reachable (GET /health: 200)" in out
    assert "source 'backend', 2 destinations, 2 in device mode, enabled" in out
    webhook = next(line for line in out.splitlines() if line.strip().startswith("webhook"))
    assert "yes" in webhook
    assert "invalid options: webhookUrl" in webhook
    assert any(line.strip().startswith("nope") for line in out.splitlines())
    assert "2 problem(s) found" in out
    assert "doctor-key" not in out + result.stderr


def test_doctor_is_happy_with_a_good_setup(server: DevServer) -> None:
    env = {**target(server), "ANALYTICS_SDK_CONTROL_PLANE_URL": server.url}
    result = cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("no problems found")


def test_doctor_reports_an_unreachable_data_plane() -> None:
    env = {"ANALYTICS_SDK_WRITE_KEY": "k", "ANALYTICS_SDK_DATA_PLANE_URL": "http://127.0.0.1:9"}
    result = cli("doctor", "--timeout", "2", env=env)
    assert result.returncode == 1
    assert "UNREACHABLE (ConnectionError)" in result.stdout


def test_serve_runs_until_interrupted_and_keeps_what_it_stored(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    with subprocess.Popen(
        [sys.executable, "-m", "analytics_sdk", "serve", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert banner.startswith("analytics-sdk dev server on http://127.0.0.1:")
            url = banner.split()[4]
            env = {"ANALYTICS_SDK_WRITE_KEY": "dev-write-key", "ANALYTICS_SDK_DATA_PLANE_URL": url}
            sent = cli("track", "--user-id", "u1", "--event", "Served", env=env)
            assert sent.returncode == 0, sent.stderr
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert "Served" in out  # the live line
    assert "stopped: 1 events stored" in out
    with DevServer(db=db) as reopened:
        assert [e["event"] for e in reopened.events()] == ["Served"]


def test_help_and_version() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("serve", "track", "identify", "import", "doctor"):
        assert command in result.stdout
    assert cli("--version").stdout.startswith("analytics-sdk ")
    assert cli().returncode == 2  # no command: the help, and a usage exit code
