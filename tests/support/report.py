"""The suite's delivery report: one row per fault or crash scenario, printed at the end.

Tests add rows with `add_row`; tests/conftest.py prints the table in the terminal summary
and writes it as Markdown to the path in $FAULT_REPORT when that is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

COLUMNS = ("scenario", "sent/accepted", "delivered", "reported", "lost", "duplicates",
           "reported+delivered", "requests", "faults", "flush True/False")  # fmt: skip

_ROWS = pytest.StashKey[list[dict[str, str]]]()


def add_row(config: pytest.Config, **cells: object) -> None:
    """One scenario's row; cells are keyed by COLUMNS with spaces and slashes as "_"."""
    keys = {column.replace(" ", "_").replace("/", "_").replace("+", "_"): column
            for column in COLUMNS}  # fmt: skip
    unknown = set(cells) - set(keys)
    assert not unknown, f"unknown report columns: {unknown}"
    row = {column: "-" for column in COLUMNS}
    row.update({keys[name]: str(value) for name, value in cells.items()})
    config.stash.setdefault(_ROWS, []).append(row)


def write_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in COLUMNS}
    terminalreporter.write_sep("=", "faults and crashes: where every message went")
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for row in rows:
        terminalreporter.write_line("  ".join(row[c].ljust(widths[c]) for c in COLUMNS))
    path = os.environ.get("FAULT_REPORT")
    if path:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"written to {path}")
