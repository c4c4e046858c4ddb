"""A device whose component defers its update (IPC DeferComponentUpdate) shows it on its
CoreDevice: Applied is Unknown with reason Deferred and the component's message."""

from __future__ import annotations

import datetime

import pytest

from hedgerow.core import coredevice, documents, fleet

NOW = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)


@pytest.mark.parametrize(("reason", "expected"), [
    ("deferred by com.example.Batch: finishing a batch", "Deferred"),
    ("", "InProgress"),
])
def test_a_deferral_is_the_applied_conditions_reason(reason: str, expected: str) -> None:
    report = documents.StatusReport(
        thing="gw-1", time=NOW, agent_version="0.1.0",
        platform=documents.PlatformInfo(os="linux", arch="amd64"),
        health=documents.Health.HEALTHY,
        deployment=documents.DeploymentOutcome(revision="r2", outcome="IN_PROGRESS",
                                               reason=reason))
    status = fleet.render_report(coredevice.CoreDeviceStatus(desired_revision="r2"),
                                 report, NOW)
    [applied] = [c for c in status.conditions if c.type == fleet.APPLIED]
    assert (applied.status.value, applied.reason, applied.message) == (
        "Unknown", expected, reason)
