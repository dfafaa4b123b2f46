"""The public surface: one sorted __all__, every name importable, a cheap import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import analytics_sdk

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert analytics_sdk.__all__ == sorted(analytics_sdk.__all__)
    for name in analytics_sdk.__all__:
        assert getattr(analytics_sdk, name) is not None, name


def test_all_lists_every_public_name_the_package_offers() -> None:
    public = {name for name in dir(analytics_sdk) if not name.startswith("_")}
    submodules = {
        "client", "devserver", "errors", "identity", "integration", "models", "options", "testing",
    }  # fmt: skip
    assert public - submodules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} == (
        set(analytics_sdk.__all__) - {"__version__"}
    )


def test_importing_the_package_loads_neither_requests_nor_pydantic() -> None:
    code = (
        "import sys, analytics_sdk; "
        "heavy = ('requests', 'urllib3', 'pydantic', 'backoff'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


def test_a_disabled_client_never_imports_the_http_stack() -> None:
    code = (
        "import sys, analytics_sdk; c = analytics_sdk.Client(send=False); c.track('u', 'E'); "
        "c.flush(); c.shutdown(); print('requests' in sys.modules, 'urllib3' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False False"


def test_the_package_ships_type_information() -> None:
    assert (ROOT / "analytics_sdk" / "py.typed").exists()
    assert (ROOT / "tests" / "typed_usage.py").exists()  # checked by mypy --strict in CI
