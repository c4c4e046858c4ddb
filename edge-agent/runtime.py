"""What the agent loop asks of a runtime — processes, Docker containers, or anything added
later (a built-in component served in-process, a Pod on a k3s node) — and nothing more.

A runtime carries out the verbs of the plan for the components it claims and says what
happened as lifecycle events (`Change`); it never moves a component from one state to
another itself: the `Agent` applies every event through the one state table
(`hedgerow.core.lifecycle`). A verb is an async generator: the agent applies each event
as it is yielded, so a long step shows STARTING while it runs, and the runtime, resumed
after the yield, sees the state the event led to (a stop that found the component
STOPPING goes on to end it).

Records are shared: a runtime may keep its own facts in the record it is handed (the
process runtime's `process` ref) and read everything else; the agent owns the state,
errors, holds, install bookkeeping and persistence.

Adding a runtime is constructing one and listing it in `Agent.runtimes` before the
ones it should take components from: the loop, the plan and the status do not change.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from hedgerow.agent import records
from hedgerow.core import documents, recipe
from hedgerow.core import plan as plan_
from hedgerow.core.lifecycle import Event


@dataclasses.dataclass(frozen=True)
class Change:
    """A lifecycle event with its message; `event` None only updates the message."""

    event: Event | None
    message: str = ""


Changes = AsyncIterator[Change]


@dataclasses.dataclass(frozen=True)
class Job:
    """One verb's inputs: the component, its record, and its recipe variables."""

    comp: documents.ResolvedComponent
    rec: records.Record
    context: recipe.Context


class Runtime(Protocol):
    """The verbs (install, start, stop, recover), the observation that turns what the
    runtime sees into events, and the housekeeping the loop gives every runtime."""

    kind: str  # the plan's `runtime` for the components it claims

    def claims(self, comp: documents.ResolvedComponent) -> bool:
        """Whether this runtime runs `comp` (asked in `Agent.runtimes` order)."""

    # --- the pass ---------------------------------------------------------------------

    async def observe(self, recs: Iterable[records.Record],
                      doc: documents.DesiredState | None) -> bool:
        """Look once per pass (its records, what is desired). False: the runtime cannot
        tell now (a daemon away): its components are left alone, neither planned nor
        removed, until it answers."""

    def observe_one(self, rec: records.Record, now: float) -> tuple[str, list[Change]]:
        """The spec hash the plan should see for `rec` (a runtime that finds something
        else running under its name reports that) and what happened to it since."""

    def prepare(self, comp: documents.ResolvedComponent) -> str | None:
        """PREPARE, in a worker thread, before anything old stops: the reason the
        deployment fails, if it must."""

    def is_deferred(self, name: str) -> bool:
        """PREPARE could not be done now (transient): not this pass."""

    def install(self, job: Job) -> Changes: ...

    def start(self, job: Job) -> Changes: ...

    def stop(self, rec: records.Record, *, remove: bool, replacing: bool) -> Changes:
        """End what runs; STOP_REQUESTED (and STOPPED) once it is over. Yields nothing
        when it cannot act now (the loop tries again next pass)."""

    def recover(self, job: Job) -> Changes:
        """End what is left and run the recover step; RECOVER, after which the agent
        installs and starts the component again."""

    def forget(self, name: str) -> None:
        """The component is removed: what the runtime kept for it goes."""

    async def clean_up(self, recs: Iterable[records.Record], actions: list[plan_.Action],
                       doc: documents.DesiredState | None, *, settled: bool,
                       last_good: Callable[[], documents.DesiredState | None]) -> None:
        """End of apply, with the runtime's records: remove what is the runtime's but no
        record's (orphans), and what neither `doc` nor the last good state uses
        (`settled`: that changed since the last call)."""

    def finish(self) -> None:
        """Complete what was started in batches (before records are written)."""

    # --- around the loop ----------------------------------------------------------------

    def adopt(self, rec: records.Record) -> list[Change]:
        """At start, after a crash: keep what still runs as recorded, end the rest."""

    def warm_up(self, recs: Iterable[records.Record]) -> None:
        """At start, in a worker thread, after adopting."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop runs: the runtime may wake it (`Services.wake`) from now on."""

    def detach(self) -> None: ...

    def next_wake(self, recs: Iterable[records.Record], now: float) -> float | None:
        """When the loop should look again, if sooner than the resync."""

    def unavailable(self) -> str:
        """Why the runtime cannot be used now ("" when it can): shown on its
        components, and the device is unhealthy while it has any."""


@dataclasses.dataclass(frozen=True)
class Services:
    """What a runtime may use of the agent it serves: narrow, one-way, no loop state."""

    wake: Callable[[], None]                        # the loop should look again soon
    checkpoint: Callable[[], None]                  # make the records durable now
    clock: Callable[[], float]                      # the agent's anchored clock
    context_of: Callable[[documents.ResolvedComponent], recipe.Context]
    # A process's steps (its shutdown too): the component's own configuration changes on
    # top, as its start rendered them (agent.context, own=True).
    step_context_of: Callable[[documents.ResolvedComponent], recipe.Context]


class Base:
    """Defaults for the housekeeping a simple runtime does not need."""

    kind = "process"

    async def observe(self, recs: Iterable[records.Record],
                      doc: documents.DesiredState | None) -> bool:
        return True

    def prepare(self, comp: documents.ResolvedComponent) -> str | None:
        return None

    def is_deferred(self, name: str) -> bool:
        return False

    def forget(self, name: str) -> None:
        return None

    async def clean_up(self, recs: Iterable[records.Record], actions: list[plan_.Action],
                       doc: documents.DesiredState | None, *, settled: bool,
                       last_good: Callable[[], documents.DesiredState | None]) -> None:
        return None

    def finish(self) -> None:
        return None

    def adopt(self, rec: records.Record) -> list[Change]:
        return []

    def warm_up(self, recs: Iterable[records.Record]) -> None:
        return None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    def detach(self) -> None:
        return None

    def next_wake(self, recs: Iterable[records.Record], now: float) -> float | None:
        return None

    def unavailable(self) -> str:
        return ""
