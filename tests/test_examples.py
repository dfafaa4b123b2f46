"""Every example runs, as a user would run it, and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_SDK_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_quickstart_sends_every_call_type_to_its_local_data_plane() -> None:
    result = run_example("quickstart.py")
    assert result.returncode == 0, result.stderr
    assert "accepted 7, delivered 7, failed 0" in result.stdout
    assert "the local data plane stored 7 events" in result.stdout
    for kind in ("identify", "track", "page", "screen", "group", "alias"):
        assert f"  {kind} " in result.stdout
    assert result.stderr == ""
