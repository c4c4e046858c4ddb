"""Which CoreDevice status writes a report is worth (hedgerow.core.liveness)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from hedgerow.core import liveness

P = liveness.Priority
MINUTE = datetime.timedelta(minutes=1)


def status(seen: str | None = "2026-01-01T00:00:00Z", health: str = "HEALTHY",
           applied: tuple[str, str] | None = ("Unknown", "Notified")) -> dict[str, Any]:
    body: dict[str, Any] = {"health": health, "appliedRevision": "r1"}
    if seen is not None:
        body["lastSeen"] = seen
    if applied is not None:
        body["conditions"] = [{"type": "Applied", "status": applied[0], "reason": applied[1],
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    return body


@pytest.mark.parametrize(("written", "body", "expected"), [
    # never written: written, an outcome most urgently
    (None, status(), P.VISIBLE),
    (None, status(applied=("True", "Succeeded")), P.COUNTING),
    # a heartbeat: nothing but lastSeen, within the granularity -> no write
    (status(), status(), None),
    (status(), status(seen="2026-01-01T00:00:59Z"), None),
    # lastSeen due (or first seen, or unreadable, or the device clock jumped back)
    (status(), status(seen="2026-01-01T00:01:00Z"), P.LIVENESS),
    (status(seen=None), status(), P.LIVENESS),
    (status(seen="garbage"), status(), P.LIVENESS),
    (status(seen="2026-01-01T00:05:00Z"), status(), P.LIVENESS),
    # anything a user sees, with or without a new lastSeen
    (status(), status(health="UNHEALTHY"), P.VISIBLE),
    (status(), status(seen="2026-01-01T00:00:01Z", health="UNHEALTHY"), P.VISIBLE),
    # an outcome for the revision: rollout counting
    (status(), status(applied=("True", "Succeeded")), P.COUNTING),
    (status(), status(applied=("False", "Failed")), P.COUNTING),
    (status(applied=("True", "Succeeded")), status(applied=("False", "RolledBack")),
     P.COUNTING),
    # back to Unknown (a new revision published) is visible, not an outcome
    (status(applied=("True", "Succeeded")), status(), P.VISIBLE),
])
def test_priority(written: dict[str, Any] | None, body: dict[str, Any],
                  expected: liveness.Priority | None) -> None:
    assert liveness.resolve_priority(written, body, MINUTE) is expected


def test_priorities_order_outcomes_first() -> None:
    assert sorted([P.LIVENESS, P.VISIBLE, P.COUNTING]) == [P.COUNTING, P.VISIBLE, P.LIVENESS]
