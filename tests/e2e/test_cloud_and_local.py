"""A device that runs local deployments beside the controller's, end to end: the real
controller publishes (signed, over mTLS) to a real agent that merges a local deployment
over it; the device reports the revision the controller published, so its CoreDevice is
Applied and the Deployment's rollout counts it Succeeded — it does not wait for a
revision the controller never sent until the device's timeout."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Fleet, examples, wait_for
from tests.support.deployments import local_deployment

HELLO, TELEMETRY, ON_SITE = "com.example.HelloWorld", "com.example.Telemetry", "on-site"


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str]:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c["status"], c["reason"]
    return "", ""


def test_a_cloud_and_local_device_counts_as_applied(fleet: Fleet) -> None:
    g1 = fleet.agents["gateway-1"]
    (g1.root / "deployments" / "on-site.yaml").write_text(local_deployment(
        g1.thing, ON_SITE, deployment="on-site", script="sleep 600"))
    wait_for(lambda: g1.states().get(ON_SITE) == ("1.0.0", "RUNNING"), 30,
             "the local deployment to run")
    fleet.apply(examples())

    def applied() -> bool:
        s = fleet.device_status(g1)
        return (s.get("desiredRevision") is not None
                and s.get("appliedRevision") == s.get("desiredRevision")
                and condition({"status": s}, "Applied") == ("True", "Succeeded"))
    wait_for(applied, 60, f"{g1.thing} to be Applied with its local deployment")
    status = fleet.device_status(g1)
    assert {c["name"]: c["state"] for c in status["components"]} == {
        HELLO: "RUNNING", TELEMETRY: "RUNNING", ON_SITE: "RUNNING"}
    # What the device runs is the merge: reported apart, never as the applied revision.
    report = g1.status()
    assert report["appliedRevision"] == status["desiredRevision"]
    assert report["localRevision"] not in (None, status["desiredRevision"])
    wait_for(lambda: condition(fleet.deployment("factory-1-apps"), "Ready")
             == ("True", "Succeeded"), 60, "factory-1-apps to be Ready")
