"""A device with cloud AND local deployments reports the revision the controller
published, so the controller counts it as Applied (a rollout does not wait for it in
vain); the merged document it actually runs is reported apart, as its local additions."""

from __future__ import annotations

import datetime
import json

from hedgerow.core import base, coredevice, documents, fleet
from tests.support.deployments import local_deployment
from tests.support.wait import wait_for

from .conftest import THING, AgentProcess, rc

LOCAL = local_deployment(THING)


def applied_condition(report: dict[str, object], published: str) -> base.Condition:
    """What the controller makes of the report (its pure fold, as the operator calls it)."""
    status = fleet.render_report(
        coredevice.CoreDeviceStatus(desired_revision=published),
        documents.StatusReport.model_validate(report), datetime.datetime.now(datetime.UTC))
    [applied] = [c for c in status.conditions if c.type == fleet.APPLIED]
    return applied


def test_cloud_and_local_report_the_published_revision(agent: AgentProcess) -> None:
    (agent.root / "deployments" / "by-hand.yaml").write_text(LOCAL)
    cloud = agent.deploy(rc("from-cloud"))
    agent.wait_states({"from-cloud": "RUNNING", "on-site": "RUNNING"})
    wait_for(lambda: (agent.status().get("deployment") or {}).get("outcome") == "SUCCEEDED",
             15, "the merged deployment to settle")
    report = agent.status()
    assert report["appliedRevision"] == cloud.revision
    assert report["desiredRevision"] == cloud.revision
    assert report["deployment"]["revision"] == cloud.revision
    # The local additions, apart: the merge runs both components, so it is another one.
    merged = report["localRevision"]
    assert merged and merged != cloud.revision
    listed = json.loads(agent.cli("deployment", "list", "-o", "json").stdout)
    [row] = [d for d in listed if d["revision"] == merged]
    assert (row["source"], row["cloudRevision"]) == ("cloud+local", cloud.revision)
    applied = applied_condition(report, cloud.revision)
    assert (applied.status, applied.reason) == (base.ConditionStatus.TRUE, "Succeeded")

    # A new cloud revision: the device moves on to it and reports it, merged again.
    newer = agent.deploy(rc("from-cloud", version="1.0.1"))
    wait_for(lambda: agent.status().get("appliedRevision") == newer.revision
             and (agent.status().get("deployment") or {}).get("outcome") == "SUCCEEDED",
             15, "the newer cloud revision, applied")
    report = agent.status()
    assert report["localRevision"] not in (None, merged, newer.revision)
    assert applied_condition(report, newer.revision).status is base.ConditionStatus.TRUE


def test_cloud_only_reports_no_local_revision(agent: AgentProcess) -> None:
    cloud = agent.deploy(rc("only-cloud"))
    wait_for(lambda: agent.outcome(cloud) == "SUCCEEDED", 15, "the cloud deployment")
    report = agent.status()
    assert report["appliedRevision"] == cloud.revision
    assert report.get("localRevision") is None
