"""Shared pieces of the fleet benchmarks: the real test API server + mosquitto + the
`hedgerow controller` process, a synthetic fleet, process RSS/CPU readings, and a
lightweight MQTT device simulator.

The simulator (`python -m bench._fleet simulate ...`, one process per slice of the fleet)
drives many paho clients from one selector loop (paho's external-loop API: no thread per
client). Each client speaks the real protocol against the real broker: it subscribes to
its own `hedgerow/things/<thing>/desired` (QoS 1), sends a first StatusReport (platform,
health) on connect, and on every new DesiredState revision waits `--delay` seconds (the
simulated apply) and publishes a StatusReport on `hedgerow/things/<thing>/status` (QoS 1):
applied revision = desired revision, every component RUNNING, outcome SUCCEEDED.
It prints `ready` once every client is subscribed and, when its stdin closes, one JSON
line `{"received": {thing: [wall time the document arrived, ...]}, "reported": N}`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import heapq
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]


# --- process readings --------------------------------------------------------------

def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process now (`field="VmHWM"`: its peak so far), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (not its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_rss_mb() -> float:
    """RSS of a Python process that only imports kopf, kubernetes and paho: the floor of
    any controller written with them."""
    bare = subprocess.Popen([sys.executable, "-c",
                             "import kopf, kubernetes, paho.mqtt.client, sys, time;"
                             "print('ready', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE)
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        return rss_mb(bare.pid)
    finally:
        bare.terminate()
        bare.wait()
        if bare.stdout is not None:
            bare.stdout.close()


# --- the fleet in the cluster --------------------------------------------------------

def thing_name(i: int) -> str:
    return f"bench-{i:05}"


def fleet_objects(n: int) -> list[dict[str, Any]]:
    """One ThingGroup selecting `n` CoreDevices (label bench=yes), two Components
    (com.example.App depends on com.example.Base)."""
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
              "metadata": {"name": thing_name(i), "labels": {"bench": "yes"}},
              "spec": {"namespace": "default"}}
             for i in range(n)]
    return docs


def deployment(rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": {"thingGroup": "all"},
                            "components": [{"name": "com.example.App", "version": "^1.0.0"}]}
    if rollout is not None:
        spec["rollout"] = rollout
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "bench", "namespace": "default"}, "spec": spec}


@contextlib.contextmanager
def cluster(n: int) -> Iterator[tuple[Any, Any, Path]]:
    """(ApiServer, Mosquitto, a temporary directory): CRDs and `fleet_objects(n)` applied.
    Both servers are stopped on exit, also on failure."""
    sys.path.insert(0, str(ROOT))
    from tests.support.apiserver import ApiServer
    from tests.support.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, ApiServer(Path(tmp) / "api") as server, \
            Mosquitto() as broker:
        server.apply_crds(ROOT / "crds")
        objects = fleet_objects(n)
        devices = [o for o in objects if o["kind"] == "CoreDevice"]
        server.kubectl("apply", "-f", "-", timeout=300, input=yaml.safe_dump_all(
            [o for o in objects if o["kind"] != "CoreDevice"]))
        create_all(server.kubeconfig, devices)
        yield server, broker, Path(tmp)


def list_seconds(kubeconfig: Path) -> float:
    """One plain listing of every CoreDevice, decoded (the kubernetes client, in pages of
    500 as the controller's informer asks): the floor of any controller's start."""
    import json as json_module

    from kubernetes import client, config

    new_client: Any = config.new_client_from_config  # the kubernetes client is untyped
    custom: Any = client.CustomObjectsApi(new_client(str(kubeconfig)))
    started = time.perf_counter()
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": 500, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        response = custom.list_cluster_custom_object("hedgerow.dev", "v1alpha1",
                                                     "coredevices", **kwargs)
        token = json_module.loads(response.data)["metadata"].get("continue")
        if not token:
            return time.perf_counter() - started


def create_all(kubeconfig: Path, devices: list[dict[str, Any]], threads: int = 8) -> None:
    """Create CoreDevices over a pool of connections (kubectl creates one at a time:
    minutes at 10,000)."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, config

    new_client: Any = config.new_client_from_config  # the kubernetes client is untyped
    api_client = new_client(str(kubeconfig))
    api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = threads
    custom: Any = client.CustomObjectsApi(api_client)

    def create(body: dict[str, Any]) -> None:
        custom.create_cluster_custom_object("hedgerow.dev", "v1alpha1", "coredevices", body)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, devices))


@contextlib.contextmanager
def controller(server: Any, broker: Any, tmp: Path, *extra: str, start_timeout: float = 120,
               timings: dict[str, float] | None = None,
               ) -> Iterator[subprocess.Popen[bytes]]:
    """`hedgerow controller` as a process, returned once its first pass is logged
    (``timings["start_to_first_pass_s"]``: how long that took); terminated (killed if it
    must be) on exit. `HEDGEROW_BENCH_LOG=1` prints the log tail."""
    log_path = tmp / "controller.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hedgerow", "controller", "--kubeconfig",
             str(server.kubeconfig), "--broker", broker.url, *extra],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout
            while b"first pass:" not in log_path.read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the controller did not start:\n"
                                       + log_path.read_text()[-3000:])
                time.sleep(0.1)
            if timings is not None:
                timings["start_to_first_pass_s"] = time.perf_counter() - started
            yield proc
        finally:
            stop(proc)
            if os.environ.get("HEDGEROW_BENCH_LOG"):  # debugging aid: show the log tail
                sys.stderr.write(log_path.read_text()[-5000:])


