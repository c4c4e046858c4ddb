"""The device's StatusReport, rendered from what the agent knows (pure).

The agent observes (its records, the desired reading, its runtimes) and writes; what
the report says, and how it stays within the bounds the controller accepts
(core/limits.py), is decided here:
- revisions are reported as the controller published them: a cloud+local merge is
  reported under its cloud revision (the controller waits for that one), the merge
  apart in `localRevision`;
- every text is cut to its bound, at most MAX_REPORT_COMPONENTS components (errors first
  when there are more: they are what an operator needs), and messages are shortened
  further when the whole would pass MAX_REPORT_BYTES, whatever a component made its
  messages (Docker's start errors quote the recipe).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from hedgerow.core import documents, limits, outcome

State = documents.ComponentState
_TROUBLED = frozenset({State.ERRORED, State.BROKEN})


@dataclasses.dataclass(frozen=True)
class Seen:
    """One component as the agent has it recorded. `message` is what to show: the
    record's own, or why its runtime cannot be used now."""

    name: str
    version: str
    state: State
    message: str = ""
    # Keys of its configuration the component changed itself (UpdateConfiguration).
    own_configuration: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything a report is made of, observed by the agent."""

    thing: str
    time: datetime.datetime
    agent_version: str
    platform: documents.PlatformInfo
    history: outcome.History
    components: Sequence[Seen]
    # The document being converged on (None: nothing readable), as the reader saw it.
    desired_revision: str | None = None
    # What the cloud document's revision was, when the reading had problems with it.
    cloud_revision: str | None = None
    problems: Sequence[str] = ()
    applied_revision: str | None = None
    # A runtime that components want cannot be used now (dockerd gone, say).
    runtime_down: bool = False
    # A revision held back, and why (components deferring its update, or validating
    # its configuration): the reason shown while its outcome has none of its own.
    waiting: tuple[str, str] | None = None


def _verdict(facts: Facts) -> tuple[str | None, documents.DeploymentOutcome | None]:
    """The revision to report as desired, and the deployment outcome to show."""
    revision, reason_max = facts.desired_revision, limits.MAX_REPORT_REASON
    if facts.problems:
        revision = facts.cloud_revision or revision
        return revision, documents.DeploymentOutcome(
            revision=revision or "", outcome=documents.Outcome.REJECTED,
            reason="; ".join(facts.problems)[:reason_max])
    entry = facts.history.outcome_of(revision) if revision else None
    if entry is None:
        return revision, None
    published = outcome.resolve_published(facts.history, revision)
    waiting = facts.waiting[1] if facts.waiting and facts.waiting[0] == revision else ""
    return published, documents.DeploymentOutcome(
        revision=published or revision or "", outcome=entry.outcome,
        reason=(entry.reason or waiting)[:reason_max],
        rolled_back_to=outcome.resolve_published(facts.history, entry.rolled_back_to))


def _shown(components: Sequence[Seen]) -> list[Seen]:
    shown = sorted(components, key=lambda c: c.name)
    if len(shown) > limits.MAX_REPORT_COMPONENTS:
        shown = sorted(shown, key=lambda c: c.state not in _TROUBLED
                       )[:limits.MAX_REPORT_COMPONENTS]
        shown.sort(key=lambda c: c.name)
    return shown


def render_report(facts: Facts) -> tuple[documents.StatusReport, bytes]:
    """The report and its bytes (what status.json gets), within the report bounds."""
    text = limits.MAX_REPORT_TEXT
    revision, verdict = _verdict(facts)
    shown = _shown(facts.components)

    def components(message_max: int) -> list[documents.ComponentReport]:
        return [documents.ComponentReport(
            name=c.name[:text], version=c.version[:text], state=c.state,
            message=c.message[:message_max],
            own_configuration=[k[:text] for k in c.own_configuration[
                :limits.MAX_REPORT_OWN_KEYS]] or None) for c in shown]

    bad = facts.runtime_down or any(c.state in _TROUBLED for c in facts.components)
    applied = outcome.resolve_published(facts.history, facts.applied_revision)
    report = documents.StatusReport(
        thing=facts.thing, time=facts.time,
        agent_version=facts.agent_version[:text], platform=facts.platform,
        health=documents.Health.UNHEALTHY if bad else documents.Health.HEALTHY,
        desired_revision=revision, applied_revision=applied,
        local_revision=(facts.applied_revision
                        if applied != facts.applied_revision else None),
        components=components(512), deployment=verdict)
    data, budget = documents.render_bytes(report), 512
    while budget and len(data) > limits.MAX_REPORT_BYTES:
        budget //= 2  # rare: many components with long messages
        report = report.model_copy(update={"components": components(budget)})
        data = documents.render_bytes(report)
    return report, data
