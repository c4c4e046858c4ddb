"""How long to wait before retrying: one capped exponential backoff for every retry in
Hedgerow (reconnecting to the broker, rewriting a document on a full disk, dockerd that
went away, an image pull, a long-lived task of the agent, a failed pass, an ERRORED
component).

Pure: the random source is a parameter (`random.random` in the shells, a fixed value in
tests), so a delay is a function of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["resolve_delay", "resolve_step"]

# 2**62 seconds is beyond any cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 62


def resolve_step(attempt: int, base_s: float, cap_s: float) -> float:
    """The capped exponential step before retry number `attempt` (0: the first):
    `min(cap_s, base_s * 2**attempt)`, without jitter."""
    return float(min(cap_s, base_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT)))


def resolve_delay(attempt: int, base_s: float, cap_s: float,
                  rand: Callable[[], float]) -> float:
    """Equal jitter: half of the step fixed, the other half times `rand()` (in [0, 1)).
    Many devices that lost their network (or dockerd, or the registry) together must not
    come back in lock-step; and no wait is shorter than half its step."""
    step = resolve_step(attempt, base_s, cap_s)
    return step / 2 + rand() * step / 2
