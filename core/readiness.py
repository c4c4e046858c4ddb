"""A Deployment's Ready / Progressing / Stalled conditions, as the table docs/controller.md
draws: first the situation a rollout is in (:func:`resolve_situation`, rules in order),
then one row of :data:`TABLE` gives the three conditions. Flux (kstatus) reads Ready +
Stalled directly; Argo CD's health check in docs/controller.md reads the same two.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Final

from hedgerow.core import base

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
STALLED: Final = "Stalled"  # kstatus (Flux): a permanent failure, not "still working"


class Situation(enum.Enum):
    PROBLEM = "a semantic error (the spec must change)"
    ABORTED = "aborted"
    SUSPENDED = "suspended"
    ROLLING_OUT = "rolling out / waiting for devices"
    FAILED = "finished with failures (no abort)"
    SUCCEEDED = "every targeted device succeeded"


class Text(enum.Enum):
    """Which text a condition's message is."""

    PROGRESS = "progress"  # "n/m notified, s succeeded, f failed, t timed out"
    DETAIL = "detail"  # what the situation is about, in full (the problems, the abort)
    CAUSE = "cause"  # the first problem alone (or the detail when there is no problem)
    NONE = "none"


CAUSE_REASON: Final = ""  # a reason cell that takes the problem's own reason


@dataclasses.dataclass(frozen=True)
class Cell:
    status: base.ConditionStatus
    reason: str  # CAUSE_REASON: the problem's reason (VersionConflict, EmptyTarget, ...)
    message: Text | str  # a Text, or a fixed message


@dataclasses.dataclass(frozen=True)
class Row:
    ready: Cell
    progressing: Cell
    stalled: Cell


_T, _F = base.ConditionStatus.TRUE, base.ConditionStatus.FALSE

TABLE: Final[Mapping[Situation, Row]] = {
    Situation.ROLLING_OUT: Row(
        Cell(_F, "RollingOut", Text.PROGRESS), Cell(_T, "RollingOut", Text.PROGRESS),
        Cell(_F, "RollingOut", Text.NONE)),
    Situation.SUSPENDED: Row(
        Cell(_F, "Suspended", Text.PROGRESS), Cell(_F, "Suspended", "rollout.suspend is true"),
        Cell(_F, "Suspended", Text.NONE)),
    Situation.SUCCEEDED: Row(
        Cell(_T, "Succeeded", Text.PROGRESS), Cell(_F, "Complete", Text.PROGRESS),
        Cell(_F, "Succeeded", Text.NONE)),
    Situation.FAILED: Row(
        Cell(_F, "DevicesFailed", Text.PROGRESS), Cell(_F, "Complete", Text.PROGRESS),
        Cell(_T, "DevicesFailed", Text.PROGRESS)),
    Situation.ABORTED: Row(
        Cell(_F, "RolloutAborted", Text.DETAIL), Cell(_F, "RolloutAborted",
                                                      "the rollout stopped"),
        Cell(_T, "RolloutAborted", Text.DETAIL)),
    Situation.PROBLEM: Row(
        Cell(_F, CAUSE_REASON, Text.DETAIL),
        Cell(_F, CAUSE_REASON, "waiting for the spec to change"),
        Cell(_T, CAUSE_REASON, Text.CAUSE)),
}


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the situation is decided from (a rollout's counts and state)."""

    has_problem: bool
    aborted: bool
    suspended: bool
    targeted: int
    notified: int
    executed: int  # succeeded + failed + timed out
    unsuccessful: int  # failed + timed out


def resolve_situation(facts: Facts) -> Situation:
    """The first rule that holds, in the table's order of precedence."""
    if facts.has_problem:
        return Situation.PROBLEM
    if facts.aborted:
        return Situation.ABORTED
    if facts.notified < facts.targeted and facts.suspended:
        return Situation.SUSPENDED
    if facts.notified < facts.targeted or facts.executed < facts.targeted:
        return Situation.ROLLING_OUT
    if facts.unsuccessful:
        return Situation.FAILED
    return Situation.SUCCEEDED


@dataclasses.dataclass(frozen=True)
class Verdict:
    type: str
    status: base.ConditionStatus
    reason: str
    message: str


def render_conditions(
    situation: Situation, *, progress: str, detail: str = "", cause: str | None = None,
    cause_reason: str = "",
) -> list[Verdict]:
    """The three conditions of ``situation`` (Ready, Progressing, Stalled, in this order).
    ``cause``/``cause_reason``: the first problem's message and reason (PROBLEM only)."""
    texts = {Text.PROGRESS: progress, Text.DETAIL: detail,
             Text.CAUSE: detail if cause is None else cause, Text.NONE: ""}
    row = TABLE[situation]
    return [Verdict(type_, cell.status, cell.reason or cause_reason,
                    texts[cell.message] if isinstance(cell.message, Text) else cell.message)
            for type_, cell in ((READY, row.ready), (PROGRESSING, row.progressing),
                                (STALLED, row.stalled))]
