"""A device whose component defers its update (IPC DeferComponentUpdate) shows it on its
CoreDevice: Applied is Unknown with reason Deferred and the component's message; one
whose component rejected its configuration shows RolledBack with the component's words."""

from __future__ import annotations

import datetime

import pytest

from hedgerow.core import coredevice, documents, fleet

NOW = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)


@pytest.mark.parametrize(("outcome", "reason", "expected"), [
    ("IN_PROGRESS", "deferred by com.example.Batch: finishing a batch",
     ("Unknown", "Deferred")),
    ("IN_PROGRESS", "", ("Unknown", "InProgress")),
    ("ROLLED_BACK", "cfg.v rejected its new configuration: mode may not be 'broken'",
     ("False", "RolledBack")),
])
def test_the_devices_reason_is_on_the_applied_condition(
        outcome: str, reason: str, expected: tuple[str, str]) -> None:
    report = documents.StatusReport(
        thing="gw-1", time=NOW, agent_version="0.1.0",
        platform=documents.PlatformInfo(os="linux", arch="amd64"),
        health=documents.Health.HEALTHY,
        deployment=documents.DeploymentOutcome(revision="r2", outcome=outcome,
                                               reason=reason))
    status = fleet.render_report(coredevice.CoreDeviceStatus(desired_revision="r2"),
                                 report, NOW)
    [applied] = [c for c in status.conditions if c.type == fleet.APPLIED]
    assert (applied.status.value, applied.reason, applied.message) == (*expected, reason)
