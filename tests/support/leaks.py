"""Where a secret could leak, as text: log records as a handler writes them, errors as a
traceback prints them, and what on_error was handed."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

_FORMAT = logging.Formatter("%(name)s %(levelname)s %(message)s")


def formatted(record: logging.LogRecord) -> str:
    """The record as a handler would write it, traceback and stack included."""
    return _FORMAT.format(record)


def rendered(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def leak_surfaces(
    records: Iterable[logging.LogRecord],
    reported: Iterable[tuple[BaseException, list[dict[str, Any]]]],
) -> Iterator[str]:
    """Every text the records and the on_error reports expose."""
    for record in records:
        yield record.getMessage()
        yield formatted(record)
    for error, messages in reported:
        yield str(error)
        yield repr(error)
        yield rendered(error)
        yield json.dumps(messages)
