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
    kept = None if written is None else liveness.fingerprint(written)
    assert liveness.resolve_priority(kept, body, MINUTE) is expected


@pytest.mark.parametrize(("written", "body", "same"), [
    (status(), status(), True),
    # key order is no difference (a body rendered again may order them otherwise)
    (status(), dict(reversed(status().items())), True),
    (status(), status(seen="2026-01-01T00:00:01Z"), False),
    (status(), status(seen=None), False),
    (status(), status(health="UNHEALTHY"), False),
    (status(), status(applied=("True", "Notified")), False),
    (status(), status(applied=None), False),
    (status(), {**status(), "components": []}, False),
    # a condition's own fields, past the few compared one by one
    (status(), {**status(), "conditions": [{**status()["conditions"][0], "message": "m"}]},
     False),
    ({"memberCount": 3}, {"memberCount": 3}, True),
    ({"memberCount": 3}, {"memberCount": 4}, False),
])
def test_fingerprints_are_equal_only_for_the_same_body(
        written: dict[str, Any], body: dict[str, Any], same: bool) -> None:
    assert (liveness.fingerprint(written) == liveness.fingerprint(body)) is same
    assert (written == body) is same  # what it stands for


def test_fingerprint_keeps_what_is_compared() -> None:
    kept = liveness.fingerprint(status(applied=("True", "Succeeded")))
    assert kept.last_seen == "2026-01-01T00:00:00Z"
    assert kept.applied == ("True", "Succeeded")
    assert liveness.fingerprint({}).applied == (None, None)


def test_priorities_order_outcomes_first() -> None:
    assert sorted([P.LIVENESS, P.VISIBLE, P.COUNTING]) == [P.COUNTING, P.VISIBLE, P.LIVENESS]
