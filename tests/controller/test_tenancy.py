"""Attacks on tenancy, privilege, failure isolation and bounds, against the real API server,
mosquitto and `hedgerow controller`; devices are MQTT clients that report like an agent.

Team A owns namespace ``team-a`` and its devices ``a-1``/``a-2``; an attacker may create
anything in namespace ``zzz`` (or is a careless teammate in ``team-a``). Each test shows
the attack fails with a clear condition on the attacker's object and that team A's
devices keep their documents and keep converging on team A's changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from hedgerow.core import limits
from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.controller.test_operator import condition, retained
from tests.support import net
from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.mqtt]

API = "hedgerow.dev/v1alpha1"
THINGS = ["a-1", "a-2"]
HELLO = "com.example.Hello"


def component(name: str, namespace: str, version: str = "1.0.0",
              **manifest: Any) -> dict[str, Any]:
    body = manifest or {"lifecycle": {"setenv": {"MESSAGE": "{configuration:/message}"},
                                      "run": {"script": 'echo "$MESSAGE"'}}}
    return {"apiVersion": API, "kind": "Component",
            "metadata": {"name": f"{name.lower().replace('.', '-')}-{version}",
                         "namespace": namespace},
            "spec": {"name": name, "version": version,
                     "defaultConfiguration": {"message": "hello"}, "manifests": [body]}}


def deployment(name: str, namespace: str, components: list[dict[str, Any]], *,
               group: str | None = "site", thing: str | None = None,
               priority: int = 0) -> dict[str, Any]:
    target = {"thing": thing} if thing else {"thingGroup": group}
    return {"apiVersion": API, "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"target": target, "components": components, "priority": priority}}


def hello(message: str = "from team A", **extra: Any) -> dict[str, Any]:
    return {"name": HELLO, "version": "1.0.0",
            "configurationUpdate": {"merge": {"message": message}}, **extra}


def team_a(cluster: Cluster, devices: Devices,
           controller_factory: Callable[..., ControllerProcess]) -> ControllerProcess:
    """Team A's namespace, devices, component and deployment, converged."""
    cluster.kubectl("create", "namespace", "team-a")
    cluster.kubectl("create", "namespace", "zzz")
    cluster.apply(
        *({"apiVersion": API, "kind": "CoreDevice",
           "metadata": {"name": t, "labels": {"site": "berlin"}},
           "spec": {"namespace": "team-a"}} for t in THINGS),
        {"apiVersion": API, "kind": "ThingGroup", "metadata": {"name": "site",
                                                              "namespace": "team-a"},
         "spec": {"selector": {"matchLabels": {"site": "berlin"}}}},
        component(HELLO, "team-a"),
        deployment("apps", "team-a", [hello()]))
    devices.responder = lambda thing, doc: "SUCCEEDED"
    controller = controller_factory()
    wait_for(lambda: all(message(devices, t) == "from team A" for t in THINGS), 60,
             "team A's documents")
    wait_for(lambda: ready(cluster, "apps", "team-a") == ("True", "Succeeded"), 30,
             "team A's deployment Ready")
    return controller


def message(devices: Devices, thing: str) -> str | None:
    doc = devices.latest(thing)
    if doc is None:
        return None
    hit = next((c for c in doc["components"] if c["name"] == HELLO), None)
    return None if hit is None else str(hit["configuration"]["message"])


def ready(cluster: Cluster, name: str, namespace: str) -> tuple[str, str] | None:
    return condition(cluster.get("deployment.hedgerow.dev", name, namespace))


def ready_message(cluster: Cluster, name: str, namespace: str) -> str:
    obj = cluster.get("deployment.hedgerow.dev", name, namespace)
    return str(next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "Ready"))


def team_a_still_converges(cluster: Cluster, devices: Devices, text: str) -> None:
    """Team A changes its deployment: both devices get it and the deployment is Ready."""
    cluster.apply(deployment("apps", "team-a", [hello(text)]))
    wait_for(lambda: all(message(devices, t) == text for t in THINGS), 30,
             f"team A's change {text!r} on both devices")
    wait_for(lambda: ready(cluster, "apps", "team-a") == ("True", "Succeeded"), 30,
             "team A's deployment Ready again")


