"""Every example runs, as a user would run it, against the dev server, and does what it says."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from analytics_sdk import Client
from analytics_sdk.devserver import DevServer

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_SDK_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer() as dev:
        yield dev


def test_quickstart_runs_on_the_embedded_dev_server_with_device_mode() -> None:
    result = run_example("quickstart.py")
    assert result.returncode == 0, result.stderr
    assert "no data plane configured: started the dev server at http://127.0.0.1:" in result.stdout
    assert "accepted 7, delivered 7, failed 0" in result.stdout
    assert "the dev server stored 7 events" in result.stdout
    for kind in ("identify", "track", "page", "screen", "group", "alias"):
        assert f"  {kind} " in result.stdout
    assert "(active: True); it received 7 messages directly from this process" in result.stdout
    assert result.stderr == ""


def test_quickstart_uses_a_configured_data_plane(server: DevServer) -> None:
    env = {"ANALYTICS_SDK_WRITE_KEY": server.write_key, "ANALYTICS_SDK_DATA_PLANE_URL": server.url}
    result = run_example("quickstart.py", env=env)
    assert result.returncode == 0, result.stderr
    assert "started the dev server" not in result.stdout
    assert len(server.events()) == 7


def test_prefork_workers_deliver_every_job_once() -> None:
    result = run_example("prefork_worker.py", "3", "20")
    assert result.returncode == 0, result.stderr
    assert "3 workers x 20 jobs: the dev server stored 61 events (61 distinct)" in result.stdout


def test_the_lambda_handler_flushes_each_invocation() -> None:
    result = run_example("lambda_handler.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("'analyticsDelivered': True") == 3
    assert "the dev server stored 6 events" in result.stdout


def test_the_durable_outbox_survives_a_crash_while_offline(tmp_path: Path) -> None:
    storage = tmp_path / "outbox" / "analytics.sqlite"
    result = run_example("durable_outbox.py", "--storage", str(storage))

    assert result.returncode == 0, result.stderr
    assert "worker: 25 orders accepted" in result.stdout
    assert "worker exited with status 1" in result.stdout  # it crashed: no exit flush ran
    assert "restart: found 25 events the worker left" in result.stdout
    assert "the dev server stored 25 orders" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_cli_tool_keeps_its_identity_across_runs(server: DevServer, tmp_path: Path) -> None:
    env = {"ANALYTICS_SDK_WRITE_KEY": server.write_key, "ANALYTICS_SDK_DATA_PLANE_URL": server.url}
    identity = str(tmp_path / "id.json")
    runs = [
        run_example("cli_tool.py", "--identity-file", identity, "greet", "Ada", env=env),
        run_example(
            "cli_tool.py", "--identity-file", identity, "--login", "ada@example.com",
            "greet", "Ada", env=env,
        ),
        run_example("cli_tool.py", "--identity-file", identity, "greet", "Ada", env=env),
    ]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    events = server.events()
    assert len({e["anonymousId"] for e in events}) == 1  # one visitor across three processes
    assert [e.get("userId") for e in events if e["type"] == "track"] == [
        None, "ada@example.com", "ada@example.com",
    ]  # fmt: skip
    assert (tmp_path / "id.json").stat().st_mode & 0o777 == 0o600


def test_the_flask_app_tracks_each_request(server: DevServer) -> None:
    pytest.importorskip("flask")
    client = Client(server.write_key, server.url)
    app = load_example("flask_app.py").create_app(client)
    web = app.test_client()
    assert web.get("/", headers={"X-User-Id": "u1"}).status_code == 200
    assert web.post("/signup", json={"email": "a@example.com"}).status_code == 201
    assert client.flush(timeout=5)
    client.shutdown()
    tracked = server.events(type="track")
    assert [(e["properties"]["path"], e["properties"]["status"]) for e in tracked] == [
        ("/", 200), ("/signup", 201),
    ]  # fmt: skip
    assert tracked[0]["userId"] == "u1"
    assert server.events(type="identify")[0]["userId"] == "a@example.com"


def test_the_fastapi_app_tracks_and_flushes_at_shutdown(server: DevServer) -> None:
    pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    module = load_example("fastapi_app.py")
    app = module.create_app(lambda: Client(server.write_key, server.url, flush_interval=60))
    with testclient.TestClient(app) as web:  # runs the lifespan: startup, then shutdown
        assert web.get("/").status_code == 200
        assert web.post("/orders/A-1/complete", headers={"x-user-id": "u9"}).status_code == 200
    names = [e["event"] for e in server.events(type="track")]  # delivered by ashutdown()
    assert sorted(names) == ["API Request", "API Request", "Order Completed"]
