"""Deployment outcomes on a device, decided in pure functions over a typed history.

The agent observes its components, calls these, and applies the answer (writes the last
good document, re-applies it, writes state/deployments.json). The rules:

- A revision SUCCEEDS once every one of its components has been RUNNING/FINISHED for the
  settle period; it FAILS when one is BROKEN or its install failed, or when it is not
  there after the deployment timeout (`resolve_judgement`).
- A failed revision with ROLLBACK goes back to the last good document, unless that *is*
  the failed revision (`resolve_failure`).
- A newer revision that arrives while the applied one is still IN_PROGRESS SUPERSEDES it
  (like a canceled deployment in Greengrass). If every component of the superseded one
  was RUNNING/FINISHED at that moment, it is what the device ran: it becomes the last
  good document, so that a failing newer revision rolls back to it, not to an older one
  that would remove it (`resolve_superseded`). A superseded revision that is wanted again
  starts afresh (`resolve_started`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Annotated

import pydantic

from hedgerow.core import base, deployment, limits
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.documents import Outcome

_DONE = frozenset({State.RUNNING, State.FINISHED})


class Source(base.StrEnum):
    """Where a revision came from: the controller, local deployments on the device, or
    both (the local ones merged over the cloud document)."""

    CLOUD = "cloud"
    LOCAL = "local"
    CLOUD_AND_LOCAL = "cloud+local"


class _Record(base.Model):
    # The agent's own file, read back after upgrades: a field an older or newer agent
    # wrote must not make the whole history unreadable.
    model_config = pydantic.ConfigDict(extra="ignore")


class Entry(_Record):
    """One revision's outcome on this device."""

    outcome: Outcome = Outcome.IN_PROGRESS
    started: float
    finished: float | None = None
    reason: Annotated[str, pydantic.Field(max_length=limits.MAX_REPORT_REASON)] = ""
    rolled_back_to: str | None = None
    source: Source = Source.CLOUD
    # CLOUD_AND_LOCAL: the revision of the cloud document the merge was made from, the
    # one the controller published and waits for (reported as the applied revision).
    cloud_revision: str | None = None


class LocalEntry(_Record):
    """One `hedgerow deployment create`, and the revision it produced once applied."""

    id: str
    created: float
    components: list[str] = []
    revision: str | None = None


class History(_Record):
    """state/deployments.json: outcomes by revision (bounded) and local requests."""

    outcomes: dict[str, Entry] = {}
    local: list[LocalEntry] = []

    def outcome_of(self, revision: str | None) -> Entry | None:
        return self.outcomes.get(revision) if revision else None


@dataclasses.dataclass(frozen=True)
class Observed:
    """One component of a revision as the device sees it now."""

    name: str
    state: State
    since: float  # when it entered `state`
    install_failed: bool = False
    message: str = ""


class Verdict(enum.Enum):
    WAIT = "wait"            # still converging: judge again at the next pass
    SETTLING = "settling"    # all RUNNING/FINISHED, not yet for the settle period
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""
    judge_at: float | None = None  # SETTLING: when the settle period is over


def is_running(components: Sequence[Observed | None]) -> bool:
    """Every component of the revision is there and RUNNING/FINISHED."""
    return all(c is not None and c.state in _DONE for c in components)


def resolve_judgement(entry: Entry, components: Sequence[Observed | None], now: float,
                      settle_s: float, timeout_s: float) -> Judgement:
    """The verdict on an IN_PROGRESS revision (None: a component has no record yet)."""
    broken = [c for c in components if c is not None and (
        c.state is State.BROKEN or (c.install_failed and c.state is State.ERRORED))]
    if broken:
        return Judgement(Verdict.FAILED,
                         "; ".join(f"{c.name} {c.state}: {c.message}" for c in broken))
    if is_running(components):
        settled_at = max((c.since for c in components if c is not None), default=0.0)
        if now - settled_at < settle_s:
            return Judgement(Verdict.SETTLING, judge_at=settled_at + settle_s)
        return Judgement(Verdict.SUCCEEDED)
    if now - entry.started > timeout_s:
        return Judgement(Verdict.FAILED, f"not RUNNING after {timeout_s:g}s")
    return Judgement(Verdict.WAIT)


