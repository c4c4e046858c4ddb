"""What the agent remembers about each component it started: state/components/<name>.json.

The record is the agent's inventory (principle 4): only components with a record are ever
stopped or removed, and a process is only signalled when its pid, its kernel start time
and the marker in its environment all match what the record says.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pydantic

from hedgerow.agent import files
from hedgerow.core import documents, lifecycle


class ProcessRef(pydantic.BaseModel):
    pid: int
    start_time: int        # /proc/<pid>/stat field 22, clock ticks since boot
    marker: str            # HEDGEROW_INSTANCE in its environment
    step: str              # install | startup | run | shutdown | recover


class Record(pydantic.BaseModel):
    name: str
    version: str
    spec_hash: str
    spec: dict[str, Any]                      # the ResolvedComponent, for shutdown/removal
    state: documents.ComponentState = documents.ComponentState.NEW
    errors: list[tuple[documents.ComponentState, float]] = []
    retry_at: float | None = None
    hold_revision: str | None = None
    process: ProcessRef | None = None
    token: str = ""                           # per-component IPC auth token (secret)
    message: str = ""
    installed_in: str = ""                    # desired revision that installed it
    install_failed: bool = False
    since: float = 0.0                        # when it entered its current state

    @property
    def status(self) -> lifecycle.Status:
        return lifecycle.Status(self.state, tuple(self.errors), self.retry_at)

    def component(self) -> documents.ResolvedComponent:
        return documents.ResolvedComponent.model_validate(self.spec)


def path_of(folder: pathlib.Path, name: str) -> pathlib.Path:
    return folder / f"{name}.json"


def save(folder: pathlib.Path, record: Record) -> None:
    files.write_atomic(path_of(folder, record.name), record.model_dump_json().encode())


def delete(folder: pathlib.Path, name: str) -> None:
    files.remove_file(path_of(folder, name))


def load_all(folder: pathlib.Path) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = Record.model_validate(json.loads(path.read_bytes()))
        except (ValueError, OSError):
            continue  # written atomically, so only a foreign file can be unreadable
        out[record.name] = record
    return out
