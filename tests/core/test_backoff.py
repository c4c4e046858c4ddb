"""The one backoff: capped exponential steps, half fixed and half random (equal jitter)."""

from __future__ import annotations

import pytest

from hedgerow.core import backoff


@pytest.mark.parametrize(("attempt", "base", "cap", "rand", "delay"), [
    (0, 1.0, 60.0, 0.0, 0.5),      # the first retry: half of the base at least
    (0, 1.0, 60.0, 0.999, 0.9995),  # … and less than the base
    (1, 1.0, 60.0, 0.5, 1.5),      # step 2 s: 1 s fixed + half of 1 s
    (5, 1.0, 60.0, 0.0, 16.0),     # step 32 s
    (6, 1.0, 60.0, 0.0, 30.0),     # step 64 s, capped at 60 s
    (6, 1.0, 60.0, 1.0, 60.0),     # never above the cap
    (10_000, 0.5, 30.0, 0.25, 18.75),  # a very long outage: still the cap, no overflow
    (-3, 1.0, 60.0, 0.0, 0.5),     # a negative attempt is the first
    (3, 0.25, 30.0, 0.0, 1.0),     # another base: step 2 s
])
def test_resolve_delay(attempt: int, base: float, cap: float, rand: float,
                       delay: float) -> None:
    assert backoff.resolve_delay(attempt, base, cap, lambda: rand) == pytest.approx(delay)


@pytest.mark.parametrize(("attempt", "step"), [(0, 1.0), (1, 2.0), (5, 32.0), (6, 60.0),
                                               (200, 60.0)])
def test_resolve_step_is_the_unjittered_ceiling(attempt: int, step: float) -> None:
    assert backoff.resolve_step(attempt, 1.0, 60.0) == step


def test_jitter_spreads_devices_that_retry_together() -> None:
    draws = iter([0.0, 0.5, 0.9])
    delays = [backoff.resolve_delay(4, 1.0, 60.0, lambda: next(draws)) for _ in range(3)]
    assert delays == [8.0, 12.0, pytest.approx(15.2)]
