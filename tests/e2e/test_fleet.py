"""The fleet end to end, one story: the examples converge on three real agents; a relabel
moves devices between groups; the broker goes away and comes back; a new version rolls out
device by device; a broken version aborts and rolls back; the channel stays secure.

The steps build on each other (one fleet per module) and run in file order.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import pathlib
import ssl
import time
from typing import Any

import pytest

from tests.e2e.conftest import HEDGEROW, SUFFIX, Agent, Fleet, examples, run, wait_for
from tests.identity.conftest import MqttClient
from tests.support import mosquitto
from tests.support.mosquitto import Mosquitto
from tests.support.passes import wait_passes

HELLO, TELEMETRY = "com.example.HelloWorld", "com.example.Telemetry"
# How OpenSSL names the alert a broker sends for a client certificate it does not trust.
STRANGER_ALERTS = {"TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_DECRYPT_ERROR",
                   "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}
RUNNING = "RUNNING"


def converged(fleet: Fleet, agent: Agent, expected: dict[str, tuple[str, str]]) -> bool:
    """The CoreDevice says HEALTHY, applied == desired and these component states."""
    s = fleet.device_status(agent)
    return (s.get("health") == "HEALTHY"
            and s.get("desiredRevision") is not None
            and s.get("appliedRevision") == s.get("desiredRevision")
            and {c["name"]: (c["version"], c["state"]) for c in s.get("components", [])}
            == expected)


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str]:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c["status"], c["reason"]
    return "", ""


def deployment_when(fleet: Fleet, type_: str, expected: tuple[str, str],
                    ) -> dict[str, Any] | None:
    d = fleet.deployment("factory-1-apps")
    return d if condition(d, type_) == expected else None


def component_roots(agent: Agent, name: str) -> list[int]:
    """Top-level processes of one component (its children share its environment)."""
    from tests.agent.conftest import pids_with_marker

    mine = set()
    for pid in pids_with_marker(agent.root):
        try:
            env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HEDGEROW_COMPONENT={name}".encode() in env:
            mine.add(pid)
    roots = []
    for pid in mine:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid not in mine:
            roots.append(pid)
    return roots


def both(version: str = "1.0.0") -> dict[str, tuple[str, str]]:
    return {HELLO: (version, RUNNING), TELEMETRY: ("1.0.0", RUNNING)}


def test_a_examples_converge(fleet: Fleet) -> None:
    g1, g2, g3 = fleet.agents.values()
    fleet.apply(examples())
    for agent in (g1, g2):
        wait_for(functools.partial(converged, fleet, agent, both()), 60,
                 f"{agent.thing} to converge")
        assert agent.states() == both()
    # gateway-3 is in no group that has a process deployment: it runs nothing, healthily.
    wait_for(lambda: fleet.device_status(g3).get("health") == "HEALTHY", 30,
             "gateway-3 to report")
    assert fleet.device_status(g3).get("components", []) == []
    wait_for(lambda: condition(fleet.deployment("factory-1-apps"), "Ready")
             == ("True", "Succeeded"), 30, "factory-1-apps to be Ready")
    table = fleet.kubectl("get", "coredevices")
    print(table)
    for agent in (g1, g2):
        line = next(x for x in table.splitlines() if x.startswith(agent.thing))
        assert "HEALTHY" in line
    for agent in fleet.agents.values():
        status = fleet.device_status(agent)
        # The certificate `device register` wrote survives the controller's status writes,
        # and the expiry the connector reports becomes a condition.
        assert status["certificate"]["pem"].startswith("-----BEGIN CERTIFICATE-----")
        assert condition({"status": status}, "CertificateValid") == ("True", "Valid")
    assert "factory-1-apps" in fleet.kubectl("get", "hedgerow")
    # The configuration update reached the component (through the recipe variables).
    assert f"Hello from factory 1 from {g1.thing}" in g1.cli("logs", "get", HELLO)


def test_b_relabel_moves_devices_between_groups(fleet: Fleet) -> None:
    g1, g2, g3 = fleet.agents.values()
    before = g1.pids()
    fleet.kubectl("label", "coredevice", g2.thing, "site=factory-2", "--overwrite")
    wait_for(lambda: converged(fleet, g2, {}), 30, "gateway-2 to drop its components")
    assert g2.states() == {}
    assert component_roots(g2, HELLO) == [] and component_roots(g2, TELEMETRY) == []
    fleet.kubectl("label", "coredevice", g3.thing, "site=factory-1", "--overwrite")
    wait_for(lambda: converged(fleet, g3, both()), 30, "gateway-3 to join factory-1")
    assert g1.pids() == before  # untouched
    wait_for(lambda: (fleet.deployment("factory-1-apps").get("status") or {}).get("targeted")
             == 2, 15, "factory-1-apps to target gateway-1 and gateway-3")


def test_c_broker_outage(fleet: Fleet) -> None:
    g1, g2, g3 = fleet.agents.values()
    port = fleet.broker.port
    running = g3.pids()
    fleet.broker.stop()
    # A device reboots while the broker is away: agent and workloads go, and come back
    # from the last desired document on disk.
    g1.stop()
    g1.kill_components()
    wait_for(lambda: not component_roots(g1, HELLO), 10, "gateway-1's workloads to go")
    g1.start()
    wait_for(lambda: g1.states() == both(), 30, "gateway-1 to run its last desired state")
    assert g1.connector().get("lastRejection") is None
    # Elsewhere, workloads keep running with the broker down (the agent looked again).
    wait_passes(g3.root)
    assert g3.pids() == running and g3.states() == both()
    restarted = datetime.datetime.now(datetime.UTC)
    fleet.broker.start(port=port)

    def caught_up(agent: Agent) -> bool:
        seen = str(fleet.device_status(agent).get("lastSeen") or "")
        return bool(seen) and datetime.datetime.fromisoformat(
            seen.replace("Z", "+00:00")) >= restarted - datetime.timedelta(seconds=1) and \
            converged(fleet, agent, both())

    # gateway-1 went through a restart offline: its new reports reach the cluster. The
    # others changed nothing, so there is nothing to catch up (heartbeats follow).
    wait_for(lambda: caught_up(g1), 60, "gateway-1's status to catch up")
    assert converged(fleet, g2, {}) and converged(fleet, g3, both())
    # Nothing lost or duplicated: exactly one process tree per component.
    for agent in (g1, g3):
        for name in (HELLO, TELEMETRY):
            assert len(component_roots(agent, name)) == 1, (agent.thing, name)


def _component(version: str, install: str | None = None) -> dict[str, Any]:
    doc = next(d for d in examples() if d["kind"] == "Component"
               and d["spec"]["name"] == HELLO)
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = f"com.example.helloworld-{version}"
    doc["spec"]["version"] = version
    if install is not None:
        doc["spec"]["manifests"][0]["lifecycle"]["install"] = {"script": install}
    return doc


def _deployment(version: str, per_minute: int, min_executed: int = 5) -> dict[str, Any]:
    doc = copy.deepcopy(next(d for d in examples() if d["kind"] == "Deployment"
                             and d["metadata"]["name"] == "factory-1-apps"))
    doc["spec"]["components"][0]["version"] = version
    doc["spec"]["rollout"]["maximumPerMinute"] = per_minute
    doc["spec"]["rollout"]["abortCriteria"][0]["minNumberOfExecutedThings"] = min_executed
    return doc


def test_d_new_version_rolls_out_device_by_device(fleet: Fleet) -> None:
    g1, _, g3 = fleet.agents.values()
    fleet.apply([_component("1.1.0")])
    # One device per rollout window (the controller runs with 2 s "minutes").
    fleet.apply([_deployment("1.1.0", per_minute=1)])
    first: dict[str, float] = {}
    started = time.monotonic()

    def done() -> bool:
        for agent in (g1, g3):
            if agent.thing not in first and converged(fleet, agent, both("1.1.0")):
                first[agent.thing] = time.monotonic() - started
        return len(first) == 2

    wait_for(done, 60, "1.1.0 on both factory-1 devices", interval=0.05)
    order = sorted(first, key=first.__getitem__)
    assert order == sorted(first), first  # in thing-name order
    assert abs(first[g3.thing] - first[g1.thing]) >= 1.0, first  # not at once
    d = wait_for(lambda: deployment_when(fleet, "Ready", ("True", "Succeeded")), 30,
                 "factory-1-apps Ready")
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
    assert d["status"]["succeeded"] == 2


def test_e_failing_install_aborts_and_rolls_back(fleet: Fleet) -> None:
    g1, _, g3 = fleet.agents.values()
    fleet.apply([_component("1.2.0", install="echo 'install failed' >&2; exit 3")])
    fleet.apply([_deployment("1.2.0", per_minute=100, min_executed=1)])
    d = wait_for(lambda: deployment_when(fleet, "Ready", ("False", "RolloutAborted")), 60,
                 "the rollout to abort")
    assert condition(d, "Stalled")[0] == "True"
    for agent in (g1, g3):
        wait_for(functools.partial(converged, fleet, agent, both("1.1.0")), 60,
                 f"{agent.thing} back on 1.1.0")
        assert agent.states() == both("1.1.0")
    status = fleet.deployment("factory-1-apps")["status"]
    assert status["rolledBack"] >= 1 and status["failed"] >= 1, status
    events = json.loads(fleet.kubectl("get", "events", "-n", "default", "-o", "json"))
    assert ("Warning", "RolloutAborted") in {
        (e.get("type"), e.get("reason")) for e in events["items"]
        if e["involvedObject"]["name"] == "factory-1-apps"}


def test_f_security(fleet: Fleet) -> None:
    g1, g2, g3 = fleet.agents.values()
    b = fleet.broker_dir
    ident = g1.root / "identity"
    # A tampered desired document (here published with the controller's own identity,
    # as a compromised path would) is rejected; the device keeps its state.
    desired = g1.root / "desired" / "desired.json"
    original = desired.read_bytes()
    doc = json.loads(original)
    doc["components"][0].setdefault("configuration", {})["message"] = "pwned"
    controller = MqttClient(fleet.broker_url, b / "ca.pem", b / "controller.pem",
                            b / "controller.key", "hedgerow_controller_test").connect()
    try:
        topic = f"hedgerow/things/{g1.thing}/desired"
        controller.client.publish(topic, json.dumps(doc).encode(), qos=1,
                                  retain=True).wait_for_publish(10)
        wait_for(lambda: g1.connector().get("lastRejection"), 20, "the rejection")
        assert desired.read_bytes() == original
        assert g1.states() == both("1.1.0")
        controller.client.publish(topic, original, qos=1, retain=True).wait_for_publish(10)
    finally:
        controller.client.disconnect()
        controller.client.loop_stop()
    # A device certificate reads only its own desired topic (a short session: the broker
    # gives the client id of the certificate's CN, so it borrows gateway-2's session).
    spy = MqttClient(fleet.broker_url, ident / "ca.pem",
                     g2.root / "identity" / "device.pem", g2.root / "identity" / "device.key",
                     g2.thing).connect()
    try:
        spy.subscribe(f"hedgerow/things/{g3.thing}/desired")
        spy.subscribe(f"hedgerow/things/{g2.thing}/desired")
        # One connection delivers in order: gateway-3's document, had the broker let it
        # through, would have come before gateway-2's (subscribed second).
        wait_for(lambda: spy.messages, 10, "gateway-2's own retained document")
        assert {m.topic for m in spy.messages} == {f"hedgerow/things/{g2.thing}/desired"}
    finally:
        spy.client.disconnect()
        spy.client.loop_stop()
    # A certificate from another CA cannot connect at all, and the broker says so. The
    # same client code with gateway-1's real certificate is accepted (so the refusal is
    # about the certificate, not the client): CONNACK (0x20), reason code 0 (success).
    ca, own = b / "ca.pem", g1.root / "identity"
    accepted = mosquitto.raw_connect(fleet.broker.port, ca, own / "device.pem",
                                     own / "device.key", g1.thing)
    assert accepted[0] == 0x20 and accepted[3] == 0, accepted.hex()
    with Mosquitto(tls=True) as other:  # only for its CA and a client certificate
        cert, key = other.client_cert(g1.thing)
        # TLS 1.2 checks the client certificate inside the handshake: a fatal alert
        # (unknown CA, or a signature that does not verify under a same-named CA).
        with pytest.raises(ssl.SSLError, match="ALERT") as refused:
            mosquitto.raw_connect(fleet.broker.port, ca, cert, key, g1.thing,
                                  tls_max=ssl.TLSVersion.TLSv1_2)
        assert refused.value.reason in STRANGER_ALERTS, refused.value
        # TLS 1.3 (what clients pick by default) checks it after the client's side of
        # the handshake: the connection is torn down at once, with no CONNACK.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            mosquitto.raw_connect(fleet.broker.port, ca, cert, key, g1.thing)
    # The fleet is still fine afterwards.
    wait_for(lambda: converged(fleet, g1, both("1.1.0")), 30, "gateway-1 still converged")


def test_g_gitops_registration(fleet: Fleet) -> None:
    """The CSR committed as spec.csr; the controller (holding the fleet CA) signs it into
    status.certificate; `hedgerow device bundle` packages it; the device installs it."""
    agent = Agent(fleet.home, "gateway-4")
    fleet.agents["gateway-4"] = agent  # so teardown cleans it up
    agent.dir.mkdir(parents=True)
    csr = run([*HEDGEROW, "agent", "init", "--root", str(agent.root),
               "--thing", agent.thing]).stdout
    fleet.apply([{"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
                  "metadata": {"name": agent.thing, "labels": {"site": f"lab-{SUFFIX}"}},
                  "spec": {"namespace": "default", "csr": csr}}])
    wait_for(lambda: fleet.device_status(agent).get("certificate"), 30,
             "the controller to sign the CSR")
    bundle = agent.dir / "bundle.json"
    run([*HEDGEROW, "device", "bundle", agent.thing, "--broker-url", fleet.broker_url,
         "--ca-dir", str(fleet.ca_dir), "--kubeconfig", fleet.kubeconfig,
         "--out", str(bundle)])
    out = run([*HEDGEROW, "agent", "install-bundle", "--root", str(agent.root),
               "--thing", agent.thing, str(bundle)]).stdout
    assert f"installed the certificate for {agent.thing}" in out
