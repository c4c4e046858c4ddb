"""Fixtures for controller integration tests: a fresh real API server and mosquitto per
test (CoreDevices are cluster-scoped, so tests sharing a server would see each other's
fleets), the controller as a real `hedgerow controller` process, and test devices that
are plain paho MQTT clients."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT
from tests.support import procs
from tests.support.apiserver import ApiServer
from tests.support.mosquitto import Mosquitto


class Cluster:
    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.kubeconfig = str(server.kubeconfig)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.server.kubectl(*args, input=stdin).stdout

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, namespace: str | None = "default") -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        out: dict[str, Any] = json.loads(self.kubectl("get", kind, name, *ns, "-o", "json"))
        return out


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with ApiServer(tmp_path / "apiserver") as server:
        server.apply_crds(ROOT / "crds")
        yield Cluster(server)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


class ControllerProcess:
    def __init__(self, cluster: Cluster, broker: Mosquitto, log: Path,
                 extra: list[str]) -> None:
        self.args = [sys.executable, "-m", "hedgerow", "controller",
                     "--kubeconfig", cluster.kubeconfig, "--broker", broker.url,
                     "--status-interval", "0.2", *extra]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        procs.stop_group(proc)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def controller_factory(
    cluster: Cluster, broker: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest,
) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(*extra: str) -> ControllerProcess:
        c = ControllerProcess(cluster, broker, tmp_path / "controller.log", list(extra))
        c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and started:
        print("---- controller log (tail) ----\n" + started[0].output()[-6000:])




class Devices:
    """Plain MQTT clients standing in for devices: one observer of every desired topic
    (retained documents and live ones), and a publisher of status reports."""

    def __init__(self, broker: Mosquitto) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.cleared: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-devices")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("hedgerow/things/+/desired", qos=1)
        self.client.loop_start()
        self.sequence = 0
        # Called on the paho thread for every document; returns an outcome to report
        # (SUCCEEDED, FAILED) or None to stay silent, like a device applying it.
        self.responder: Callable[[str, dict[str, Any]], str | None] | None = None

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        thing = msg.topic.split("/")[2]
        if not msg.payload:  # the retained document was cleared
            with self.lock:
                self.cleared.append(thing)
        else:
            doc = json.loads(msg.payload)
            with self.lock:
                self.messages.append((thing, doc, bool(msg.retain)))
            outcome = self.responder(thing, doc) if self.responder else None
            if outcome is not None:
                self._publish_report(thing, outcome, doc["revision"], wait=False)

    def latest(self, thing: str) -> dict[str, Any] | None:
        with self.lock:
            docs = [d for t, d, _ in self.messages if t == thing]
        return docs[-1] if docs else None

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def components(self, thing: str) -> dict[str, str]:
        doc = self.latest(thing)
        return {} if doc is None else {c["name"]: c["version"] for c in doc["components"]}

    def report(self, thing: str, outcome: str, revision: str | None = None) -> None:
        doc = self.latest(thing)
        self._publish_report(thing, outcome, revision or (doc["revision"] if doc else None))

    def _publish_report(self, thing: str, outcome: str, revision: str | None,
                        wait: bool = True) -> None:
        with self.lock:
            self.sequence += 1
        report = {
            "apiVersion": "hedgerow.dev/v1alpha1", "kind": "StatusReport", "thing": thing,
            "sequence": self.sequence, "time": "2026-01-01T00:00:00Z",
            "agentVersion": "0.1.0-test", "platform": {"os": "linux", "arch": "amd64"},
            "health": "HEALTHY" if outcome == "SUCCEEDED" else "UNHEALTHY",
            "desiredRevision": revision,
            "appliedRevision": revision if outcome == "SUCCEEDED" else None,
            "components": [],
            "deployment": {"revision": revision, "outcome": outcome},
        }
        info = self.client.publish(
            f"hedgerow/things/{thing}/status",
            json.dumps({k: v for k, v in report.items() if v is not None}), qos=1)
        if wait:  # never on the paho thread: it would wait for itself
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def devices(broker: Mosquitto) -> Iterator[Devices]:
    d = Devices(broker)
    yield d
    d.close()
