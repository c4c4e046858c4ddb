"""Component updates over IPC: Greengrass's SubscribeToComponentUpdates and
DeferComponentUpdate.

Before a new revision stops, replaces or removes a running component, every subscriber
gets a `preUpdateEvent` and may answer `DeferComponentUpdate` — `recheckAfterMs` > 0:
"not now, ask me again then" (a batch to finish), 0: "go ahead". The revision waits while
a deferral runs or a subscriber has not answered, up to the deployment's
componentUpdatePolicy `timeoutSeconds` (default 60) from the first event; then it goes
on. `SKIP_NOTIFY_COMPONENTS` skips all of it. After the revision is applied, a
`postUpdateEvent` follows.

Level-triggered, never blocking the loop: `resolve` is asked once per pass and answers
"go" or "wait until T" (the agent keeps running the applied document meanwhile and
wakes at T or at the next answer); the deferral is in the device status (the revision
IN_PROGRESS, its reason "deferred by COMPONENT: MESSAGE").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Final

from hedgerow.agent import ipcserver
from hedgerow.core import fleet

log = logging.getLogger("hedgerow.agent.ipc")

SUBSCRIBE: Final = "aws.greengrass#SubscribeToComponentUpdates"
EVENT: Final = "aws.greengrass#ComponentUpdatePolicyEvents"
DEFER: Final = "aws.greengrass#DeferComponentUpdate"


@dataclasses.dataclass(eq=False)
class Subscriber:
    component: str
    stream: ipcserver.Stream


@dataclasses.dataclass
class Pending:
    """One revision waiting for its subscribers."""
    deadline: float
    asked: dict[str, float]                 # component -> when it was last sent the event
    answers: dict[str, tuple[float, str]]   # component -> (deferred until, its message)
    approved: set[str] = dataclasses.field(default_factory=set)  # answered "go ahead"


@dataclasses.dataclass(frozen=True)
class Verdict:
    go: bool
    until: float = 0.0   # wait: look again then
    reason: str = ""     # wait: for the status


class Updates:
    def __init__(self, clock: Callable[[], float], wake: Callable[[], None]) -> None:
        self.clock, self.wake = clock, wake
        self.subscribers: list[Subscriber] = []
        self.pending: dict[str, Pending] = {}

    def _send(self, names: set[str], body: dict[str, Any]) -> None:
        for sub in self.subscribers:
            if sub.component in names:
                sub.stream.send(body)

    def resolve(self, revision: str, timeout_s: float) -> Verdict:
        """May `revision` stop or replace running components now?"""
        now = self.clock()
        for other in [r for r in self.pending if r != revision]:
            del self.pending[other]  # superseded while it waited: never announced again
        names = {s.component for s in self.subscribers}
        pending = self.pending.get(revision)
        if pending is None:
            if not names:
                return Verdict(go=True)
            pending = self.pending[revision] = Pending(now + timeout_s, {}, {})
            log.info("asking %s before %s updates components", ", ".join(sorted(names)),
                     revision)
        if now >= pending.deadline:
            waiting = sorted(pending.answers) or sorted(names - set(pending.answers))
            if waiting:
                log.warning("%s: going on after %gs (componentUpdatePolicy timeout) though "
                            "%s asked to wait", revision, timeout_s, ", ".join(waiting))
            return Verdict(go=True)
        event = {"preUpdateEvent": {"deploymentId": revision, "isGgcRestarting": False}}
        # Ask who has not been asked, and whoever's deferral is over, again.
        again = {n for n in names if n not in pending.asked or (
            n in pending.answers and pending.answers[n][0] <= now)}
        for name in again:
            pending.asked[name] = now
            pending.answers.pop(name, None)
        self._send(again, event)
        deferring = {n: a for n, a in pending.answers.items() if a[0] > now and n in names}
        silent = {n for n in names if n not in pending.answers and n not in pending.approved}
        if not deferring and not silent:
            return Verdict(go=True)
        if deferring:
            name, (until, message) = min(deferring.items(), key=lambda kv: kv[1][0])
            return Verdict(False, min(until, pending.deadline),
                           f"{fleet.DEFERRED}{name}: {message}" if message
                           else f"{fleet.DEFERRED}{name}")
        return Verdict(False, pending.deadline,
                       f"waiting for {', '.join(sorted(silent))} to allow the update")

    def finished(self, revision: str) -> None:
        """`revision` was applied: tell the subscribers (postUpdateEvent)."""
        if self.pending.pop(revision, None) is not None:
            self._send({s.component for s in self.subscribers},
                       {"postUpdateEvent": {"deploymentId": revision}})

    def subscribe(self, call: ipcserver.Call) -> dict[str, Any]:
        assert call.stream is not None
        sub = Subscriber(call.caller.component, call.stream)
        self.subscribers.append(sub)
        call.stream.on_close(lambda: self.subscribers.remove(sub))
        return {}

    def defer(self, call: ipcserver.Call) -> dict[str, Any]:
        revision = call.require("deploymentId")
        pending = self.pending.get(revision)
        if pending is None:
            raise ipcserver.RefusalError(ipcserver.RESOURCE_NOT_FOUND, (
                f"{DEFER}: no update {revision!r} is waiting (it went on, or was never "
                "announced)"), resourceType="Deployment", resourceName=revision)
        recheck = call.request.get("recheckAfterMs") or 0
        if isinstance(recheck, bool) or not isinstance(recheck, int) or recheck < 0:
            raise ipcserver.RefusalError(ipcserver.INVALID_ARGUMENTS, (
                f"{DEFER}: recheckAfterMs is a number of milliseconds, 0 or more"))
        message = call.request.get("message")
        name = call.caller.component
        if recheck == 0:
            pending.answers.pop(name, None)
            pending.approved.add(name)
        else:
            pending.approved.discard(name)
            pending.answers[name] = (self.clock() + recheck / 1000,
                                     message if isinstance(message, str) else "")
            log.info("%s defers %s by %d ms%s", name, revision, recheck,
                     f": {message}" if message else "")
        self.wake()
        return {}

    def operations(self) -> list[ipcserver.Operation]:
        return [
            ipcserver.Operation(SUBSCRIBE, "aws.greengrass#SubscribeToComponentUpdatesResponse",
                                self.subscribe, stream_event=EVENT),
            ipcserver.Operation(DEFER, "aws.greengrass#DeferComponentUpdateResponse",
                                self.defer),
        ]
