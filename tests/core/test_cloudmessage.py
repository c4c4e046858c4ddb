"""Pure: components' cloud messages — request checks, the full spool's decisions, and
message expiry counted across time spent spooled (hedgerow.core.cloudmessage)."""

from __future__ import annotations

import pytest

from hedgerow.core import cloudmessage as cm

P = cm.SpoolPolicy


@pytest.mark.parametrize(("sizes", "size", "held", "policy", "decision"), [
    ([10, 10], 10, (0, 0), P.REFUSE_NEW, cm.SpoolDecision(True)),
    ([10, 10, 10], 10, (0, 0), P.REFUSE_NEW, cm.SpoolDecision(False)),  # count bound
    ([10, 10, 10], 10, (0, 0), P.DROP_OLDEST, cm.SpoolDecision(True, 1)),
    ([40, 10], 60, (0, 0), P.REFUSE_NEW, cm.SpoolDecision(False)),      # byte bound
    ([40, 10], 60, (0, 0), P.DROP_OLDEST, cm.SpoolDecision(True, 1)),
    ([20, 20], 100, (0, 0), P.DROP_OLDEST, cm.SpoolDecision(True, 2)),
    ([], 101, (0, 0), P.DROP_OLDEST, cm.SpoolDecision(False)),         # never fits
    ([10], 10, (2, 20), P.DROP_OLDEST, cm.SpoolDecision(True, 1)),     # in flight stays
    ([], 10, (3, 30), P.DROP_OLDEST, cm.SpoolDecision(False)),         # nothing to drop
])
def test_full_spool_decisions(sizes: list[int], size: int, held: tuple[int, int],
                              policy: cm.SpoolPolicy, decision: cm.SpoolDecision) -> None:
    assert cm.plan_spool(sizes, size, 3, 100, policy, held) == decision


def test_the_default_policy_never_breaks_a_promise() -> None:
    assert cm.DEFAULT_SPOOL_POLICY is P.REFUSE_NEW


def test_expiry_counts_the_time_spent_spooled() -> None:
    m = cm.CloudMessage(topic="a", message_expiry_s=60)
    assert cm.resolve_expiry(m, 0.5) == 60
    assert cm.resolve_expiry(m, 45.2) == 15
    assert not cm.is_expired(m, 59.9) and cm.is_expired(m, 60)
    forever = cm.CloudMessage(topic="a")
    assert cm.resolve_expiry(forever, 1e9) is None and not cm.is_expired(forever, 1e9)


@pytest.mark.parametrize(("message", "problem"), [
    (cm.CloudMessage(topic="a/+"), "may not contain the wildcards"),
    (cm.CloudMessage(topic="a/#"), "may not contain the wildcards"),
    (cm.CloudMessage(topic=""), "empty"),
    (cm.CloudMessage(topic="a\0b"), "NUL"),
    (cm.CloudMessage(topic="x" * 1025), "longer than 1024"),
    (cm.CloudMessage(topic="a", response_topic="r/#"), "responseTopic"),
    (cm.CloudMessage(topic="a", payload=b"x" * (cm.MAX_PAYLOAD_BYTES + 1)), "packet limit"),
    (cm.CloudMessage(topic="a", user_properties=[("k", "v")] * 65), "user properties"),
    (cm.CloudMessage(topic="a", content_type="c" * 1025), "contentType"),
    (cm.CloudMessage(topic="a", correlation_data=b"c" * 1025), "correlationData"),
])
def test_bad_requests_say_why(message: cm.CloudMessage, problem: str) -> None:
    found = cm.resolve_message_problem(message)
    assert found is not None and problem in found


def test_a_message_round_trips_through_its_spool_form() -> None:
    m = cm.CloudMessage(topic="a/b", payload=b"\0\xff", qos=1, retain=True,
                        user_properties=[("k", "v"), ("k", "w")], message_expiry_s=9,
                        payload_format=0, content_type="x", correlation_data=b"\x01")
    assert cm.CloudMessage.model_validate_json(m.model_dump_json()) == m
    assert cm.resolve_message_problem(m) is None
    assert cm.resolve_topic_problem("a/+/#", wildcards=True) is None
