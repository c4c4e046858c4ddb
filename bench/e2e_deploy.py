"""e2e_deploy: `kubectl apply` of a Deployment → the component RUNNING on a real device.

Everything real, on loopback: the test API server + etcd, mosquitto from `hedgerow broker
config` (TLS, client certificates, the ACL), `hedgerow controller`, and one `hedgerow agent
run` with its own key and certificate (the tests/e2e harness). Each sample applies a
Deployment targeting the device with a new process component (its Component applied
beforehand, untimed) and stops the clock when the agent's status file says RUNNING.

Baseline, in the same run on the same agent: the same kind of component started from a
local deployment (Component + Deployment YAML written to the device's deployments/), i.e.
the agent's own share of the path; the ratio is what the cloud path costs on top.
Target: p50 ≤ 2 s (Greengrass nucleus lite reports ~67 s for a cloud deployment).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import yaml

from bench import harness
from tests.e2e.conftest import Fleet
from tests.support.apiserver import ApiServer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = 7


def _component(name: str) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
            "metadata": {"name": f"{name.lower()}-1.0.0"},
            "spec": {"name": name, "version": "1.0.0",
                     "manifests": [{"platform": {"os": "linux"},
                                    "lifecycle": {"run": {"script": "exec sleep 600"}}}]}}


def _deployment(name: str, component: str, thing: str) -> dict[str, Any]:
    return {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"target": {"thing": thing},
                     "components": [{"name": component, "version": "1.0.0"}]}}


def _running(root: pathlib.Path, component: str) -> bool:
    try:
        status = json.loads((root / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return any(c["name"] == component and c["state"] == "RUNNING"
               for c in status.get("components", []))


def _clock(root: pathlib.Path, component: str, start: float, timeout: float = 60) -> float:
    while not _running(root, component):
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{component} not RUNNING after {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - start


def run() -> Iterator[harness.Figure]:
    home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-bench-e2e-"))
    home.chmod(0o711)  # components run as nobody
    cloud: list[float] = []
    local: list[float] = []
    with ApiServer(home / "apiserver") as server:
        server.apply_crds(ROOT / "crds")
        fleet = Fleet(server, home)
        try:
            fleet.broker.start()
            fleet.start_controller()
            agent = fleet.agents["gateway-1"]
            fleet.register(agent)
            agent.start()
            thing, root = agent.thing, agent.root
            deadline = time.monotonic() + 60  # the device's first report reached the cluster
            while not fleet.device_status(agent).get("health"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the device never reported")
                time.sleep(0.1)
            for i in range(SAMPLES):
                # Local baseline: the agent's own path, from files to RUNNING.
                name = f"com.example.Local{i}"
                text = yaml.safe_dump_all([_component(name),
                                           _deployment(f"local-{i}", name, thing)])
                tmp = root / "deployments" / f".local-{i}.tmp"
                tmp.write_text(text)
                start = time.perf_counter()
                tmp.replace(root / "deployments" / f"local-{i}.yaml")
                local.append(_clock(root, name, start))
                # The cloud path: kubectl apply → controller → broker → connector → agent.
                name = f"com.example.Cloud{i}"
                fleet.apply([_component(name)])
                time.sleep(0.5)  # the controller has seen the Component
                manifest = yaml.safe_dump(_deployment(f"cloud-{i}", name, thing))
                start = time.perf_counter()
                server.kubectl("apply", "-f", "-", input=manifest)
                cloud.append(_clock(root, name, start))
        finally:
            fleet.down()
    shutil.rmtree(home, ignore_errors=True)
    yield harness.Figure("apply_to_running_p50_s", harness.percentile(cloud, 50), "s",
                         harness.percentile(local, 50), "<= 2 s")
    yield harness.Figure("apply_to_running_max_s", max(cloud), "s", max(local),
                         "informational")
