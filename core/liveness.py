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

What was written is kept as a ``Written`` fingerprint, not as the body: a digest of
everything but ``lastSeen``, ``lastSeen`` itself and the ``Applied`` outcome, which is
all the comparisons need (~0.3 KB per device instead of ~1.9 KB: at 10,000 devices the
difference is 16 MB, docs/scale.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import sys
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


@dataclasses.dataclass(frozen=True, slots=True)
class Written:
    """What is kept of a status written (see ``fingerprint``)."""

    state: bytes  # a digest of the body without lastSeen
    last_seen: Any  # the body's lastSeen, as written
    applied: tuple[str | None, str | None]  # the Applied condition's (status, reason)


def fingerprint(body: Mapping[str, Any]) -> Written:
    """What to keep of a status written (JSON-shaped, as sent) to compare others with:
    two bodies have equal fingerprints when they are equal (a 128-bit digest: a
    collision is not a concern)."""
    status, reason = _applied(body)
    return Written(_digest(body), body.get(LAST_SEEN),
                   (None if status is None else sys.intern(status),
                    None if reason is None else sys.intern(reason)))


def _digest(body: Mapping[str, Any]) -> bytes:
    """Equal for bodies equal in everything but lastSeen (keys in any order)."""
    rest = {k: v for k, v in body.items() if k != LAST_SEEN}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def resolve_priority(
    written: Written | None, body: Mapping[str, Any],
    granularity: datetime.timedelta = DEFAULT_GRANULARITY,
) -> Priority | None:
    """How urgent writing ``body`` (a CoreDevice status as written: camelCase) is, given
    the status last written (None: never); None when it need not be written at all."""
    if written is None:
        return _visible((None, None), body)
    if written.state != _digest(body):
        return _visible(written.applied, body)
    if written.last_seen == body.get(LAST_SEEN):
        return None
    old, new = _when(written.last_seen), _when(body.get(LAST_SEEN))
    # A device clock that jumped (or a first lastSeen) is written: it is news.
    if old is None or new is None or abs(new - old) >= granularity:
        return Priority.LIVENESS
    return None


def _visible(before: tuple[str | None, str | None], body: Mapping[str, Any]) -> Priority:
    after = _applied(body)
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
