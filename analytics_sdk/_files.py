"""Private files: written atomically, readable by the owner only (they may hold secrets)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600, creating missing directories (0700) if needed.

    mkstemp creates the file with mode 0600; os.replace switches atomically, so a crash
    leaves the old file or the new one, never half of one.

    Raises:
        OSError: the directory or the file could not be written.
    """
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and every missing parent with mode 0700; existing ones are left.

    `Path.mkdir(mode, parents=True)` applies `mode` to the last directory only: its parents
    get 0777 minus the umask, world-writable under a umask of 0.
    """
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another process may race us