def test_another_namespace_cannot_select_target_or_shadow_a_teams_devices(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    team_a(cluster, devices, controller_factory)
    before = {t: devices.latest(t) for t in THINGS}
    # The attack of the review: a group selecting every device, a Component of the same
    # name that runs `id`, as root, at the highest priority, with injected configuration.
    cluster.apply(
        {"apiVersion": API, "kind": "ThingGroup", "metadata": {"name": "everything",
                                                              "namespace": "zzz"},
         "spec": {"selector": {}}},
        component(HELLO, "zzz", lifecycle={"run": {"script": "id"}}),
        deployment("takeover", "zzz", [hello("$(id)", runWith={"posixUser": "nobody"})],
                   group="everything", priority=1000),
        deployment("direct", "zzz", [hello("$(id)")], thing="a-1", priority=1000))
    wait_for(lambda: ready(cluster, "takeover", "zzz") == ("False", "EmptyTarget"), 30,
             "EmptyTarget on zzz/takeover")
    assert "'everything' has no members" in ready_message(cluster, "takeover", "zzz")
    wait_for(lambda: ready(cluster, "direct", "zzz") == ("False", "EmptyTarget"), 30,
             "EmptyTarget on zzz/direct")
    assert ("thing 'a-1' is not a registered CoreDevice of namespace 'zzz'"
            in ready_message(cluster, "direct", "zzz"))
    wait_for(lambda: cluster.get("thinggroup", "everything", "zzz").get("status", {})
             .get("memberCount") == 0, 20, "zzz/everything has 0 members")
    # Nothing was sent: each device still has team A's document, Hello from team A.
    assert {t: devices.latest(t) for t in THINGS} == before
    assert retained(broker, THINGS) == before
    team_a_still_converges(cluster, devices, "team A goes on")
    for thing in THINGS:
        hello_doc = next(c for c in devices.latest(thing)["components"]  # type: ignore[index]
                         if c["name"] == HELLO)
        assert hello_doc["lifecycle"]["run"]["script"] == 'echo "$MESSAGE"'  # not zzz's `id`
        assert "runWith" not in hello_doc


def test_privilege_must_be_granted_to_the_namespace(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    team_a(cluster, devices, controller_factory)
    before = {t: devices.latest(t) for t in THINGS}
    cluster.apply(
        component("com.example.Installer", "team-a", lifecycle={
            "install": {"script": "apt-get install -y x", "requiresPrivilege": True},
            "run": {"script": "sleep 1000"}}),
        component("com.example.Privileged", "team-a", container={
            "image": "busybox:latest", "requiresPrivilege": True}),
        deployment("as-root", "team-a", [hello(runWith={"posixUser": "root"})], priority=5),
        deployment("installer", "team-a", [{"name": "com.example.Installer",
                                            "version": "1.0.0"}]),
        deployment("privileged", "team-a", [{"name": "com.example.Privileged",
                                             "version": "1.0.0"}]))
    expected = {
        "as-root": f"{HELLO}: runWith.posixUser: runs as 'root' (root); needs privilege level "
                   "'privileged', granted 'restricted' (label hedgerow.dev/enforce)",
        "installer": "com.example.Installer: lifecycle.install.requiresPrivilege: the install "
                     "step runs as root; needs privilege level 'privileged', granted "
                     "'restricted'",
        "privileged": "com.example.Privileged: container.requiresPrivilege: runs a privileged "
                      "container; needs privilege level 'privileged', granted 'restricted'",
    }
    for name, text in expected.items():
        wait_for(lambda name=name: ready(cluster, name, "team-a")  # type: ignore[misc]
                 == ("False", "PrivilegeViolation"), 30, f"PrivilegeViolation on {name}")
        assert text in ready_message(cluster, name, "team-a")
    # The devices keep their last good state; team A's ordinary work goes on.
    assert {t: devices.latest(t) for t in THINGS} == before
    team_a_still_converges(cluster, devices, "still restricted")
    assert "Installer" not in json.dumps(devices.latest("a-1"))

    # The fleet admin grants the namespace privilege: the same objects now go out.
    cluster.kubectl("label", "namespace", "team-a", "hedgerow.dev/enforce=privileged")
    wait_for(lambda: {c["name"] for c in (devices.latest("a-1") or {})["components"]}
             == {HELLO, "com.example.Installer", "com.example.Privileged"}, 30,
             "privileged components once granted")
    doc = devices.latest("a-1")
    assert doc is not None
    assert next(c for c in doc["components"] if c["name"] == HELLO)["runWith"] == {
        "posixUser": "root"}


def test_a_problem_deployment_does_not_block_a_good_one(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    team_a(cluster, devices, controller_factory)
    cluster.apply(component("com.example.Tool", "team-a"),
                  deployment("tool", "team-a", [{"name": "com.example.Tool",
                                                 "version": "1.0.0"}]))
    wait_for(lambda: all("com.example.Tool" in devices.components(t) for t in THINGS), 30,
             "Tool on both devices")
    wait_for(lambda: ready(cluster, "tool", "team-a") == ("True", "Succeeded"), 30,
             "tool Ready")
    # A new deployment naming a component that does not exist, on every device, at the
    # highest priority; and a new generation of `tool` that cannot be resolved.
    cluster.apply(deployment("broken", "team-a", [{"name": "com.example.Nope",
                                                   "version": "1.0.0"}], priority=1000),
                  deployment("tool", "team-a", [{"name": "com.example.Tool",
                                                 "version": "7.0.0"}]))
    wait_for(lambda: ready(cluster, "broken", "team-a") == ("False", "UnknownComponent"), 30,
             "UnknownComponent on broken")
    wait_for(lambda: ready(cluster, "tool", "team-a") == ("False", "UnknownComponent"), 30,
             "UnknownComponent on tool's new generation")
    assert "com.example.Tool: no version satisfies 7.0.0" in ready_message(
        cluster, "tool", "team-a")
    # The good team's change still publishes and converges; `tool` keeps contributing its
    # last good generation (1.0.0), `broken` contributes nothing.
    team_a_still_converges(cluster, devices, "not blocked")
    for thing in THINGS:
        assert devices.components(thing) == {HELLO: "1.0.0", "com.example.Tool": "1.0.0"}
    device = cluster.get("coredevice", "a-1", None)["status"]
    assert device["desiredGenerations"]["team-a/tool"] == 1
    assert "team-a/broken" not in device["desiredGenerations"]


def test_an_oversized_document_is_never_published(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    controller = team_a(cluster, devices, controller_factory)
    before = {t: devices.latest(t) for t in THINGS}
    count = devices.count()
    blob = "x" * (limits.MAX_DESIRED_BYTES + 10_000)
    cluster.apply(component("com.example.Big", "team-a"))
    # `kubectl create`: apply would copy the object into an annotation, over its limit.
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(deployment(
        "huge", "team-a", [{"name": "com.example.Big", "version": "1.0.0",
                            "configurationUpdate": {"merge": {"message": blob}}}])))
    wait_for(lambda: ready(cluster, "huge", "team-a") == ("False", "DocumentTooLarge"), 30,
             "DocumentTooLarge on huge")
    text = ready_message(cluster, "huge", "team-a")
    assert f"over the limit of {limits.MAX_DESIRED_BYTES}" in text, text
    assert {t: devices.latest(t) for t in THINGS} == before
    assert devices.count() == count  # nothing at all was published meanwhile
    team_a_still_converges(cluster, devices, "small again")
    with devices.lock:
        sizes = [len(json.dumps(d)) for _, d, _ in devices.messages]
    assert max(sizes) < limits.MAX_DESIRED_BYTES
    assert "disconnected from the broker" not in controller.output()


def _probe(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def test_oversized_invalid_and_flooding_reports_are_refused(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    port = net.free_port()
    controller = team_a(cluster, devices,
                        lambda: controller_factory("--liveness",
                                                   f"http://127.0.0.1:{port}/healthz"))
    devices.responder = None
    revision = devices.latest("a-1")["revision"]  # type: ignore[index]
    good = {"apiVersion": API, "kind": "StatusReport", "thing": "a-1", "sequence": 10_000,
            "time": "2026-01-01T00:00:00Z", "agentVersion": "0.1.0-test",
            "platform": {"os": "linux", "arch": "amd64"}, "health": "HEALTHY",
            "appliedRevision": revision, "components": [],
            "deployment": {"revision": revision, "outcome": "SUCCEEDED"}}

    def send(thing: str, payload: bytes | dict[str, Any]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        devices.client.publish(f"hedgerow/things/{thing}/status", data,
                               qos=1).wait_for_publish(10)

    def reports(thing: str) -> tuple[str, str] | None:
        status = cluster.get("coredevice", thing, None).get("status", {})
        return condition({"status": status}, "ReportsAccepted")

    # Over MAX_REPORT_BYTES: refused before parsing; the status keeps what it had.
    send("a-1", {**good, "agentVersion": "v" * (limits.MAX_REPORT_BYTES + 1)})
    wait_for(lambda: reports("a-1") == ("False", "TooLarge"), 20, "TooLarge on a-1")
    assert cluster.get("coredevice", "a-1", None)["status"]["agentVersion"] == "0.1.0-test"
    # Within the bytes but over the component count: refused, naming the field.
    many = [{"name": f"c{i}", "version": "1.0.0", "state": "RUNNING"}
            for i in range(limits.MAX_REPORT_COMPONENTS + 1)]
    send("a-1", {**good, "sequence": 10_001, "components": many})
    wait_for(lambda: reports("a-1") == ("False", "Invalid"), 20, "Invalid on a-1")
    status = cluster.get("coredevice", "a-1", None)
    cond = next(c for c in status["status"]["conditions"] if c["type"] == "ReportsAccepted")
    assert "components" in cond["message"]
    assert status["status"]["components"] == []

    # A flood from a-2: a burst is accepted, the rest dropped and counted.
    flood = 200
    for i in range(flood):
        send("a-2", {**good, "thing": "a-2", "sequence": 20_000 + i,
                     "agentVersion": f"flood-{i}"})
    wait_for(lambda: reports("a-2") == ("False", "RateLimited"), 20, "RateLimited on a-2")
    # At most a burst plus one per second (refilled meanwhile) was accepted. The probe's
    # answers are cached for 10 s by kopf.
    wait_for(lambda: (_probe(port).get("refusedReports") or {}).get("RateLimited", 0)
             >= flood - limits.REPORT_BURST - 30, 25, "the refusal count in the probe")
    assert _probe(port)["refusedReports"]["TooLarge"] == 1
    # One log line per change of reason, not one per report.
    assert controller.output().count("refusing status reports of a-2") == 1

    # a-1 behaves again: after a quiet while its good report is folded and the condition
    # says so; a-2's flood did not cost a-1 anything.
    time.sleep(limits.REPORT_BURST * limits.REPORT_INTERVAL_SECONDS)
    send("a-1", {**good, "sequence": 10_002, "agentVersion": "0.2.0"})
    wait_for(lambda: reports("a-1") == ("True", "Accepted"), 20, "a-1 accepted again")
    assert cluster.get("coredevice", "a-1", None)["status"]["agentVersion"] == "0.2.0"
    assert len(json.dumps(cluster.get("coredevice", "a-1", None)["status"])) < 4096


def test_moving_a_device_to_another_namespace_is_explicit(cluster: Cluster) -> None:
    def register(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hedgerow", "device", "register", "d-1",
                               "--kubeconfig", cluster.kubeconfig, *args],
                              capture_output=True, text=True, timeout=60, check=False)

    assert register("--namespace", "team-a", "--label", "site=x").returncode == 0
    assert cluster.get("coredevice", "d-1", None)["spec"]["namespace"] == "team-a"
    # Re-registering (new labels) in the same namespace is fine.
    assert register("--namespace", "team-a", "--label", "site=y").returncode == 0
    # Another namespace without --move: refused, nothing changed.
    refused = register("--namespace", "zzz", "--label", "site=z")
    assert refused.returncode == 1
    assert "belongs to namespace 'team-a'" in refused.stderr and "--move" in refused.stderr
    device = cluster.get("coredevice", "d-1", None)
    assert device["spec"]["namespace"] == "team-a"
    assert device["metadata"]["labels"] == {"site": "y"}
    assert register("--namespace", "zzz", "--move").returncode == 0
    assert cluster.get("coredevice", "d-1", None)["spec"]["namespace"] == "zzz"
    assert register("--label", "site=q").returncode == 2  # --namespace is required
