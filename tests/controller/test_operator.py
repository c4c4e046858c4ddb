"""The controller against the real test API server and a real mosquitto, with plain MQTT
clients as devices."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hedgerow.core import documents
from tests.conftest import ROOT
from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.mqtt]

EXAMPLES = ROOT / "examples"


def condition(obj: dict[str, Any], type_: str = "Ready") -> tuple[str, str] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c["status"], c["reason"]
    return None


def retained(broker: Mosquitto, things: list[str], timeout: float = 10) -> dict[str, Any]:
    """What a device connecting now would get: the retained document of each thing."""
    got: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retained-reader")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic.split("/")[2],
                                                        json.loads(m.payload))
    client.connect("127.0.0.1", broker.port)
    for t in things:
        client.subscribe(f"hedgerow/things/{t}/desired", qos=1)
    client.loop_start()
    try:
        wait_for(lambda: set(got) >= set(things), timeout, f"retained documents of {things}")
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def test_examples_publish_the_right_documents_and_relabel_changes_state(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLES))
    controller_factory()
    docs = retained(broker, ["gateway-1", "gateway-2", "gateway-3"], timeout=60)
    for thing, doc in docs.items():
        parsed = documents.DesiredState.model_validate(doc)  # revision checked on parse
        assert parsed.thing == thing
    assert [c["name"] for c in docs["gateway-1"]["components"]] == [
        "com.example.HelloWorld", "com.example.Telemetry"]
    hello = docs["gateway-1"]["components"][0]
    assert hello["configuration"] == {"message": "Hello from factory 1", "intervalSeconds": 5}
    assert [c["name"] for c in docs["gateway-3"]["components"]] == ["com.example.WebStatus"]

    # The controller records what it published, and the group member counts.
    wait_for(lambda: cluster.get("coredevice", "gateway-1", None).get("status", {})
             .get("desiredRevision") == docs["gateway-1"]["revision"], 20, "desiredRevision")
    wait_for(lambda: cluster.get("thinggroup", "factory-1").get("status", {})
             .get("memberCount") == 2, 20, "memberCount 2")

    # Devices report success → the deployment becomes Ready.
    for thing in ("gateway-1", "gateway-2"):
        devices.report(thing, "SUCCEEDED")
    wait_for(lambda: condition(cluster.get("deployment", "factory-1-apps")) ==
             ("True", "Succeeded"), 30, "factory-1-apps Ready")
    device = cluster.get("coredevice", "gateway-1", None)["status"]
    assert device["health"] == "HEALTHY" and device["agentVersion"] == "0.1.0-test"
    assert device["appliedRevision"] == docs["gateway-1"]["revision"]
    assert len(json.dumps(device)) < 2048

    # Relabel gateway-3 into factory-1: it gets factory-1's apps instead of WebStatus.
    cluster.kubectl("label", "coredevice", "gateway-3", "site=factory-1", "--overwrite",
                    "hedgerow.dev/docker-")
    wait_for(lambda: set(devices.components("gateway-3")) ==
             {"com.example.HelloWorld", "com.example.Telemetry"}, 30, "relabelled gateway-3")

    # Deleting a device clears its retained document.
    cluster.kubectl("delete", "coredevice", "gateway-3")
    # An empty retained message is how MQTT removes a retained one.
    wait_for(lambda: "gateway-3" in devices.cleared, 30, "gateway-3's document cleared")


def test_conflicting_deployments_get_a_condition_and_publish_nothing(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLES))
    controller_factory()
    before = retained(broker, ["gateway-1"], timeout=60)["gateway-1"]
    component2 = {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
        "metadata": {"name": "hello-2", "namespace": "default"},
        "spec": {"name": "com.example.HelloWorld", "version": "2.0.0",
                 "manifests": [{"lifecycle": {"run": {"script": "echo 2"}}}]},
    }
    pin = {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "pin-hello-2", "namespace": "default"},
        "spec": {"target": {"thing": "gateway-1"},
                 "components": [{"name": "com.example.HelloWorld", "version": "2.0.0"}]},
    }
    cluster.apply(component2, pin)
    wait_for(lambda: condition(cluster.get("deployment", "pin-hello-2")) ==
             ("False", "VersionConflict"), 30, "VersionConflict on pin-hello-2")
    # The newcomer is refused; the deployment already running is not blamed for it.
    assert (condition(cluster.get("deployment", "factory-1-apps")) or ("", ""))[1] != (
        "VersionConflict")
    message = next(c["message"] for c in cluster.get("deployment", "pin-hello-2")["status"]
                   ["conditions"] if c["type"] == "Ready")
    assert "factory-1-apps" in message and "pin-hello-2" in message
    # gateway-1 keeps its last good document.
    assert devices.latest("gateway-1") == before

    # An unknown component version: InvalidSpec-style reason, nothing published.
    bad = {**pin, "metadata": {"name": "bad", "namespace": "default"},
           "spec": {"target": {"thing": "gateway-2"}, "priority": 5,
                    "components": [{"name": "com.example.Nope", "version": "1.0.0"}]}}
    cluster.apply(bad)
    wait_for(lambda: condition(cluster.get("deployment", "bad")) ==
             ("False", "UnknownComponent"), 30, "UnknownComponent on bad")
    assert devices.components("gateway-2") == {"com.example.HelloWorld": "1.0.0",
                                               "com.example.Telemetry": "1.0.0"}


def test_restart_republishes_nothing(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLES))
    first = controller_factory()
    wait_for(lambda: all(devices.latest(t) for t in ("gateway-1", "gateway-2", "gateway-3")),
             60, "three documents")
    wait_for(lambda: all(cluster.get("coredevice", t, None).get("status", {})
                         .get("desiredRevision") for t in ("gateway-1", "gateway-2",
                                                           "gateway-3")),
             20, "desiredRevision recorded")
    first.stop()
    count = devices.count()
    offset = len(first.output())
    second = controller_factory()
    line = wait_for(lambda: next((x for x in second.output()[offset:].splitlines()
                                  if "first pass:" in x), None), 60, "the second first pass")
    assert "3 devices, 0 documents to publish" in line
    # A change that touches one device proves the second controller is reconciling; it
    # must publish exactly that one document.
    before = (devices.latest("gateway-2") or {})["revision"]
    cluster.kubectl("label", "coredevice", "gateway-2", "site=elsewhere", "--overwrite")
    wait_for(lambda: devices.count() > count, 30, "a publish after relabel")
    # Back again: the controller's next publish is a marker. Anything else the restarted
    # controller published meanwhile would sit between the two (one connection, in order).
    cluster.kubectl("label", "coredevice", "gateway-2", "site=factory-1", "--overwrite")
    wait_for(lambda: devices.count() > count + 1, 30, "a publish after relabelling back")
    new = devices.messages[count:]
    assert [t for t, _, _ in new] == ["gateway-2", "gateway-2"], new
    # One document for the move, one for the move back (the one it had): no repeats.
    assert new[0][1]["revision"] not in (before, new[1][1]["revision"])
    assert new[1][1]["revision"] == before


def _app(version: str) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
            "metadata": {"name": f"app-{version}", "namespace": "default"},
            "spec": {"name": "App", "version": version,
                     "manifests": [{"lifecycle": {"run": {"script": f"app {version}"}}}]}}


def _rollout_deployment(version: str, rate: int) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"target": {"thingGroup": "fleet"},
                     "components": [{"name": "App", "version": version}],
                     "policies": {"failureHandling": "ROLLBACK"},
                     "rollout": {"maximumPerMinute": rate, "timeoutMinutes": 30,
                                 "abortCriteria": [{"failureType": "FAILED",
                                                    "thresholdPercentage": 10,
                                                    "minNumberOfExecutedThings": 10}]}}}


def test_rollout_of_200_devices_honours_the_rate_and_aborts_with_rollback(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    n, minute = 200, 3.0  # a rollout "minute" lasts 3 s in this test
    things = [f"dev-{i:03}" for i in range(n)]
    cluster.apply(
        _app("1.0.0"), _app("2.0.0"),
        {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "ThingGroup",
         "metadata": {"name": "fleet", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"fleet": "a"}}}},
        *({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
           "metadata": {"name": t, "labels": {"fleet": "a"}},
           "spec": {"namespace": "default"}} for t in things))
    # Version 1 works, version 2 fails on every device that gets it.
    devices.responder = lambda thing, doc: (
        "SUCCEEDED" if doc["components"] and doc["components"][0]["version"] == "1.0.0"
        else "FAILED")
    controller_factory("--rollout-minute", str(minute))

    # Generation 1: 100 per window, so two windows reach all 200.
    cluster.apply(_rollout_deployment("1.0.0", rate=100))
    wait_for(lambda: all(devices.components(t) == {"App": "1.0.0"} for t in things), 60,
             "all 200 devices on App 1.0.0")
    wait_for(lambda: condition(cluster.get("deployment", "app")) == ("True", "Succeeded"), 60,
             "generation 1 Ready")
    good = {t: devices.latest(t)["revision"] for t in things}  # type: ignore[index]
    first_window = [time.monotonic()]

    # Generation 2: 20 per window. The first 20 fail → abort → they roll back.
    mark = devices.count()
    cluster.apply(_rollout_deployment("2.0.0", rate=20))
    first_window[0] = time.monotonic()
    wait_for(lambda: condition(cluster.get("deployment", "app")) ==
             ("False", "RolloutAborted"), 60, "RolloutAborted")
    status = cluster.get("deployment", "app")["status"]
    with devices.lock:
        after = devices.messages[mark:]
    reached = sorted({t for t, d, _ in after if d["components"][0]["version"] == "2.0.0"})
    # The rate holds: the window's allowance comes in ticks of 1/12 window, so the abort
    # (10 executed) can come before the window's 20 are reached; at most two windows'
    # worth if the failures raced the second window; never the fleet.
    assert 10 <= len(reached) <= 40, reached
    assert reached == things[:len(reached)]  # thing-name order
    assert status["rolledBack"] == len(reached)
    assert status["failed"] == len(reached)
    # Rollback = the previous document again, byte for byte (same revision).
    wait_for(lambda: all(devices.latest(t)["revision"] == good[t]  # type: ignore[index]
                         for t in reached), 30, "rolled back devices on their old revision")
    # Devices the rollout never reached were never sent anything.
    untouched = set(things) - set(reached)
    assert not {t for t, _, _ in after} & untouched
    # And nothing more is rolled out after the abort, even windows later.
    time.sleep(2 * minute)
    with devices.lock:
        later = {t for t, d, _ in devices.messages[mark:]
                 if d["components"][0]["version"] == "2.0.0"}
    assert later == set(reached)
    events = cluster.kubectl("get", "events", "-n", "default", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"RolloutStarted", "RolloutAborted"} <= reasons


def test_over_mutual_tls_each_device_reads_only_its_own_document(
    cluster: Cluster, tmp_path: Any,
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLES))
    with Mosquitto(tls=True) as tls_broker:
        cert, key = tls_broker.client_cert("hedgerow_controller")
        log = tmp_path / "controller-tls.log"
        controller = ControllerProcess(cluster, tls_broker, log, [
            "--ca", str(tls_broker.ca), "--cert", str(cert), "--key", str(key)])
        controller.start()
        try:
            got: dict[str, Any] = {}
            device_cert, device_key = tls_broker.client_cert("gateway-1")
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gateway-1")
            client.tls_set(ca_certs=str(tls_broker.ca), certfile=str(device_cert),
                           keyfile=str(device_key))
            client.on_message = lambda c, u, m: got.__setitem__(m.topic.split("/")[2],
                                                                json.loads(m.payload))
            client.connect("127.0.0.1", tls_broker.port)
            client.subscribe("hedgerow/things/+/desired", qos=1)
            client.loop_start()
            try:
                wait_for(lambda: "gateway-1" in got, 60, "gateway-1's document over TLS")
                # The controller published three; the ACL lets gateway-1 see only its own.
                wait_for(lambda: "first pass: 3 devices, 3 documents to publish" in log.read_text(),
                         10, "first pass publishing three")
                time.sleep(0.5)
                assert set(got) == {"gateway-1"}
                assert got["gateway-1"]["thing"] == "gateway-1"
            finally:
                client.loop_stop()
                client.disconnect()
        finally:
            controller.stop()
