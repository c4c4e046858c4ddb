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
from collections.abc import Mapping
from typing import Any


def write_atomic(path: pathlib.Path, data: bytes, mode: int = 0o600,
                 durable: bool = True) -> None:
    """durable=False: still never torn (rename), but may be lost on power failure."""
    write_atomic_all({path: data}, mode, durable)


def write_atomic_all(contents: Mapping[pathlib.Path, bytes], mode: int = 0o600,
                     durable: bool = True) -> None:
    """Several files, each atomically: every temp file is written and fsync'd, then all
    are renamed and each folder is fsync'd once (one folder: one fsync, not one each)."""
    temps: list[tuple[str, pathlib.Path]] = []
    try:
        for path, data in contents.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                       suffix=".tmp")
            temps.append((tmp, path))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
        while temps:
            tmp, path = temps[0]
            pathlib.Path(tmp).replace(path)
            temps.pop(0)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                pathlib.Path(tmp).unlink()
        raise
    if durable:
        for folder in dict.fromkeys(path.parent for path in contents):
            fsync_dir(folder)


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
