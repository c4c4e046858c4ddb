"""Rollout arithmetic with a fake clock: rates, exponential ramps, abort criteria, timeouts."""

from __future__ import annotations

import datetime
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
    ({"maximumPerMinute": 10}, 0, 500, 10),  # the first window opens at the start
    ({"maximumPerMinute": 10}, 0.99, 500, 10),
    ({"maximumPerMinute": 10}, 1, 500, 20),
    ({"maximumPerMinute": 10}, 5.5, 500, 60),
    ({"maximumPerMinute": 10}, 100, 25, 25),  # capped at the targeted devices
    ({"maximumPerMinute": 10}, -1, 500, 10),  # a clock step backwards never goes negative
])
def test_maximum_per_minute(fields: dict[str, Any], minutes: float, targeted: int,
                            expected: int) -> None:
    counts = rollout.Counts(targeted=targeted)
    assert rollout.plan_allowance(spec(**fields), T0, at(minutes), counts) == expected


def test_exponential_after_notified() -> None:
    r = spec(exponentialRate={"baseRatePerMinute": 10, "incrementFactor": 2,
                              "rateIncreaseCriteria": {"numberOfNotifiedThings": 10}})
    counts = rollout.Counts(targeted=10_000)
    # w0 adds 10 (k=0) → 10; w1 adds 20 (k=1) → 30; w2 adds 80 (k=3) → 110;
    # w3 runs at 10 * 2**11 and reaches every targeted device.
    got = [rollout.plan_allowance(r, T0, at(m), counts) for m in (0, 1, 2, 3)]
    assert got == [10, 30, 110, 10_000]


def test_exponential_after_succeeded_waits_for_successes() -> None:
    r = spec(exponentialRate={"baseRatePerMinute": 5, "incrementFactor": 2,
                              "rateIncreaseCriteria": {"numberOfSucceededThings": 5}})
    none_ok = rollout.Counts(targeted=1000, succeeded=0)
    five_ok = rollout.Counts(targeted=1000, succeeded=5)
    assert [rollout.plan_allowance(r, T0, at(m), none_ok) for m in (0, 1, 2)] == [5, 10, 15]
    # Five successes: every window from the one where 5 were allowed runs at 10 a minute.
    assert [rollout.plan_allowance(r, T0, at(m), five_ok) for m in (0, 1, 2)] == [5, 15, 25]


def test_short_windows_for_tests() -> None:
    second = datetime.timedelta(seconds=1)
    r = spec(maximumPerMinute=20)
    counts = rollout.Counts(targeted=200)
    assert rollout.plan_allowance(r, T0, T0 + 3.5 * second, counts, window=second) == 80
    assert rollout.plan_next_window(r, T0, T0 + 3.5 * second, window=second) == T0 + 4 * second


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
