"""Folding device status reports: stale, foreign and malformed reports change nothing;
the Applied condition follows the outcome for the desired revision only."""

from __future__ import annotations

import datetime
import json
from typing import Any

from hedgerow.controller import broker, operator
from hedgerow.core import broker as core_broker
from hedgerow.core import coredevice, documents, fleet, liveness

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def report(thing: str = "gw-1", sequence: int = 1, revision: str = "r1",
           outcome: str = "SUCCEEDED", **extra: Any) -> bytes:
    return json.dumps({
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "StatusReport", "thing": thing,
        "sequence": sequence, "time": "2026-01-01T00:00:00Z", "agentVersion": "1.2.3",
        "platform": {"os": "linux", "arch": "aarch64"}, "health": "HEALTHY",
        "appliedRevision": revision,
        "components": [{"name": "A", "version": "1.0.0", "state": "RUNNING"}],
        "deployment": {"revision": revision, "outcome": outcome}, **extra}).encode()


def controller() -> operator.Controller:
    c = operator.Controller(operator.Settings(broker=broker.BrokerSettings("mqtt://127.0.0.1:1")))
    published = fleet.Publish("gw-1", "r1", b"{}", {"default/d": 1})
    c.devices["gw-1"] = fleet.render_notified(coredevice.CoreDeviceStatus(), published, NOW)
    return c


def applied(c: operator.Controller) -> tuple[str | None, str | None]:
    cond = next(x for x in c.devices["gw-1"].conditions if x.type == "Applied")
    return cond.status.value, cond.reason


def test_a_report_is_folded_into_a_small_status() -> None:
    c = controller()
    c.fold_report("gw-1", report())
    status = c.devices["gw-1"]
    assert applied(c) == ("True", "Succeeded")
    assert status.platform == documents.PlatformInfo(os="linux", arch="aarch64")
    assert status.agent_version == "1.2.3" and status.applied_revision == "r1"
    assert [(x.name, x.state.value) for x in status.components] == [("A", "RUNNING")]
    assert c.writer.priority_of("gw-1") is liveness.Priority.COUNTING  # an outcome
    assert c.wake.is_set()  # Applied and platform changed: the fleet is re-planned
    assert len(json.dumps(status.to_dict())) < 2048


def test_stale_foreign_and_malformed_reports_change_nothing() -> None:
    c = controller()
    c.fold_report("gw-1", report(sequence=5))
    before = c.devices["gw-1"]
    c.fold_report("gw-1", report(sequence=4, outcome="FAILED"))  # older than the last
    c.fold_report("gw-1", report(sequence=5, outcome="FAILED"))  # a QoS 1 redelivery
    c.fold_report("gw-1", report(thing="gw-2", sequence=9, outcome="FAILED"))  # wrong topic
    c.fold_report("gw-1", b"{not json")
    c.fold_report("gw-9", report(thing="gw-9", sequence=1))  # not a registered device
    after = c.devices["gw-1"]
    # Nothing but the condition that says reports were refused (and why).
    assert after.model_copy(update={"conditions": [
        x for x in after.conditions if x.type != "ReportsAccepted"]}) == before
    assert c.refused["gw-1"] == {"Invalid": 2}
    assert "gw-9" not in c.devices


def test_outcomes_for_other_revisions_do_not_count() -> None:
    c = controller()
    c.fold_report("gw-1", report(revision="r0", outcome="FAILED"))
    assert applied(c) == ("Unknown", "Notified")
    c.fold_report("gw-1", report(sequence=2, revision="r1", outcome="ROLLED_BACK"))
    assert applied(c) == ("False", "RolledBack")


def test_status_topic_parsing() -> None:
    assert core_broker.resolve_thing_of_status_topic("hedgerow/things/gw-1/status") == "gw-1"
    assert core_broker.resolve_thing_of_status_topic("hedgerow/things/gw-1/desired") is None
    assert core_broker.resolve_thing_of_status_topic("hedgerow/things/a/b/status") is None
    assert core_broker.resolve_thing_of_status_topic("hedgerow/things/GW_1/status") is None
    assert core_broker.resolve_thing_of_status_topic("other/things/gw-1/status") is None


def test_reports_over_rate_or_bounds_are_refused_counted_and_shown_once() -> None:
    from hedgerow.core import limits

    c = controller()
    for i in range(limits.REPORT_BURST + 5):  # all at one instant
        c.fold_report("gw-1", report(sequence=i + 1), clock=100.0)
    assert c.sequences["gw-1"] == limits.REPORT_BURST
    assert c.refused["gw-1"] == {"RateLimited": 5}
    cond = next(x for x in c.devices["gw-1"].conditions if x.type == "ReportsAccepted")
    assert (cond.status.value, cond.reason) == ("False", "RateLimited")
    # Over the bytes: refused before parsing, whatever it says.
    c.fold_report("gw-1", report(sequence=99, agentVersion="v" * limits.MAX_REPORT_BYTES),
                  clock=200.0)
    assert c.refused["gw-1"]["TooLarge"] == 1 and c.sequences["gw-1"] == limits.REPORT_BURST
    # Quiet for a full bucket: accepted again, and the condition says so.
    c.fold_report("gw-1", report(sequence=100), clock=200.0 + limits.REPORT_BURST
                  * limits.REPORT_INTERVAL_SECONDS)
    cond = next(x for x in c.devices["gw-1"].conditions if x.type == "ReportsAccepted")
    assert (cond.status.value, cond.reason) == ("True", "Accepted")
    assert c.sequences["gw-1"] == 100