def stop(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- device simulators -------------------------------------------------------------

class Simulators:
    """`processes` simulator processes sharing the things; stopped on exit."""

    def __init__(self, port: int, things: list[str], processes: int, delay: float) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.received: dict[str, list[float]] = {}
        self.reported = 0
        size = -(-len(things) // processes)
        try:
            for k in range(processes):
                part = things[k * size:(k + 1) * size]
                if part:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", "bench._fleet", "simulate", "--port", str(port),
                         "--delay", str(delay), "--id", str(k), *part],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
            for proc in self.procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()  # "ready" once all its clients subscribed
                if line.strip() != "ready":
                    raise RuntimeError(f"a simulator did not start (rc={proc.poll()})")
        except BaseException:
            self.close()
            raise

    def collect(self) -> None:
        """Stop the simulators and gather what they saw."""
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
        for proc in self.procs:
            assert proc.stdout is not None
            out = proc.stdout.read()
            proc.wait(30)
            if out.strip():
                result = json.loads(out.strip().splitlines()[-1])
                self.received.update(result["received"])
                self.reported += result["reported"]
        self.close()

    def close(self) -> None:
        for proc in self.procs:
            stop(proc, 10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()

    def __enter__(self) -> Simulators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Device:
    def __init__(self, thing: str, port: int, sim: _Simulator) -> None:
        self.thing, self.sim = thing, sim
        self.sequence = 0
        self.revision: str | None = None  # the last desired revision seen
        self.received: list[float] = []
        self.subscribed = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{thing}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=120)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        client.subscribe(f"hedgerow/things/{self.thing}/desired", qos=1)
        self.report(None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.subscribed = True

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        from hedgerow.core import documents

        if not msg.payload:
            return
        now = time.time()
        desired = documents.DesiredState.model_validate_json(msg.payload)
        if desired.revision == self.revision:
            return  # a redelivery of what this device already applies
        self.revision = desired.revision
        self.received.append(now)
        self.sim.schedule(time.monotonic() + self.sim.delay, self, desired)

    def report(self, desired: Any) -> None:
        from hedgerow.core import documents

        self.sequence += 1
        extra: dict[str, Any] = {}
        if desired is not None:
            extra = {
                "desired_revision": desired.revision,
                "applied_revision": desired.revision,
                "components": [documents.ComponentReport(
                    name=c.name, version=c.version, state=documents.ComponentState.RUNNING)
                    for c in desired.components],
                "deployment": documents.DeploymentOutcome(
                    revision=desired.revision, outcome=documents.Outcome.SUCCEEDED),
            }
        report = documents.StatusReport(
            thing=self.thing, sequence=self.sequence, time=datetime.datetime.now(datetime.UTC),
            agent_version="bench-simulator", health=documents.Health.HEALTHY,
            platform=documents.PlatformInfo(os="linux", arch="amd64"), **extra)
        self.client.publish(f"hedgerow/things/{self.thing}/status",
                            documents.render_bytes(report), qos=1)


class _Simulator:
    def __init__(self, port: int, things: list[str], delay: float) -> None:
        self.delay = delay
        self.due: list[tuple[float, int, _Device, Any]] = []
        self.reported = 0
        self._tie = 0
        self.devices = [_Device(t, port, self) for t in things]

    def schedule(self, when: float, device: _Device, desired: Any) -> None:
        self._tie += 1
        heapq.heappush(self.due, (when, self._tie, device, desired))

    def run(self, control: IO[str]) -> None:
        sel = selectors.DefaultSelector()
        for device in self.devices:
            sock = device.client.socket()
            assert sock is not None
            sel.register(sock, selectors.EVENT_READ, device)
        sel.register(control, selectors.EVENT_READ, None)
        ready = False
        last_misc = 0.0
        while True:
            for device in self.devices:
                if device.client.want_write():
                    device.client.loop_write()
            timeout = 0.05
            if self.due:
                timeout = max(0.0, min(timeout, self.due[0][0] - time.monotonic()))
            for key, _ in sel.select(timeout):
                if key.data is None:
                    if not control.readline():
                        return  # stdin closed: the benchmark is done
                    continue
                key.data.client.loop_read()
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, _, device, desired = heapq.heappop(self.due)
                if desired.revision == device.revision:  # not superseded meanwhile
                    device.report(desired)
                    self.reported += 1
            if now - last_misc > 1.0:
                last_misc = now
                for device in self.devices:
                    device.client.loop_misc()
            if not ready and all(d.subscribed for d in self.devices):
                ready = True
                print("ready", flush=True)

    def result(self) -> str:
        return json.dumps({"received": {d.thing: d.received for d in self.devices},
                           "reported": self.reported})


def _simulate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet simulate")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.2, help="simulated apply, seconds")
    parser.add_argument("--id", default="0")
    parser.add_argument("things", nargs="+")
    args = parser.parse_args(argv)
    sim = _Simulator(args.port, args.things, args.delay)
    try:
        sim.run(sys.stdin)
    finally:
        print(sim.result(), flush=True)
        for device in sim.devices:
            device.client.disconnect()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["simulate"]:
        sys.exit("usage: python -m bench._fleet simulate --port PORT THING ...")
    sys.exit(_simulate(sys.argv[2:]))
