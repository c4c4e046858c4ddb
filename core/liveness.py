"""Liveness apart from state: which CoreDevice status writes a device's report is worth.

Kubernetes moved node heartbeats out of Node status (into Leases) because a write per
heartbeat per node was most of the API server's load. The same holds here: a device
reports every minute even when nothing changed, and at 10,000 devices a write per report
is 170 writes/s for nothing a user sees. So a report is written when something a user
would see changed (health, revisions, components, conditions, platform, ...), with the
urgency of what changed, and ``lastSeen`` alone is written at a coarse granularity (the
controller's ``--last-seen-interval``, 5 minutes by default, like the kubelet's
``nodeStatusReportFrequency``). Every write carries the newest ``lastSeen`` anyway.

Priorities order a backlog of writes: what changes rollout counting (an outcome in the
``Applied`` condition) first, then other visible changes, then liveness alone.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from typing import Any, Final

LAST_SEEN: Final = "lastSeen"
APPLIED: Final = "Applied"
DEFAULT_GRANULARITY: Final = datetime.timedelta(minutes=5)


class Priority(enum.IntEnum):
    """Lower is more urgent."""

    COUNTING = 0  # an outcome (Applied True/False): rollout counts and abort criteria
    VISIBLE = 1  # anything else a user sees
    LIVENESS = 2  # lastSeen alone, due at its granularity


def resolve_priority(
    written: Mapping[str, Any] | None, body: Mapping[str, Any],
    granularity: datetime.timedelta = DEFAULT_GRANULARITY,
) -> Priority | None:
    """How urgent writing ``body`` (a CoreDevice status as written: camelCase) is, given
    the status last written (None: never); None when it need not be written at all."""
    if written is None:
        return _visible(None, body)
    if not is_same_state(written, body):
        return _visible(written, body)
    if written.get(LAST_SEEN) == body.get(LAST_SEEN):
        return None
    old, new = _when(written.get(LAST_SEEN)), _when(body.get(LAST_SEEN))
    # A device clock that jumped (or a first lastSeen) is written: it is news.
    if old is None or new is None or abs(new - old) >= granularity:
        return Priority.LIVENESS
    return None


def is_same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two statuses differ in nothing but lastSeen."""
    keys = (a.keys() | b.keys()) - {LAST_SEEN}
    return all(a.get(k) == b.get(k) for k in keys)


def _visible(written: Mapping[str, Any] | None, body: Mapping[str, Any]) -> Priority:
    before, after = _applied(written or {}), _applied(body)
    if after != before and after[0] in ("True", "False"):
        return Priority.COUNTING
    return Priority.VISIBLE


def _applied(status: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for c in status.get("conditions") or ():
        if c.get("type") == APPLIED:
            return c.get("status"), c.get("reason")
    return None, None


def _when(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
