"""Fleet: a rollout to 1,000 simulated devices at 1,000/minute; latency, controller CPU/RSS.

Real parts: the test API server (etcd + apiextensions-apiserver) with 1,000 CoreDevices,
mosquitto, `hedgerow controller` as a process (real one-minute rollout windows, no
`--rollout-minute` scaling), and 1,000 MQTT device simulators in 4 processes
(`bench._fleet`: paho clients on one selector loop per process, real protocol: subscribe
to their own desired topic, report on their status topic with a StatusReport after a
0.2 s simulated apply: applied revision = desired revision, every component RUNNING,
outcome SUCCEEDED). The simulators connect and send a first report (platform, health)
before the clock starts; the benchmark waits until the controller has written all 1,000
of those into CoreDevice status.

Then a Deployment with `rollout.maximumPerMinute: 1000` is applied. The controller's
first rollout window opens at once and admits all 1,000 devices, so this measures how
fast the controller publishes, folds reports and writes status when the rate limit is
not the bottleneck.

Figures:
- devices: devices the Deployment status counts as succeeded (baseline: the fleet size).
- rollout_minutes: `kubectl apply` of the Deployment -> Deployment `status.succeeded`
  == 1,000 (polled every 0.2 s). Baseline: the ideal 1000 / maximumPerMinute = 1 minute.
- notified_to_succeeded_p50_s / _p99_s: per device, from the wall time its simulator
  received the desired document (≈ when the controller published it) to the wall time a
  watch on CoreDevices in this process saw the device's `Applied` condition turn
  True/Succeeded (i.e. the controller had written the success to the API server).
  Includes the 0.2 s simulated apply, which is the baseline (the floor).
- apply_to_notified_p99_s: `kubectl apply` -> the simulator received the document, p99
  (how fast the controller fans out). Baseline: the 60 s the rate limit would allow for
  notifying all 1,000 (see controller_publish for a bare-paho publishing floor).
- status_settled_s: `kubectl apply` -> the watch saw the last device's Applied=True in
  CoreDevice status. Baseline: rollout_minutes in seconds (the Deployment counts from the
  controller's memory; CoreDevice status writes trail it).
- controller_cpu_s: controller user+system CPU from `kubectl apply` until every
  CoreDevice status shows the success (the whole rollout's work, status writes included).
  Baseline: the wall time of the same interval (ratio = cores used on average).
- controller_rss_mb: at rest after the rollout; controller_rss_peak_mb: VmHWM.
  Baseline: a Python process that only imports kopf, kubernetes and paho.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import yaml

from bench import _fleet, harness
from tests.support import wait

N = 1000
RATE = 1000  # rollout.maximumPerMinute
PROCESSES = 4
APPLY_DELAY = 0.2  # seconds a simulated device takes to "apply" a document
TIMEOUT = 150.0  # seconds the rollout may take before the benchmark gives up


class DeviceWatch:
    """A watch on CoreDevices: when each device first had a platform in its status
    (its first report was written) and when its Applied condition first was True."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        new_client: Any = config.new_client_from_config  # the kubernetes client is untyped
        self.api: Any = client.CustomObjectsApi(new_client(kubeconfig))
        self.reported: set[str] = set()
        self.succeeded: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch as watch_module

        watch: Any = watch_module  # the kubernetes client is untyped
        version: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 2}
                if version:
                    kwargs["resource_version"] = version
                for event in w.stream(self.api.list_cluster_custom_object, "hedgerow.dev",
                                      "v1alpha1", "coredevices", **kwargs):
                    self._see(event["object"])
                    version = event["object"]["metadata"]["resourceVersion"]
                    if self._stop.is_set():
                        break
            except Exception:  # a broken watch restarts (410 Gone: relist)
                version = None
                time.sleep(0.2)
            finally:
                w.stop()

    def _see(self, obj: dict[str, Any]) -> None:
        now = time.time()
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if status.get("platform"):
            self.reported.add(name)
        for c in status.get("conditions", []):
            if c.get("type") == "Applied" and c.get("status") == "True":
                self.succeeded.setdefault(name, now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _deployment_succeeded(watcher: DeviceWatch) -> int:
    obj = watcher.api.get_namespaced_custom_object(
        "hedgerow.dev", "v1alpha1", "default", "deployments", "bench")
    return int((obj.get("status") or {}).get("succeeded") or 0)


def run() -> Iterator[harness.Figure]:
    things = [_fleet.thing_name(i) for i in range(N)]
    rollout = {"maximumPerMinute": RATE}
    with _fleet.cluster(N) as (server, broker, tmp), \
            _fleet.controller(server, broker, tmp) as proc, \
            _fleet.Simulators(broker.port, things, PROCESSES, APPLY_DELAY) as sims:
        watcher = DeviceWatch(str(server.kubeconfig))
        try:
            wait.wait_for(lambda: len(watcher.reported) >= N, 120,
                          f"first reports in CoreDevice status ({len(watcher.reported)}/{N})",
                          interval=0.2)
            time.sleep(2)  # let the controller settle after those writes
            cpu0 = _fleet.cpu_seconds(proc.pid)
            applied_at = time.time()
            start = time.perf_counter()
            server.kubectl("apply", "-f", "-",
                           input=yaml.safe_dump(_fleet.deployment(rollout)))
            deadline = start + TIMEOUT
            succeeded = 0
            while time.perf_counter() < deadline:
                succeeded = _deployment_succeeded(watcher)
                if succeeded >= N:
                    break
                time.sleep(0.2)
            seconds = time.perf_counter() - start
            wait.wait_for(lambda: len(watcher.succeeded) >= succeeded, 60,
                          "CoreDevice status writes", interval=0.2)
            settled = max(watcher.succeeded.values(), default=applied_at) - applied_at
            cpu = _fleet.cpu_seconds(proc.pid) - cpu0
            cpu_wall = time.perf_counter() - start
            time.sleep(3)  # let status writes finish, then measure memory at rest
            rss = _fleet.rss_mb(proc.pid)
            peak = _fleet.rss_mb(proc.pid, "VmHWM")
        finally:
            watcher.close()
        sims.collect()
    bare_rss = _fleet.bare_rss_mb()

    latencies = [watcher.succeeded[t] - sims.received[t][0]
                 for t in things if t in watcher.succeeded and sims.received.get(t)]
    notified = [sims.received[t][0] - applied_at for t in things if sims.received.get(t)]
    finished = succeeded >= N
    note = "" if finished else f" (NOT FINISHED: {succeeded}/{N} after {TIMEOUT:.0f} s)"
    yield harness.Figure("devices", succeeded, "devices", N, f"= {N}{note}")
    yield harness.Figure("rollout_minutes", seconds / 60, "min", N / RATE,
                         f"<= {N / RATE:g} min ({N} devices at {RATE}/min, real 60 s "
                         f"windows; the first window admits all){note}")
    if latencies:
        yield harness.Figure("notified_to_succeeded_p50_s", harness.percentile(latencies, 50),
                             "s", APPLY_DELAY, "<= 2 s (baseline: the simulated apply)")
        yield harness.Figure("notified_to_succeeded_p99_s", harness.percentile(latencies, 99),
                             "s", APPLY_DELAY, "<= 5 s (baseline: the simulated apply)")
    if notified:
        yield harness.Figure("apply_to_notified_p99_s", harness.percentile(notified, 99),
                             "s", 60 * N / RATE, f"<= 10 s (baseline: the {60 * N / RATE:g} s "
                             f"the rate allows for notifying all {N})")
    yield harness.Figure("status_settled_s", settled, "s", seconds,
                         "<= 10 s: apply -> last CoreDevice Applied=True written (baseline: "
                         "apply -> Deployment counts all succeeded)")
    yield harness.Figure("controller_cpu_s", cpu, "s", cpu_wall,
                         "ratio < 1 (apply -> all CoreDevice statuses written; baseline: "
                         "wall seconds of that interval; ratio = cores used)")
    yield harness.Figure("controller_rss_mb", rss, "MB", bare_rss, "<= 150 MB")
    yield harness.Figure("controller_rss_peak_mb", peak, "MB", bare_rss, "<= 200 MB")
    if sims.reported < succeeded:  # cannot happen unless something counts twice
        print(f"# simulators sent {sims.reported} success reports, the Deployment counts "
              f"{succeeded}", file=sys.stderr)


if __name__ == "__main__":
    for figure in run():
        print(figure.to_json())
