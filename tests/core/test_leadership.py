"""Leader election decisions: who acts, measured only on each replica's own clock."""

from __future__ import annotations

import datetime

from hedgerow.core import leadership

Rec = leadership.Record
Step = leadership.Step


def test_a_live_lease_of_another_is_waited_for_until_it_stops_changing() -> None:
    rec = Rec("a", duration_s=8, renew_time="t1")
    seen = leadership.plan_seen(None, rec, now=100.0)
    assert leadership.plan_step(seen, "b", 107.9) is Step.WAIT
    # Renewed (the record changed): its age starts again from when b saw the change.
    seen = leadership.plan_seen(seen, Rec("a", 8, renew_time="t2"), now=107.0)
    assert leadership.plan_step(seen, "b", 114.0) is Step.WAIT
    assert leadership.plan_step(seen, "b", 115.1) is Step.TAKE
    # The same record read again does not reset the age.
    assert leadership.plan_seen(seen, Rec("a", 8, renew_time="t2"), now=115.0) is seen


def test_own_free_and_missing_leases() -> None:
    assert leadership.plan_step(None, "a", 0.0) is Step.CREATE
    ours = leadership.plan_seen(None, Rec("a", 8), 0.0)
    assert leadership.plan_step(ours, "a", 1000.0) is Step.RENEW
    released = leadership.plan_seen(None, Rec("", 1), 0.0)
    assert leadership.plan_step(released, "b", 0.0) is Step.TAKE


def test_specs_written() -> None:
    now = datetime.datetime(2026, 12, 4, 3, 0, 0, 123456, tzinfo=datetime.UTC)
    seen = leadership.plan_seen(None, Rec("a", 8, transitions=3, acquire_time="then"), 0.0)
    taken = leadership.render_spec(Step.TAKE, seen, "b", 8, now)
    assert taken == {"holderIdentity": "b", "leaseDurationSeconds": 8,
                     "acquireTime": "2026-12-04T03:00:00.123456Z",
                     "renewTime": "2026-12-04T03:00:00.123456Z", "leaseTransitions": 4}
    renewed = leadership.render_spec(Step.RENEW, seen, "a", 8, now)
    assert renewed["acquireTime"] == "then" and renewed["leaseTransitions"] == 3
    assert leadership.render_spec(Step.CREATE, None, "a", 8, now)["leaseTransitions"] == 0
    assert leadership.resolve_record({"holderIdentity": 5, "leaseDurationSeconds": -1}) == (
        Rec(None, 15))
