"""Rollout arithmetic: how many devices a rollout may have notified by now, whether its
abort criteria trip, whether one device has timed out. Pure; the clock is an argument.

Rates work in windows of one minute from the rollout's start (``window`` lets tests shrink
the minute): window *i* allows ``rate_i`` more notifications. A window's allowance is not
given all at its start but in ``TICKS`` (12) equal steps, every ``window / 12`` (5 s):
after tick *k* of window *i* the rollout may have notified the earlier windows' rates plus
``ceil(rate_i * (k + 1) / 12)``. Rounding up makes the first tick admit one device at least
(the first window opens at the start, so a rollout begins at once) and the last tick the
whole rate, so window totals are the rates. The allowance grows by at most
``maximumPerMinute`` in any 60 s (12 ticks; whole windows grew by twice the rate within an
instant at a boundary) and by a twelfth of it at once, so the status writer gets a tick's
devices at a time, not a minute's. Allowance left unused (no device to admit yet) is still
used at once when devices come. ``maximumPerMinute`` is a constant rate; with neither rate
given a rollout is unlimited.

``exponentialRate``: window *i* runs at ``base * factor**k``, where *k* is the number of
completed steps of ``N`` devices counted at that window's start (its ticks then spread
that rate). For ``numberOfNotifiedThings`` the count is the allowance of the earlier
windows (notifications are assumed to use the budget, which the controller does). For
``numberOfSucceededThings`` it is ``min(that allowance, succeeded now)``: successes
reported since a window opened raise that window's rate too. This keeps the function
stateless (nothing but the start time needs recording) at the price of a slightly faster
ramp than a per-window record would give.
"""

from __future__ import annotations

import dataclasses
import datetime
import math

from hedgerow.core import deployment

MINUTE = datetime.timedelta(minutes=1)
# Steps per window: 5 s at the real minute, so a window's devices reach the status writer
# a twelfth at a time rather than all at its start.
TICKS = 12
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
    index, tick = _position(started, now, window)
    if rollout.maximum_per_minute is not None:
        rate = rollout.maximum_per_minute
        return min(counts.targeted, index * rate + _share(rate, tick))
    exp = rollout.exponential_rate
    assert exp is not None
    criteria = exp.rate_increase_criteria
    step = criteria.number_of_notified_things or criteria.number_of_succeeded_things or 1
    allowed = 0
    for current in range(index + 1):
        counted = allowed if criteria.number_of_notified_things else min(allowed,
                                                                         counts.succeeded)
        rate = max(1, math.floor(exp.base_rate_per_minute * exp.increment_factor
                                 ** (counted // step)))
        allowed += rate if current < index else _share(rate, tick)
        if allowed >= min(counts.targeted, _CEILING):
            break
    return min(counts.targeted, allowed)


def plan_next_window(
    rollout: deployment.Rollout,
    started: datetime.datetime,
    now: datetime.datetime,
    window: datetime.timedelta = MINUTE,
) -> datetime.datetime:
    """The next tick at which the allowance may grow (the controller sleeps until then).
    A fixed rate below ``TICKS`` a minute grows at some ticks only (1 a minute: at each
    window's first): the ticks in between are skipped, not woken for. An exponential
    rate depends on counts this does not see: every tick."""
    index, tick = _position(started, now, window)
    rate = rollout.maximum_per_minute
    for later in range(tick + 1, TICKS):
        if rate is None or _share(rate, later) > _share(rate, tick):
            return started + index * window + later * (window / TICKS)
    return started + (index + 1) * window


def _position(started: datetime.datetime, now: datetime.datetime,
              window: datetime.timedelta) -> tuple[int, int]:
    """The window and the tick within it that ``now`` falls in (a clock that stepped
    back before the start counts as the first tick)."""
    elapsed = max(datetime.timedelta(0), now - started)
    index = math.floor(elapsed / window)
    # Ticks start at whole multiples of window / TICKS from each window's start, so the
    # microsecond rounding of a shrunk window never drifts across windows.
    tick = min(TICKS - 1, math.floor((elapsed - index * window) / (window / TICKS)))
    return index, tick


def _share(rate: int, tick: int) -> int:
    """A window's allowance after ``tick``: rounded up, so the first tick admits one
    device at least and the last the whole rate."""
    return -(-rate * (tick + 1) // TICKS)


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
