"""What the agent remembers about each component it started: state/components.json.

All records live in ONE file written atomically once per batch (temp, fsync, rename,
fsync dir): a pass that starts 50 components costs two fsyncs, not 400. The agent writes
the batch before it spawns anything the records must account for (see Agent.flush).

The record is the agent's inventory (principle 4): only components with a record are ever
stopped or removed, and a process is only signalled when its pid, its kernel start time
and the marker in its environment all match what the record says.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pydantic

from hedgerow import files
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
    # recipe.render_restart_hash of the spec: a configuration change that leaves it the
    # same does not restart the component ('' in records of older agents: it does).
    restart_hash: str = ""
    state: documents.ComponentState = documents.ComponentState.NEW
    errors: list[tuple[documents.ComponentState, float]] = []
    retry_at: float | None = None
    hold_revision: str | None = None
    # Prefix of every HEDGEROW_INSTANCE marker of this record's processes: durable
    # before any spawn, so a restart finds processes whose pid was never recorded.
    instance: str = ""
    process: ProcessRef | None = None
    token: str = ""                           # per-component IPC auth token (secret)
    message: str = ""
    installed_in: str = ""                    # desired revision that installed it
    install_failed: bool = False
    paused: bool = False                      # IPC PauseComponent (until resumed/stopped)
    since: float = 0.0                        # when it entered its current state

    @property
    def status(self) -> lifecycle.Status:
        return lifecycle.Status(self.state, tuple(self.errors), self.retry_at)

    def component(self) -> documents.ResolvedComponent:
        return documents.ResolvedComponent.model_validate(self.spec)


def render_all(all_records: dict[str, Record]) -> bytes:
    """The records file's bytes (the agent writes them with its other state, in one batch)."""
    return b"{" + b",".join(
        json.dumps(name).encode() + b":" + rec.model_dump_json().encode()
        for name, rec in sorted(all_records.items())) + b"}"


def save_all(path: pathlib.Path, all_records: dict[str, Record]) -> None:
    files.write_atomic(path, render_all(all_records))


def load_all(path: pathlib.Path) -> dict[str, Record]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    out: dict[str, Record] = {}
    for name, raw in data.items():
        try:
            out[name] = Record.model_validate(raw)
        except ValueError:
            continue  # written atomically, so only a hand-edited entry can be unreadable
    return out
