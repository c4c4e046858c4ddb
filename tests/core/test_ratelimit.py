"""The token bucket reports are accepted by: a burst, then one per interval."""

from __future__ import annotations

from hedgerow.core import ratelimit


def _run(times: list[float], burst: int = 3, interval: float = 1.0) -> list[bool]:
    bucket = None
    out = []
    for t in times:
        ok, bucket = ratelimit.plan_take(bucket, t, burst, interval)
        out.append(ok)
    return out


def test_a_burst_then_one_per_interval() -> None:
    assert _run([0, 0, 0, 0, 0]) == [True, True, True, False, False]
    assert _run([0, 0, 0, 0.5, 1.0, 1.1, 2.0]) == [True, True, True, False, True, False,
                                                    True]


def test_a_quiet_source_gets_its_burst_back_but_no_more() -> None:
    assert _run([0, 0, 0, 100, 100, 100, 100]) == [True, True, True, True, True, True, False]


def test_a_clock_going_back_refills_nothing() -> None:
    assert _run([10, 10, 10, 5, 5]) == [True, True, True, False, False]
