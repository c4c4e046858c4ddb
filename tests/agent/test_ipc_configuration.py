"""Configuration and state over IPC through the OFFICIAL client
(`awsiot.greengrasscoreipc.clientv2`), from components the agent runs as `nobody`
(tests/agent/ipc_config_component.py): GetConfiguration (own and another's, key paths,
Greengrass's answer for a single value), UpdateConfiguration (own only, merge at a key
path, the timestamp rule, durable across a kill -9 of the agent, in the device status),
SubscribeToConfigurationUpdate (own and another's, events with the changed key path, for
the component's own updates and for a deployment's), and UpdateState ERRORED handled as
a crash."""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hedgerow.core import documents

from .conftest import AgentProcess, rc, wait_for
from .ipc_support import PYTHON, Client, sdk

HERE = pathlib.Path(__file__).resolve().parent
__all__ = ["sdk"]  # the fixture (ipc_support)


@pytest.fixture(scope="module")
def config_sdk(sdk: pathlib.Path) -> Iterator[pathlib.Path]:
    shutil.copy(HERE / "ipc_config_component.py", sdk)
    yield sdk


def component(sdk: pathlib.Path, name: str, configuration: dict[str, Any],
              round_: int = 1) -> documents.ResolvedComponent:
    run = (f"exec env PYTHONPATH={sdk} ROUND={round_} {PYTHON} -u "
           f"{sdk}/ipc_config_component.py")
    return rc(name, run, configuration=configuration)


def events(client: Client, kind: str) -> list[dict[str, Any]]:
    return client.events(kind)


def tagged(client: Client, tag: str) -> dict[str, Any]:
    return client.wait(lambda e: e.get("tag") == tag and e["event"] != "subscribed", tag)


def changes(client: Client) -> list[tuple[str, list[str]]]:
    return [(e["component"], e["keyPath"]) for e in client.events("changed")]


CONFIG = {"batch": 10, "nested": {"x": 1, "y": "keep"}, "greeting": "hi"}


def test_get_update_subscribe_and_the_timestamp_rule(agent: AgentProcess,
                                                     config_sdk: pathlib.Path) -> None:
    agent.deploy(component(config_sdk, "cfg.a", CONFIG),
                 component(config_sdk, "cfg.b", {"port": 8080}))
    agent.wait_states({"cfg.a": "RUNNING", "cfg.b": "RUNNING"}, 30)
    a, b = Client(agent, "cfg.a"), Client(agent, "cfg.b")
    a.connected()
    b.connected()

    a.command("get", tag="all")
    a.command("get", keyPath=["nested"], tag="nested")
    a.command("get", keyPath=["nested", "x"], tag="leaf")  # Greengrass: {last key: value}
    a.command("get", component="cfg.b", keyPath=["port"], tag="other")
    a.command("get", keyPath=["missing"], tag="missing")
    a.command("get", component="cfg.nobody", tag="no-such")
    assert tagged(a, "all")["value"] == CONFIG
    assert tagged(a, "nested")["value"] == {"x": 1, "y": "keep"}
    assert tagged(a, "leaf")["value"] == {"x": 1}
    assert (tagged(a, "other")["component"], tagged(a, "other")["value"]) == (
        "cfg.b", {"port": 8080})
    assert tagged(a, "missing")["error"] == "ResourceNotFoundError"
    assert "cfg.a has no configuration at /missing" in tagged(a, "missing")["message"]
    assert tagged(a, "no-such")["error"] == "ResourceNotFoundError"

    # Subscribers: a to its own /nested, b to a's whole configuration.
    a.command("subscribe", keyPath=["nested"], tag="sub")
    b.command("subscribe", component="cfg.a", tag="sub")
    a.wait(lambda e: e["event"] == "subscribed", "a subscribed")
    b.wait(lambda e: e["event"] == "subscribed", "b subscribed")

    now = time.time()
    a.command("update", keyPath=["nested"], value={"x": 2, "z": [1, 2]}, timestamp=now,
              tag="update")
    assert tagged(a, "update")["event"] == "updated"
    a.wait(lambda e: e["event"] == "changed" and e["keyPath"] == ["nested", "z"],
           "the event for /nested/z")
    assert sorted(changes(a)) == [("cfg.a", ["nested", "x"]), ("cfg.a", ["nested", "z"])]
    b.wait(lambda e: e["event"] == "changed" and e["keyPath"] == ["nested", "z"],
           "b hears of a's change")
    a.command("get", keyPath=["nested"], tag="after")
    assert tagged(a, "after")["value"] == {"x": 2, "y": "keep", "z": [1, 2]}

    # The timestamp rule: an older update never overwrites a newer value.
    a.command("update", keyPath=["nested"], value={"x": 0}, timestamp=now - 60, tag="stale")
    stale = tagged(a, "stale")
    assert stale["error"] == "FailedUpdateConditionCheckError", stale
    assert "older than the value at /nested" in stale["message"]
    # b may read a's configuration, but not change it.
    b.command("update", keyPath=["batch"], value={"x": 1}, tag="b-own")
    assert tagged(b, "b-own")["event"] == "updated"  # its own: fine
    a.command("get", keyPath=["nested", "x"], tag="still")
    assert tagged(a, "still")["value"] == {"x": 2}

    # The device status names what each component changed itself.
    def own(name: str) -> list[str]:
        comps = {c["name"]: c for c in agent.status().get("components", [])}
        return list(comps.get(name, {}).get("ownConfiguration") or [])
    agent.passes(2)
    assert own("cfg.a") == ["/nested/x", "/nested/z"]
    assert own("cfg.b") == ["/batch/x"]
    report = documents.StatusReport.model_validate(agent.status())
    assert report.components[0].own_configuration == ["/nested/x", "/nested/z"]
    details = json.loads(agent.cli("component", "details", "cfg.a", "-o", "json").stdout)
    assert details["ownConfiguration"] == ["/nested/x", "/nested/z"]
    assert details["configuration"]["nested"] == {"x": 2, "y": "keep", "z": [1, 2]}


