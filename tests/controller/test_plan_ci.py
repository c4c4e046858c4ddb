"""`hedgerow plan` in CI: the baseline is what the controller published to each device
(a failing Deployment's devices keep its last good generation), only problems the planned
files cause or change fail it, the rest is context; a legend; --output json."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for

EXAMPLES = ROOT / "examples"
GOOD = next(d for d in yaml.safe_load_all((EXAMPLES / "deployment.yaml").read_text())
            if d["metadata"]["name"] == "factory-1-apps")


def plan(cluster: Cluster, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hedgerow", "plan", "--kubeconfig",
                           cluster.kubeconfig, *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def ready(obj: dict[str, Any]) -> tuple[str, str] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c["status"], c["reason"]
    return None


@pytest.mark.apiserver
@pytest.mark.mqtt
def test_plan_of_the_good_version_of_a_failing_deployment_shows_no_change(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess], tmp_path: Path,
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLES))
    controller_factory()
    for thing in ("gateway-1", "gateway-2"):
        wait_for(lambda t=thing: cluster.get("coredevice", t, None).get("status", {})
                 .get("desiredGenerations", {}).get("default/factory-1-apps") == 1, 60,
                 f"{thing} on generation 1")
    # Generation 2 cannot resolve: the controller keeps every device on generation 1.
    broken = json.loads(json.dumps(GOOD))
    broken["spec"]["components"][0]["version"] = "9.9.9"
    cluster.apply({**broken, "metadata": {"name": "factory-1-apps", "namespace": "default"}})
    def stalled() -> tuple[str, str] | None:
        obj = cluster.get("deployment", "factory-1-apps")
        done = obj.get("status", {}).get("observedGeneration") == 2
        return ready(obj) if done and ready(obj) != ("True", "Succeeded") else None
    failing = wait_for(stalled, 30, "generation 2 failing")
    assert failing[1] == "UnsatisfiableDependency", failing
    assert devices.components("gateway-1") == {"com.example.HelloWorld": "1.0.0",
                                               "com.example.Telemetry": "1.0.0"}

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    result = plan(cluster, good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "gateway-1: no change", "gateway-2: no change", "gateway-3: no change",
        "0 device(s) would change"]
    assert failing[1] not in result.stderr  # the failure these files fix


@pytest.mark.apiserver
def test_other_teams_problems_are_context_and_only_the_files_own_problems_fail(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLES))
    other_team = [
        {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Component",
         "metadata": {"name": "hello-2", "namespace": "default"},
         "spec": {"name": "com.example.HelloWorld", "version": "2.0.0",
                  "manifests": [{"lifecycle": {"run": {"script": "echo 2"}}}]}},
        {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",  # conflicts
         "metadata": {"name": "pin-hello-2", "namespace": "default"},
         "spec": {"target": {"thing": "gateway-1"},
                  "components": [{"name": "com.example.HelloWorld", "version": "2.0.0"}]}},
        {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",  # targets nothing
         "metadata": {"name": "nobody-home", "namespace": "default"},
         "spec": {"target": {"thing": "gateway-99"},
                  "components": [{"name": "com.example.HelloWorld", "version": "1.0.0"}]}},
    ]
    cluster.apply(*other_team)
    mine = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "gateway-3-hello"},
            "spec": {"target": {"thing": "gateway-3"},
                     "components": [{"name": "com.example.HelloWorld", "version": "1.0.0"}]}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(mine))

    result = plan(cluster, path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[-3:] == ["gateway-3:", "  + com.example.HelloWorld 1.0.0",
                        "1 device(s) would change (+ added, ~ changed, - removed)"]
    context = [line for line in result.stderr.splitlines() if line.startswith("context")]
    assert any("VersionConflict" in line for line in context), result.stderr
    assert any("default/nobody-home: EmptyTarget" in line for line in context)
    assert "problem:" not in result.stderr

    as_json = json.loads(plan(cluster, path, "--output", "json").stdout)
    by_thing = {d["thing"]: d for d in as_json["devices"]}
    assert by_thing["gateway-3"]["changes"] == [
        {"op": "added", "name": "com.example.HelloWorld", "before": None, "after": "1.0.0",
         "what": "", "permissions": []}]  # no accessControl: it may call no IPC operation
    assert as_json["changed"] == 1 and as_json["problems"] == []
    assert len(as_json["context"]) == len(context)

    # A file that adds its own problem (a second conflict on gateway-1) fails the plan.
    clash = {**mine, "metadata": {"name": "gateway-1-hello-1"},
             "spec": {"target": {"thing": "gateway-1"}, "components": [
                 {"name": "com.example.Telemetry", "version": "9.0.0"}]}}
    path.write_text(yaml.safe_dump(clash))
    result = plan(cluster, path, "-o", "json")
    assert result.returncode == 1
    assert any(p.startswith("default/gateway-1-hello-1: ")
               for p in json.loads(result.stdout)["problems"])
