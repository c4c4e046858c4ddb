"""A token bucket, as a value: how often something from an untrusted source is accepted.
Pure (the clock is an argument).

A bucket holds at most ``burst`` tokens and gains one every ``interval`` seconds; each
accepted event takes one. A source that is quiet for ``burst * interval`` seconds may send
``burst`` events at once; a source that never stops gets one per ``interval``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float  # the clock reading the tokens were counted at


def plan_take(bucket: Bucket | None, now: float, burst: int,
              interval: float) -> tuple[bool, Bucket]:
    """Whether one event at ``now`` is accepted, and the bucket after it. ``None`` is a
    full bucket (a source not seen before)."""
    if bucket is None:
        tokens = float(burst)
    else:
        elapsed = max(0.0, now - bucket.at)  # a clock that went back refills nothing
        tokens = min(float(burst), bucket.tokens + elapsed / interval)
    if tokens >= 1.0:
        return True, Bucket(tokens - 1.0, now)
    return False, Bucket(tokens, now)