def test_own_changes_survive_a_kill_9_and_a_deployment_applies_on_top(
        agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    agent.deploy(component(config_sdk, "cfg.k", CONFIG))
    agent.wait_states({"cfg.k": "RUNNING"}, 30)
    k = Client(agent, "cfg.k")
    k.connected()
    k.command("update", keyPath=["nested"], value={"x": 5}, tag="update")
    assert tagged(k, "update")["event"] == "updated"
    # The change was durable when the call returned: kill -9 right away.
    agent.kill9()
    saved = json.loads((agent.root / "state" / "configuration.json").read_text())
    assert saved["cfg.k"]["values"] == {"nested\x1fx": 5}
    agent.start()
    # The component restarts for a new run step (its SDK connection died with the old
    # agent), connects again and reads its own value back.
    agent.deploy(component(config_sdk, "cfg.k", CONFIG, round_=2))
    wait_for(lambda: len(k.events("connected")) == 2, 30, "cfg.k connected again")
    k.command("get", keyPath=["nested", "x"], tag="after-kill")
    assert tagged(k, "after-kill")["value"] == {"x": 5}
    pid = agent.record("cfg.k")["process"]["pid"]

    # A deployment that changes other keys: no restart (no step uses them), an event
    # for each changed key, and the component's own value stays.
    k.command("subscribe", tag="sub")
    k.wait(lambda e: e["event"] == "subscribed" and e.get("tag") == "sub", "subscribed")
    changed = {**CONFIG, "batch": 20, "nested": {"x": 1, "y": "new"}}
    agent.deploy(component(config_sdk, "cfg.k", changed, round_=2))
    k.wait(lambda e: e["event"] == "changed" and e["keyPath"] == ["nested", "y"],
           "the deployment's change of /nested/y")
    k.wait(lambda e: e["event"] == "changed" and e["keyPath"] == ["batch"],
           "the deployment's change of /batch")
    assert agent.record("cfg.k")["process"]["pid"] == pid
    k.command("get", keyPath=["nested"], tag="merged")
    assert tagged(k, "merged")["value"] == {"x": 5, "y": "new"}

    # A deployment that changes the key the component changed: the deployment wins.
    agent.deploy(component(config_sdk, "cfg.k", {**changed, "nested": {"x": 9, "y": "new"}},
                           round_=2))
    k.wait(lambda e: e["event"] == "changed" and e["keyPath"] == ["nested", "x"],
           "the deployment's change of /nested/x")
    k.command("get", keyPath=["nested", "x"], tag="deployed")
    assert tagged(k, "deployed")["value"] == {"x": 9}
    agent.passes(2)
    assert not [c for c in agent.status()["components"] if c.get("ownConfiguration")]


def test_update_state_errored_is_handled_as_a_crash(agent: AgentProcess,
                                                    config_sdk: pathlib.Path) -> None:
    agent.deploy(component(config_sdk, "cfg.e", {}))
    agent.wait_states({"cfg.e": "RUNNING"}, 30)
    e = Client(agent, "cfg.e")
    e.connected()
    first = agent.record("cfg.e")["process"]["pid"]
    e.command("state", state="RUNNING", tag="running")
    assert tagged(e, "running")["event"] == "state"
    e.command("state", state="BORED", tag="bad")
    assert tagged(e, "bad")["error"] == "InvalidArgumentsError"
    e.command("state", state="ERRORED", tag="errored")
    wait_for(lambda: agent.record("cfg.e")["errors"], 15, "the error counted")
    assert "reported ERRORED over IPC" in agent.log.read_text()
    # Recovered after the backoff, as after a crash: a new process, RUNNING again.
    wait_for(lambda: agent.states() == {"cfg.e": "RUNNING"}
             and (agent.record("cfg.e").get("process") or {}).get("pid") not in (None, first),
             30, f"recovered (last: {agent.states()})")
    wait_for(lambda: len(e.events("connected")) == 2, 30, "connected again")


def test_a_component_rejects_its_new_configuration_and_the_deployment_rolls_back(
        agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    good = agent.deploy(component(config_sdk, "cfg.v", {"mode": "fast"}))
    agent.wait_states({"cfg.v": "RUNNING"}, 30)
    wait_for(lambda: agent.outcome(good) == "SUCCEEDED", 30, "the first revision")
    v = Client(agent, "cfg.v")
    v.connected()
    pid = agent.record("cfg.v")["process"]["pid"]
    v.command("validate", key="mode", reject="broken", tag="validate")
    v.wait(lambda e: e["event"] == "subscribed", "subscribed to validation")

    # Accepted: applied without a restart.
    slow = agent.deploy(component(config_sdk, "cfg.v", {"mode": "slow"}))
    v.wait(lambda e: e["event"] == "validating" and e["value"] == "slow", "asked (slow)")
    wait_for(lambda: agent.outcome(slow) == "SUCCEEDED", 30, "the accepted revision")
    assert agent.record("cfg.v")["spec"]["configuration"] == {"mode": "slow"}

    # Rejected: the deployment fails with the component's own reason and rolls back; the
    # component never saw the rejected configuration and was not restarted.
    bad = agent.deploy(component(config_sdk, "cfg.v", {"mode": "broken"}))
    asked = v.wait(lambda e: e["event"] == "validating" and e["value"] == "broken",
                   "asked (broken)")
    assert asked["deployment"] == bad.revision and not asked["ok"]
    wait_for(lambda: agent.outcome(bad) == "ROLLED_BACK", 30, "rolled back")
    report = agent.status()["deployment"]
    assert "cfg.v rejected its new configuration: mode may not be 'broken'" in \
        report["reason"]
    assert report["rolledBackTo"] == slow.revision
    agent.passes(2)
    assert agent.record("cfg.v")["spec"]["configuration"] == {"mode": "slow"}
    assert agent.record("cfg.v")["process"]["pid"] == pid
    v.command("get", keyPath=["mode"], tag="mode")
    assert tagged(v, "mode")["value"] == {"mode": "slow"}


def test_a_rejected_configuration_is_never_applied_with_do_nothing(
        agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    agent.deploy(component(config_sdk, "cfg.d", {"mode": "fast"}),
                 failure_handling="DO_NOTHING")
    agent.wait_states({"cfg.d": "RUNNING"}, 30)
    d = Client(agent, "cfg.d")
    d.connected()
    d.command("validate", key="mode", reject="broken", tag="validate")
    d.wait(lambda e: e["event"] == "subscribed", "subscribed to validation")
    bad = agent.deploy(component(config_sdk, "cfg.d", {"mode": "broken"}),
                       failure_handling="DO_NOTHING")
    wait_for(lambda: agent.outcome(bad) == "FAILED", 30, "failed")
    # Not applied now, nor after the agent restarts (the component cannot be asked:
    # its connection died with the agent; the refusal stands).
    agent.kill9()
    agent.start()
    agent.passes(3)
    assert agent.outcome(bad) == "FAILED"
    assert agent.record("cfg.d")["spec"]["configuration"] == {"mode": "fast"}


def test_a_silent_validator_holds_a_revision_only_for_the_timeout(
        agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    agent.deploy(component(config_sdk, "cfg.s", {"mode": "fast"}))
    agent.wait_states({"cfg.s": "RUNNING"}, 30)
    s = Client(agent, "cfg.s")
    s.connected()
    s.command("validate", key="mode", reject="never", silent=True, tag="validate")
    s.wait(lambda e: e["event"] == "subscribed", "subscribed to validation")
    pid = agent.record("cfg.s")["process"]["pid"]
    ref = documents.DeploymentRef.model_validate(
        {"name": "cloud", "policies": {"configurationValidation": {"timeoutSeconds": 3}}})
    doc = documents.render_desired_state(agent.thing, [ref], [
        component(config_sdk, "cfg.s", {"mode": "slow"})])
    target = agent.root / "desired" / "desired.json"
    target.with_suffix(".tmp").write_bytes(documents.render_bytes(doc))
    target.with_suffix(".tmp").replace(target)
    s.wait(lambda e: e["event"] == "validating", "asked")
    # Meanwhile the status says what the revision waits for, and nothing changed.
    wait_for(lambda: (agent.status().get("deployment") or {}).get("reason") ==
             "waiting for cfg.s to validate its new configuration", 10, "the wait shown")
    assert agent.record("cfg.s")["spec"]["configuration"] == {"mode": "fast"}
    # Silence is not a veto: applied once the 3 s are over, without a restart.
    wait_for(lambda: agent.outcome(doc) == "SUCCEEDED", 30, "applied after the timeout")
    assert agent.record("cfg.s")["spec"]["configuration"] == {"mode": "slow"}
    assert agent.record("cfg.s")["process"]["pid"] == pid
    assert "did not validate its configuration" in agent.log.read_text()


def test_a_restart_renders_its_steps_with_the_components_own_configuration(
        agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    """As on Greengrass: `{configuration:/x}` is filled in from the configuration the
    component sees -- its own UpdateConfiguration included -- when it (re)starts; the
    update itself restarts nothing, and a deployment's change of that key wins."""
    run = ('echo "started with mode {configuration:/tuning/mode}"; '
           f"exec env PYTHONPATH={config_sdk} {PYTHON} -u "
           f"{config_sdk}/ipc_config_component.py")

    def deploy(mode: str) -> None:
        agent.deploy(rc("cfg.r", run, configuration={"tuning": {"mode": mode}}))

    log = agent.root / "logs" / "cfg.r.log"

    def started() -> list[str]:
        text = log.read_text() if log.exists() else ""
        return [line.rsplit(" ", 1)[-1] for line in text.splitlines()
                if "started with mode" in line]

    deploy("fast")
    agent.wait_states({"cfg.r": "RUNNING"}, 30)
    r = Client(agent, "cfg.r")
    r.connected()
    wait_for(lambda: started() == ["fast"], 10, f"started with fast (log: {started()})")
    pid = agent.record("cfg.r")["process"]["pid"]

    r.command("update", keyPath=["tuning"], value={"mode": "slow"}, tag="update")
    assert tagged(r, "update")["event"] == "updated"
    agent.passes(2)
    assert agent.record("cfg.r")["process"]["pid"] == pid  # an own change restarts nothing
    assert started() == ["fast"]

    restarted = agent.cli("component", "restart", "cfg.r")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: started() == ["fast", "slow"], 30,
             f"the restart rendered with its own value (log: {started()})")
    wait_for(lambda: (agent.record("cfg.r").get("process") or {}).get("pid") not in (None, pid),
             30, "a new process")
    wait_for(lambda: len(r.events("connected")) == 2, 30, "connected again")

    # A deployment that changes the same key: the rendered step changes, so it restarts,
    # and the deployment's value wins over the component's own.
    deploy("turbo")
    wait_for(lambda: started() == ["fast", "slow", "turbo"], 30,
             f"the deployment's value won (log: {started()})")
    wait_for(lambda: len(r.events("connected")) == 3, 30, "connected a third time")
    r.command("get", keyPath=["tuning", "mode"], tag="now")
    assert tagged(r, "now")["value"] == {"mode": "turbo"}
