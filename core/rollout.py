"""Rollout arithmetic: how many devices a rollout may have notified by now, whether its
abort criteria trip, whether one device has timed out. Pure; the clock is an argument.

Rates work in whole windows of one minute from the rollout's start (``window`` lets tests
shrink the minute): window *i* allows ``rate_i`` more notifications, and the first window
opens at the start, so a rollout begins at once. ``maximumPerMinute`` is a constant rate;
with neither rate given a rollout is unlimited.

``exponentialRate``: window *i* runs at ``base * factor**k``, where *k* is the number of
completed steps of ``N`` devices counted at that window's start. For
``numberOfNotifiedThings`` the count is the allowance itself (notifications are assumed to
use the budget, which the controller does). For ``numberOfSucceededThings`` it is
``min(allowance, succeeded now)``: successes reported since a window opened raise that
window's rate too. This keeps the function stateless (nothing but the start time needs
recording) at the price of a slightly faster ramp than a per-window record would give.
"""

from __future__ import annotations

import dataclasses
import datetime
import math

from hedgerow.core import deployment

MINUTE = datetime.timedelta(minutes=1)
# Stop simulating windows once the allowance passes this (no fleet is larger).
_CEILING = 10_000_000


@dataclasses.dataclass(frozen=True)
class Counts:
    """Devices of one rollout (one deployment generation), by what they last reported."""

    targeted: int = 0
    notified: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0


def plan_allowance(
    rollout: deployment.Rollout,
    started: datetime.datetime,
    now: datetime.datetime,
    counts: Counts,
    window: datetime.timedelta = MINUTE,
) -> int:
    """How many devices may have been notified by ``now`` in total (capped at targeted)."""
    if rollout.maximum_per_minute is None and rollout.exponential_rate is None:
        return counts.targeted
    windows = max(0, math.floor((now - started) / window)) + 1
    if rollout.maximum_per_minute is not None:
        return min(counts.targeted, windows * rollout.maximum_per_minute)
    exp = rollout.exponential_rate
    assert exp is not None
    criteria = exp.rate_increase_criteria
    step = criteria.number_of_notified_things or criteria.number_of_succeeded_things or 1
    allowed = 0
    for _ in range(windows):
        counted = allowed if criteria.number_of_notified_things else min(allowed,
                                                                         counts.succeeded)
        rate = exp.base_rate_per_minute * exp.increment_factor ** (counted // step)
        allowed += max(1, math.floor(rate))
        if allowed >= min(counts.targeted, _CEILING):
            break
    return min(counts.targeted, allowed)


def plan_next_window(
    rollout: deployment.Rollout,
    started: datetime.datetime,
    now: datetime.datetime,
    window: datetime.timedelta = MINUTE,
) -> datetime.datetime:
    """When the allowance next grows (the controller sleeps until then)."""
    windows = max(0, math.floor((now - started) / window)) + 1
    return started + windows * window


def resolve_abort(
    criteria: list[deployment.AbortCriterion], counts: Counts,
) -> deployment.AbortCriterion | None:
    """The first criterion that trips, or None.

    Executed devices are those that finished one way or the other (succeeded, failed or
    timed out); a criterion trips once at least ``minNumberOfExecutedThings`` have and the
    failures of its type reach ``thresholdPercentage`` of them.
    """
    executed = counts.succeeded + counts.failed + counts.timed_out
    for criterion in criteria:
        if executed < criterion.min_number_of_executed_things or executed == 0:
            continue
        failures = {
            deployment.FailureType.FAILED: counts.failed,
            deployment.FailureType.TIMED_OUT: counts.timed_out,
            deployment.FailureType.ALL: counts.failed + counts.timed_out,
        }[criterion.failure_type]
        if failures * 100 >= criterion.threshold_percentage * executed:
            return criterion
    return None


def is_timed_out(
    rollout: deployment.Rollout,
    notified: datetime.datetime,
    now: datetime.datetime,
    window: datetime.timedelta = MINUTE,
) -> bool:
    """A device that has not finished ``timeoutMinutes`` after notification timed out."""
    if rollout.timeout_minutes is None:
        return False
    return now - notified >= rollout.timeout_minutes * window


def plan_timeout_at(
    rollout: deployment.Rollout,
    notified: datetime.datetime,
    window: datetime.timedelta = MINUTE,
) -> datetime.datetime | None:
    if rollout.timeout_minutes is None:
        return None
    return notified + rollout.timeout_minutes * window
