"""Crash-safe files, shared by the agent and the controller (which may not import each
other): temp → fsync → rename → fsync dir.

A reader therefore sees either the old or the new bytes, never a torn file, even after
power loss or a `kill -9` in the middle of a write.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from typing import Any


def write_atomic(path: pathlib.Path, data: bytes, mode: int = 0o600,
                 durable: bool = True) -> None:
    """durable=False: still never torn (rename), but may be lost on power failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        pathlib.Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            pathlib.Path(tmp).unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: pathlib.Path, value: Any, mode: int = 0o600) -> None:
    write_atomic(path, json.dumps(value, sort_keys=True, indent=1).encode(), mode)


def remove_file(path: pathlib.Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
