"""Run a Python snippet in a fresh interpreter, the way an application process would run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(
    source: str, *args: str, timeout: float = 60, strict_warnings: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -c source args...` with this checkout importable; never raises on failure.

    strict_warnings runs it under `-X dev -W error`, where a warning is an exception.
    """
    flags = ["-X", "dev", "-W", "error"] if strict_warnings else []
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
