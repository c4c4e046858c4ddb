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
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench import _fleet, harness

N = 1000


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
    with _fleet.cluster(N) as (server, broker, tmp):
        with _fleet.controller(server, broker, tmp) as proc:
            counter = Counter(broker.port, "hedgerow/things")
            try:
                start = time.perf_counter()
                server.kubectl("apply", "-f", "-", input=yaml.safe_dump(_fleet.deployment()))
                if not counter.done.wait(120):
                    raise RuntimeError(f"only {len(counter.things)} documents arrived")
                seconds = time.perf_counter() - start
                time.sleep(3)  # let status writes finish, then measure memory at rest
                rss = _fleet.rss_mb(proc.pid)
            finally:
                counter.close()
        sample = json.dumps({"components": [{"name": "x" * 40, "configuration": {"i": 5}}] * 2})
        floor = _bare_publish(broker.port, [sample.encode()] * N)
    bare_rss = _fleet.bare_rss_mb()
    yield harness.Figure("publish_1000_s", seconds, "s", floor, "<= 10 s")
    yield harness.Figure("controller_rss_mb", rss, "MB", bare_rss, "<= 150 MB")


if __name__ == "__main__":
    for figure in run():
        print(figure.to_json())
