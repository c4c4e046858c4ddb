"""Deployment outcome and ROLLBACK: re-applying the previous successful document."""

from __future__ import annotations

from hedgerow.core import component

from .conftest import AgentProcess, rc, wait_for


def test_failed_revision_rolls_back_to_the_last_good_one(agent: AgentProcess) -> None:
    good = agent.deploy(rc("a", "sleep 60"))
    agent.wait_states({"a": "RUNNING"})
    wait_for(lambda: agent.outcome(good) == "SUCCEEDED")
    bad_install = component.Lifecycle.model_validate(
        {"install": {"script": "exit 3"}, "run": {"script": "sleep 60"}})
    bad = agent.deploy(rc("a", "sleep 61"), rc("b", lifecycle=bad_install))
    wait_for(lambda: agent.outcome(bad) == "ROLLED_BACK", 15)
    outcome = agent.status()["deployment"]
    assert outcome["revision"] == bad.revision
    assert outcome["rolledBackTo"] == good.revision
    assert "b ERRORED: install exited with 3" in outcome["reason"]
    agent.wait_states({"a": "RUNNING"})
    assert agent.status()["appliedRevision"] == good.revision
    assert agent.record("a")["spec"]["lifecycle"]["run"]["script"] == "sleep 60"


def test_do_nothing_keeps_the_failed_revision(agent: AgentProcess) -> None:
    agent.deploy(rc("a"))
    agent.wait_states({"a": "RUNNING"})
    agent.deploy(rc("a"), rc("b", "exit 1"), failure_handling="DO_NOTHING")
    agent.wait_states({"a": "RUNNING", "b": "BROKEN"}, timeout=30)
    wait_for(lambda: agent.status()["deployment"]["outcome"] == "FAILED")


def test_artifact_digest_mismatch_fails_and_nothing_runs(agent: AgentProcess) -> None:
    payload = agent.root.parent / "tool.sh"
    payload.write_text("echo tool\n")
    artifact = component.Artifact(uri=f"file://{payload}", sha256="0" * 64)
    agent.deploy(rc("a", artifacts=[artifact]), failure_handling="DO_NOTHING")
    wait_for(lambda: (agent.status().get("deployment") or {}).get("outcome") == "FAILED")
    assert "sha256 mismatch" in agent.status()["deployment"]["reason"]
    assert agent.states() == {}
