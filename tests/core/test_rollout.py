"""Rollout arithmetic with a fake clock: rates, exponential ramps, abort criteria, timeouts."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest

from hedgerow.core import deployment, rollout

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def spec(**fields: Any) -> deployment.Rollout:
    return deployment.Rollout.model_validate(fields)


@pytest.mark.parametrize(("fields", "minutes", "targeted", "expected"), [
    ({}, 0, 500, 500),  # no rate: everything at once
    ({"maximumPerMinute": 120}, 0, 500, 10),  # the first tick (5 s) opens at the start
    ({"maximumPerMinute": 120}, 4.9 / 60, 500, 10),
    ({"maximumPerMinute": 120}, 5 / 60, 500, 20),
    ({"maximumPerMinute": 120}, 0.99, 500, 120),  # the last tick completes the window
    ({"maximumPerMinute": 120}, 1, 500, 130),
    ({"maximumPerMinute": 120}, 5.5, 5000, 5 * 120 + 70),  # 5 windows, 7 ticks
    ({"maximumPerMinute": 10}, 0, 500, 1),  # rounded up: a rollout begins at once
    ({"maximumPerMinute": 10}, 5 / 60, 500, 2),
    ({"maximumPerMinute": 10}, 0.99, 500, 10),
    ({"maximumPerMinute": 1}, 0, 500, 1),
    ({"maximumPerMinute": 1}, 1.5, 500, 2),
    ({"maximumPerMinute": 10}, 100, 25, 25),  # capped at the targeted devices
    ({"maximumPerMinute": 10}, -1, 500, 1),  # a clock step backwards: the first tick
])
def test_maximum_per_minute(fields: dict[str, Any], minutes: float, targeted: int,
                            expected: int) -> None:
    counts = rollout.Counts(targeted=targeted)
    assert rollout.plan_allowance(spec(**fields), T0, at(minutes), counts) == expected


def _ticks(window: datetime.timedelta, windows: int) -> list[datetime.datetime]:
    """Every tick of the first ``windows`` windows, found by following plan_next_window
    (at 12 a minute the allowance grows at every tick)."""
    r = spec(maximumPerMinute=rollout.TICKS)
    ticks = [T0]
    while ticks[-1] < T0 + windows * window:
        ticks.append(rollout.plan_next_window(r, T0, ticks[-1], window))
    return ticks[:-1]


@pytest.mark.parametrize("window", [rollout.MINUTE, datetime.timedelta(seconds=3),
                                    datetime.timedelta(seconds=1)])
@pytest.mark.parametrize("rate", [1, 5, 11, 12, 13, 20, 100, 1000])
def test_any_sliding_minute_admits_at_most_the_rate(rate: int,
                                                    window: datetime.timedelta) -> None:
    r = spec(maximumPerMinute=rate)
    counts = rollout.Counts(targeted=10**9)
    ticks = _ticks(window, 4)
    assert len(ticks) == 4 * rollout.TICKS
    assert ticks[rollout.TICKS] == T0 + window  # no drift: window 1 opens on time
    allowed = [rollout.plan_allowance(r, T0, t, counts, window) for t in ticks]
    # Nothing is admitted between ticks: just before a tick, the previous allowance.
    before = [rollout.plan_allowance(r, T0, t - datetime.timedelta(microseconds=1), counts,
                                     window) for t in ticks[1:]]
    assert before == allowed[:-1]
    assert allowed[0] >= 1  # the first tick admits at least one
    admitted = [allowed[0]] + [b - a for a, b in itertools.pairwise(allowed)]
    assert all(a >= 0 for a in admitted)
    # No burst: a tick admits a twelfth of the rate, rounded up (whole windows: the rate).
    assert max(admitted) == -(-rate // rollout.TICKS)
    # Any minute [t, t + window) holds 12 consecutive ticks: at most the rate. (Whole-window
    # bursts admitted twice the rate across a window boundary.)
    assert max(sum(admitted[i:i + rollout.TICKS])
               for i in range(len(admitted) - rollout.TICKS + 1)) <= rate
    # The window totals are unchanged: the rate, window by window.
    ends = [rollout.plan_allowance(r, T0, T0 + (i + 1) * window
                                   - datetime.timedelta(microseconds=1), counts, window)
            for i in range(4)]
    assert ends == [rate, 2 * rate, 3 * rate, 4 * rate]


@pytest.mark.parametrize(("minutes", "expected"), [
    (0, 5 / 60),  # the next tick, not the next window
    (7 / 60, 10 / 60),
    (55 / 60, 1),  # the last tick of a window: the next window opens
    (1.01, 1 + 5 / 60),
    (-1, 5 / 60),
])
def test_next_tick(minutes: float, expected: float) -> None:
    got = rollout.plan_next_window(spec(maximumPerMinute=10), T0, at(minutes))
    assert abs((got - at(expected)).total_seconds()) < 1e-3


@pytest.mark.parametrize(("rate", "wakes_per_window"), [
    (1, 1), (2, 2), (5, 5), (6, 6), (11, 11), (12, 12), (13, 12), (1000, 12)])
def test_a_slow_rate_wakes_only_when_its_allowance_grows(rate: int,
                                                         wakes_per_window: int) -> None:
    r = spec(maximumPerMinute=rate)
    counts = rollout.Counts(targeted=10**9)
    wakes = [T0]
    while wakes[-1] < T0 + 3 * rollout.MINUTE:
        wakes.append(rollout.plan_next_window(r, T0, wakes[-1]))
    wakes = wakes[:-1]
    assert len(wakes) == 3 * wakes_per_window
    allowed = [rollout.plan_allowance(r, T0, t, counts) for t in wakes]
    # Each wake admits more than the one before, and nothing grows between two wakes:
    # the allowance a microsecond before a wake is the previous wake's.
    assert all(a < b for a, b in itertools.pairwise(allowed))
    before = [rollout.plan_allowance(r, T0, t - datetime.timedelta(microseconds=1), counts)
              for t in wakes[1:]]
    assert before == allowed[:-1]
    assert allowed[-1] == 3 * rate  # the last growth of the third window: its whole rate


def _window_ends(r: deployment.Rollout, counts: rollout.Counts, n: int) -> list[int]:
    return [rollout.plan_allowance(r, T0, at(m + 0.99), counts) for m in range(n)]


def test_exponential_after_notified() -> None:
    r = spec(exponentialRate={"baseRatePerMinute": 10, "incrementFactor": 2,
                              "rateIncreaseCriteria": {"numberOfNotifiedThings": 10}})
    counts = rollout.Counts(targeted=10_000)
    # w0 adds 10 (k=0) → 10; w1 adds 20 (k=1) → 30; w2 adds 80 (k=3) → 110;
    # w3 runs at 10 * 2**11 and reaches every targeted device.
    assert _window_ends(r, counts, 4) == [10, 30, 110, 10_000]
    # Within a window the rate decided at its start is spread over the ticks:
    # w2 at 80 a minute, 7 (ceil 80/12) after its first tick, 14 after its second.
    got = [rollout.plan_allowance(r, T0, at(2 + s / 60), counts) for s in (0, 5, 59)]
    assert got == [30 + 7, 30 + 14, 110]
    assert rollout.plan_allowance(r, T0, at(0), counts) == 1  # begins at once
    # w3: 20,480 a minute, 1,707 a tick.
    assert rollout.plan_allowance(r, T0, at(3), counts) == 110 + 1707


def test_exponential_after_succeeded_waits_for_successes() -> None:
    r = spec(exponentialRate={"baseRatePerMinute": 5, "incrementFactor": 2,
                              "rateIncreaseCriteria": {"numberOfSucceededThings": 5}})
    none_ok = rollout.Counts(targeted=1000, succeeded=0)
    five_ok = rollout.Counts(targeted=1000, succeeded=5)
    assert _window_ends(r, none_ok, 3) == [5, 10, 15]
    # Five successes: every window from the one where 5 were allowed runs at 10 a minute.
    assert _window_ends(r, five_ok, 3) == [5, 15, 25]
    assert rollout.plan_allowance(r, T0, at(1), five_ok) == 5 + 1  # ceil(10 / 12)


def test_short_windows_for_tests() -> None:
    second = datetime.timedelta(seconds=1)
    r = spec(maximumPerMinute=24)
    counts = rollout.Counts(targeted=200)
    # 3 windows of 24, and 7 of 12 ticks (a tick is 1/12 s) of the fourth: 14.
    assert rollout.plan_allowance(r, T0, T0 + 3.5 * second, counts, window=second) == 86
    assert (rollout.plan_next_window(r, T0, T0 + 3.5 * second, window=second)
            == T0 + 3 * second + 7 * (second / 12))
    assert (rollout.plan_next_window(r, T0, T0 + 3.99 * second, window=second)
            == T0 + 4 * second)


@pytest.mark.parametrize(("criteria", "counts", "trips"), [
    ([], rollout.Counts(failed=100), False),
    ([{"failureType": "FAILED", "thresholdPercentage": 10, "minNumberOfExecutedThings": 5}],
     rollout.Counts(succeeded=3, failed=1), False),  # 4 executed < 5
    ([{"failureType": "FAILED", "thresholdPercentage": 10, "minNumberOfExecutedThings": 5}],
     rollout.Counts(succeeded=9, failed=1), True),  # 10% of 10 reaches the threshold
    ([{"failureType": "FAILED", "thresholdPercentage": 10, "minNumberOfExecutedThings": 5}],
     rollout.Counts(succeeded=10, failed=1), False),  # 9.09%
    ([{"failureType": "FAILED", "thresholdPercentage": 10, "minNumberOfExecutedThings": 5}],
     rollout.Counts(succeeded=5, timed_out=5), False),  # wrong type
    ([{"failureType": "TIMED_OUT", "thresholdPercentage": 50}],
     rollout.Counts(succeeded=5, timed_out=5), True),
    ([{"failureType": "ALL", "thresholdPercentage": 20, "minNumberOfExecutedThings": 10}],
     rollout.Counts(succeeded=8, failed=1, timed_out=1), True),
    ([{"failureType": "ALL", "thresholdPercentage": 20, "minNumberOfExecutedThings": 10}],
     rollout.Counts(notified=100, succeeded=7, failed=1, timed_out=1), False),  # 9 executed
])
def test_abort_criteria(criteria: list[dict[str, Any]], counts: rollout.Counts,
                        trips: bool) -> None:
    parsed = [deployment.AbortCriterion.model_validate(c) for c in criteria]
    assert (rollout.resolve_abort(parsed, counts) is not None) is trips


def test_per_device_timeout() -> None:
    r = spec(timeoutMinutes=10)
    assert not rollout.is_timed_out(r, T0, at(9.9))
    assert rollout.is_timed_out(r, T0, at(10))
    assert not rollout.is_timed_out(spec(), T0, at(10_000))
    assert rollout.plan_timeout_at(r, T0) == at(10)
    assert rollout.plan_timeout_at(spec(), T0) is None
