"""Controller: kubectl apply of a Deployment -> 1,000 desired documents published; RSS.

Real parts: the test API server (etcd + apiextensions-apiserver), mosquitto, and
`hedgerow controller` as a process. 1,000 CoreDevices, one ThingGroup selecting them, two
Components; the clock runs from `kubectl apply` of the Deployment until a subscriber has
received all 1,000 documents. Targets: <= 10 s and RSS <= 150 MB.

Baselines, same run: for publish_1000_s, one bare paho client publishing the same 1,000
documents retained at QoS 1 to the same broker (the floor any controller pays); for
controller_rss_mb, a Python process that only imports kopf, kubernetes and paho.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench import harness

ROOT = Path(__file__).resolve().parents[1]
N = 1000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "ThingGroup",
         "metadata": {"name": "all", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"bench": "yes"}}}}]
    for name, deps in (("com.example.Base", []),
                       ("com.example.App", [{"name": "com.example.Base",
                                             "versionRequirement": "^1.0.0"}])):
        docs.append({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
                     "metadata": {"name": name.lower().replace(".", "-"),
                                  "namespace": "default"},
                     "spec": {"name": name, "version": "1.0.0", "dependencies": deps,
                              "defaultConfiguration": {"interval": 5},
                              "manifests": [{"lifecycle": {"run": {"script": "sleep 1"}}}]}})
    docs += [{"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
              "metadata": {"name": f"bench-{i:04}", "labels": {"bench": "yes"}}}
             for i in range(N)]
    return docs


DEPLOYMENT = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
              "metadata": {"name": "bench", "namespace": "default"},
              "spec": {"target": {"thingGroup": "all"},
                       "components": [{"name": "com.example.App", "version": "^1.0.0"}]}}


class Counter:
    def __init__(self, port: int, prefix: str) -> None:
        self.things: set[str] = set()
        self.done = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{prefix}")
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{prefix}/+/desired", qos=1)
        self.client.loop_start()

    def _on(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            self.things.add(msg.topic.split("/")[-2])
            if len(self.things) >= N:
                self.done.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _bare_publish(port: int, payloads: list[bytes]) -> float:
    counter = Counter(port, "baseline/things")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare")
    client.max_inflight_messages_set(512)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    infos = [client.publish(f"baseline/things/t{i}/desired", p, qos=1, retain=True)
             for i, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(30)
    counter.done.wait(60)
    seconds = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    counter.close()
    return seconds


def run() -> Iterator[harness.Figure]:
    sys.path.insert(0, str(ROOT))
    from tests.support.apiserver import ApiServer
    from tests.support.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, ApiServer(Path(tmp) / "api") as server, \
            Mosquitto() as broker:
        server.apply_crds(ROOT / "crds")
        server.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(_objects()), timeout=300)
        log = (Path(tmp) / "controller.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hedgerow", "controller", "--kubeconfig",
             str(server.kubeconfig), "--broker", broker.url],
            stdout=log, stderr=subprocess.STDOUT)
        counter = Counter(broker.port, "hedgerow/things")
        try:
            deadline = time.monotonic() + 120
            while b"first pass:" not in (Path(tmp) / "controller.log").read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the controller did not start")
                time.sleep(0.1)
            start = time.perf_counter()
            server.kubectl("apply", "-f", "-", input=yaml.safe_dump(DEPLOYMENT))
            if not counter.done.wait(120):
                raise RuntimeError(f"only {len(counter.things)} documents arrived")
            seconds = time.perf_counter() - start
            time.sleep(3)  # let status writes finish, then measure memory at rest
            rss = _rss_mb(proc.pid)
        finally:
            counter.close()
            proc.terminate()
            proc.wait(30)
            log.close()
            if os.environ.get("HEDGEROW_BENCH_LOG"):  # debugging aid: show the log tail
                sys.stderr.write((Path(tmp) / "controller.log").read_text()[-5000:])
        sample = json.dumps({"components": [{"name": "x" * 40, "configuration": {"i": 5}}] * 2})
        floor = _bare_publish(broker.port, [sample.encode()] * N)
    bare = subprocess.Popen([sys.executable, "-c",
                             "import kopf, kubernetes, paho.mqtt.client, sys, time;"
                             "print('ready', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE)
    assert bare.stdout is not None
    bare.stdout.readline()
    bare_rss = _rss_mb(bare.pid)
    bare.terminate()
    bare.wait()
    yield harness.Figure("publish_1000_s", seconds, "s", floor, "<= 10 s")
    yield harness.Figure("controller_rss_mb", rss, "MB", bare_rss, "<= 150 MB")


if __name__ == "__main__":
    for figure in run():
        print(figure.to_json())
