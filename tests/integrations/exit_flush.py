"""A process that exits with messages still queued for a wrapper: the exit flush must deliver
them through the destination SDK (whose own exit hook must not have closed it first)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from support.processes import run_script

_SCRIPT = """
import importlib, json, sys, threading
from analytics_sdk import Client

module, name, config = sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
wrapper = getattr(importlib.import_module(module), name)
busy = threading.Event()

class Watched(wrapper):
    def handle_batch(self, messages):
        if any(getattr(m, "event", None) == "E0" for m in messages):
            busy.set()
        return super().handle_batch(messages)

def on_error(error, messages):
    print("ON_ERROR", error, flush=True)

options = wrapper.options_model.model_validate(config)
client = Client("wk_test_key", sys.argv[1], integrations=[Watched(options)],
                on_error=on_error, shutdown_timeout=10)
client.track("u1", "First")
assert client.flush(timeout=10)  # the integration is set up: the SDK's client exists
client.track("u1", "E0")
assert busy.wait(10)  # E0's request is in flight (the fake answers it slowly) ...
for n in range(1, 20):
    client.track("u1", f"E{n}")  # ... so these are still queued at exit
print("exiting", flush=True)
"""


def run_exit_script(
    data_plane_url: str, api_url: str, wrapper: str, config: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Run the scenario in a fresh interpreter; `wrapper` is "package:ClassName"."""
    module, _, name = wrapper.partition(":")
    return run_script(
        _SCRIPT, data_plane_url, api_url, module, name, json.dumps(config), timeout=30
    )


EXPECTED_EVENTS = sorted(["First", *(f"E{n}" for n in range(20))])