def resolve_published(history: History, revision: str | None) -> str | None:
    """`revision` as the controller knows it: for a cloud+local merge, the cloud
    revision it was made from; any other revision is its own."""
    entry = history.outcome_of(revision)
    return entry.cloud_revision if entry is not None and entry.cloud_revision else revision


def _with(history: History, revision: str, entry: Entry) -> History:
    return history.model_copy(update={"outcomes": {**history.outcomes, revision: entry}})


def resolve_started(history: History, revision: str, now: float,
                    source: Source = Source.CLOUD,
                    cloud_revision: str | None = None) -> History:
    """The history with `revision` recorded as wanted: a new revision (or one that was
    superseded and is wanted again) starts IN_PROGRESS; the oldest entries beyond the
    bound go. `cloud_revision`: the cloud document a cloud+local merge was made from
    (the same merge from another cloud revision keeps its outcome, under the new one)."""
    entry = history.outcomes.get(revision)
    if entry is not None and entry.outcome is not Outcome.SUPERSEDED:
        if entry.cloud_revision == cloud_revision:
            return history
        return _with(history, revision,
                     entry.model_copy(update={"cloud_revision": cloud_revision}))
    outcomes = {r: e for r, e in history.outcomes.items() if r != revision}
    while len(outcomes) >= limits.MAX_HISTORY_ENTRIES:
        del outcomes[min(outcomes, key=lambda r: outcomes[r].started)]
    outcomes[revision] = Entry(started=now, source=source, cloud_revision=cloud_revision)
    return history.model_copy(update={"outcomes": outcomes})


def resolve_succeeded(history: History, revision: str, now: float) -> History:
    entry = history.outcomes[revision]
    return _with(history, revision, entry.model_copy(
        update={"outcome": Outcome.SUCCEEDED, "finished": now}))


def resolve_rollback_target(failure_handling: deployment.FailureHandling, revision: str,
                            last_good: str | None) -> str | None:
    """What a failed revision goes back to: the last good document, with ROLLBACK, when
    there is one and it is another revision; None: stay on the failed one."""
    if failure_handling is not deployment.FailureHandling.ROLLBACK:
        return None
    if last_good is None or last_good == revision:
        return None
    return last_good


def resolve_failure(history: History, revision: str, reason: str, now: float,
                    rollback_to: str | None) -> History:
    """The history with an IN_PROGRESS `revision` FAILED, or ROLLED_BACK to
    `rollback_to` (see `resolve_rollback_target`); any other outcome is kept."""
    entry = history.outcomes.get(revision)
    if entry is None or entry.outcome is not Outcome.IN_PROGRESS:
        return history
    update = {"outcome": Outcome.FAILED, "finished": now,
              "reason": reason[:limits.MAX_REPORT_REASON]}
    if rollback_to is not None:
        update |= {"outcome": Outcome.ROLLED_BACK, "rolled_back_to": rollback_to}
    return _with(history, revision, entry.model_copy(update=update))


@dataclasses.dataclass(frozen=True)
class Superseded:
    history: History
    # The superseded revision ran (every component RUNNING/FINISHED): it is the last
    # good document from now on.
    is_last_good: bool


def resolve_superseded(history: History, previous: str | None, revision: str,
                       components: Sequence[Observed | None], now: float) -> Superseded:
    """The applied revision `previous` is being replaced by `revision`, with
    `previous`'s components as observed right before: an IN_PROGRESS one is SUPERSEDED,
    and becomes the last good document if it was running."""
    entry = history.outcome_of(previous)
    if previous is None or previous == revision or entry is None or (
            entry.outcome is not Outcome.IN_PROGRESS):
        return Superseded(history, False)
    ran = is_running(components)
    reason = (f"superseded by {revision[:12]} before it settled; "
              + ("it was running, so it is the rollback target" if ran
                 else "it never ran, so the last good revision stays the rollback target"))
    return Superseded(_with(history, previous, entry.model_copy(update={
        "outcome": Outcome.SUPERSEDED, "finished": now, "reason": reason})), ran)


def resolve_local_applied(history: History, local_id: str, revision: str) -> History:
    """The history with the local request `local_id` produced `revision`."""
    return history.model_copy(update={"local": [
        e.model_copy(update={"revision": revision}) if e.id == local_id else e
        for e in history.local]})


def resolve_local_requested(history: History, entry: LocalEntry) -> History:
    local = [*history.local, entry][-limits.MAX_HISTORY_ENTRIES:]
    return history.model_copy(update={"local": local})
