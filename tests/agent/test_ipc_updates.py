"""SubscribeToComponentUpdates + DeferComponentUpdate through the OFFICIAL client, from a
component the agent runs as `nobody`: a revision that would replace a running component
waits while a subscriber defers (the status says who and why; the old process keeps
running), then goes on, and a post-update event follows; a subscriber that defers
forever holds it only for the deployment's componentUpdate timeout;
SKIP_NOTIFY_COMPONENTS does not ask."""

from __future__ import annotations

import pathlib
from typing import Any

from hedgerow.core import documents

from .conftest import AgentProcess, rc, wait_for
from .ipc_support import Client
from .test_ipc_configuration import component, config_sdk, sdk

__all__ = ["config_sdk", "sdk"]  # fixtures


def deploy(agent: AgentProcess, *components: documents.ResolvedComponent,
           **update: Any) -> documents.DesiredState:
    ref = documents.DeploymentRef.model_validate(
        {"name": "cloud", "policies": {"componentUpdate": update}})
    doc = documents.render_desired_state(agent.thing, [ref], list(components))
    target = agent.root / "desired" / "desired.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(documents.render_bytes(doc))
    tmp.replace(target)
    return doc


def reason(agent: AgentProcess, doc: documents.DesiredState) -> str:
    deployment = agent.status().get("deployment") or {}
    return str(deployment.get("reason", "")) if deployment.get("revision") == doc.revision \
        else ""


def test_a_component_defers_an_update_then_it_goes_on(agent: AgentProcess,
                                                      config_sdk: pathlib.Path) -> None:
    watcher = component(config_sdk, "upd.watcher", {})
    first = deploy(agent, watcher, rc("upd.worker", "sleep 600"))
    agent.wait_states({"upd.watcher": "RUNNING", "upd.worker": "RUNNING"}, 30)
    wait_for(lambda: agent.outcome(first) == "SUCCEEDED", 30, "the first revision")
    w = Client(agent, "upd.watcher")
    w.connected()
    w.command("updates", times=2, ms=1500, tag="sub")
    w.wait(lambda e: e["event"] == "subscribed", "subscribed")
    pid = agent.record("upd.worker")["process"]["pid"]

    second = deploy(agent, watcher, rc("upd.worker", "sleep 601", version="1.1.0"))
    w.wait(lambda e: e["event"] == "pre" and e["deployment"] == second.revision, "asked")
    wait_for(lambda: reason(agent, second) == "deferred by upd.watcher: finishing a batch",
             15, f"the deferral in the status (last: {agent.status().get('deployment')})")
    assert agent.outcome(second) == "IN_PROGRESS"
    assert agent.record("upd.worker")["process"]["pid"] == pid  # still the old one
    # Asked again after each deferral, then allowed: replaced, and told afterwards.
    w.wait(lambda e: e["event"] == "post" and e["deployment"] == second.revision,
           "the post-update event")
    assert [e["deferring"] for e in w.events("pre")] == [True, True, False]
    agent.wait_states({"upd.watcher": "RUNNING", "upd.worker": "RUNNING"}, 30)
    assert agent.record("upd.worker")["version"] == "1.1.0"
    assert agent.record("upd.worker")["process"]["pid"] != pid
    wait_for(lambda: agent.outcome(second) == "SUCCEEDED", 30, "the second revision")


def test_deferral_is_bounded_by_the_timeout_and_skip_notify_skips(
        agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    watcher = component(config_sdk, "upd.stubborn", {})
    first = deploy(agent, watcher, rc("upd.job", "sleep 600"))
    agent.wait_states({"upd.stubborn": "RUNNING", "upd.job": "RUNNING"}, 30)
    wait_for(lambda: agent.outcome(first) == "SUCCEEDED", 30, "the first revision")
    s = Client(agent, "upd.stubborn")
    s.connected()
    s.command("updates", times=1000, ms=60_000, tag="sub")
    s.wait(lambda e: e["event"] == "subscribed", "subscribed")

    second = deploy(agent, watcher, rc("upd.job", "sleep 601", version="2.0.0"),
                    timeoutSeconds=3)
    s.wait(lambda e: e["event"] == "pre" and e["deployment"] == second.revision, "asked")
    wait_for(lambda: agent.record("upd.job")["version"] == "2.0.0", 30,
             "replaced once the 3 s timeout ran out")
    assert "going on after 3s" in agent.log.read_text()

    third = deploy(agent, watcher, rc("upd.job", "sleep 602", version="3.0.0"),
                   action="SKIP_NOTIFY_COMPONENTS")
    wait_for(lambda: agent.record("upd.job")["version"] == "3.0.0", 30, "replaced")
    assert not [e for e in s.events("pre") if e["deployment"] == third.revision]
