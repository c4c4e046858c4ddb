"""Controller HA: kill -9 of the active replica mid-rollout; takeover time, duplicates, losses.

Real parts: the test API server (etcd + apiextensions-apiserver, plus the Lease stand-in
CRD the test server needs: tests/support/crds) with 200 CoreDevices, mosquitto, two
`hedgerow controller --leader-elect` processes (default 8 s lease), and 200 MQTT device
simulators in 2 processes (`bench._fleet`: subscribe to their desired topic, report
SUCCEEDED 0.2 s after each new document). A Deployment rolls out at 40 devices per
"minute" of 2 s (`--rollout-minute 2`): five windows. Once two windows' documents have
arrived, the active replica's process group gets SIGKILL.

Figures:
- takeover_s: SIGKILL -> the standby's log says it connected to the broker (it holds the
  Lease, has read every device's status and holds the broker session). Baseline: the
  lease duration (a standby may only take over once the lease has not been renewed for
  that long). Target <= 15 s.
- duplicate_publishes: live (not retained) desired documents an observer subscribed to
  every desired topic received beyond one per device and revision. Target 0.
- lost_reports: devices whose success never reached the Deployment's status within 60 s
  of the takeover (each simulator reports once per document: a lost report is a device
  never counted). Target 0.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench import _fleet, harness

N = 200
RATE = 40  # per rollout "minute"
MINUTE = 2.0  # seconds
LEASE = 8  # seconds (the controller's default)


class Observer:
    """Counts the live desired documents per (thing, revision)."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.live: collections.Counter[tuple[str, bytes]] = collections.Counter()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="failover-observer")
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("hedgerow/things/+/desired", qos=1)
        self.client.loop_start()

    def _on(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload and not msg.retain:
            with self.lock:
                self.live[(msg.topic.split("/")[2], bytes(msg.payload))] += 1

    def things(self) -> int:
        with self.lock:
            return len({t for t, _ in self.live})

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.live.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _start(server: Any, broker: Any, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hedgerow", "controller", "--kubeconfig",
             str(server.kubeconfig), "--broker", broker.url, "--leader-elect",
             "--leader-elect-lease", str(LEASE), "--rollout-minute", str(MINUTE)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _succeeded(server: Any) -> int:
    out = server.kubectl("get", "deployment.hedgerow.dev", "bench", "-n", "default",
                         "-o", "jsonpath={.status.succeeded}").stdout
    return int(out or 0)


def run() -> Iterator[harness.Figure]:
    with _fleet.cluster(N) as (server, broker, tmp):
        server.apply_crds(_fleet.ROOT / "tests" / "support" / "crds")
        observer = Observer(broker.port)
        logs = [tmp / "controller-a.log", tmp / "controller-b.log"]
        procs = [_start(server, broker, logs[0])]
        try:
            _wait(lambda: b"connected to the broker" in logs[0].read_bytes(), 120,
                  "the first replica to become active")
            procs.append(_start(server, broker, logs[1]))
            _wait(lambda: b"standing by" in logs[1].read_bytes(), 120, "the standby")
            things = [_fleet.thing_name(i) for i in range(N)]
            with _fleet.Simulators(broker.port, things, 2, 0.2) as sims:
                server.kubectl("apply", "-f", "-", input=yaml.safe_dump(_fleet.deployment(
                    {"maximumPerMinute": RATE, "timeoutMinutes": 30})))
                _wait(lambda: observer.things() >= 2 * RATE, 120, "two rollout windows")
                os.killpg(procs[0].pid, signal.SIGKILL)
                killed = time.monotonic()
                procs[0].wait()
                reached = observer.things()
                _wait(lambda: b"connected to the broker" in logs[1].read_bytes(), 60,
                      "the standby to take over")
                takeover = time.monotonic() - killed
                deadline = time.monotonic() + 60
                while _succeeded(server) < N and time.monotonic() < deadline:
                    time.sleep(0.2)
                succeeded = _succeeded(server)
                sims.collect()
            print(f"# {reached} of {N} devices notified before the kill; "
                  f"{observer.things()} at the end", file=sys.stderr)
            yield harness.Figure("takeover_s", takeover, "s", float(LEASE), "<= 15")
            yield harness.Figure("duplicate_publishes", float(observer.duplicates()), "count",
                                 None, "0")
            yield harness.Figure("lost_reports", float(N - succeeded), "count", None, "0")
        finally:
            observer.close()
            for proc in procs:
                _fleet.stop(proc)
            if os.environ.get("HEDGEROW_BENCH_LOG"):
                for log in logs:
                    sys.stderr.write(log.read_text()[-4000:])
