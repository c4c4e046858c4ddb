"""`hedgerow plan` against the real API server: per-device changes, nothing applied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.controller.conftest import Cluster

pytestmark = pytest.mark.apiserver


def plan(cluster: Cluster, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hedgerow", "plan", "--kubeconfig",
                           cluster.kubeconfig, *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_plan_prints_changes_per_device_and_applies_nothing(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(ROOT / "examples"))
    # Drop Telemetry, change HelloWorld's message, and add WebStatus for factory-1.
    change = {
        "apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "factory-1-apps"},
        "spec": {"target": {"thingGroup": "factory-1"}, "components": [
            {"name": "com.example.HelloWorld", "version": "1.0.0",
             "configurationUpdate": {"merge": {"message": "changed"}}},
            {"name": "com.example.WebStatus", "version": "1.0.0"}]},
    }
    path = tmp_path / "change.yaml"
    path.write_text(yaml.safe_dump(change))
    result = plan(cluster, path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gateway-1:",
        "  ~ com.example.HelloWorld 1.0.0 (configuration)",
        "  - com.example.Telemetry 1.0.0",
        "  + com.example.WebStatus 1.0.0",
        "gateway-2:",
        "  ~ com.example.HelloWorld 1.0.0 (configuration)",
        "  - com.example.Telemetry 1.0.0",
        "  + com.example.WebStatus 1.0.0",
        "gateway-3: no change",
        "2 device(s) would change (+ added, ~ changed, - removed)",
    ]
    live = cluster.get("deployment", "factory-1-apps")
    assert [c["name"] for c in live["spec"]["components"]] == [
        "com.example.HelloWorld", "com.example.Telemetry"]


def test_plan_reports_problems_with_exit_1(cluster: Cluster, tmp_path: Path) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(ROOT / "examples"))
    bad = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
           "metadata": {"name": "bad"},
           "spec": {"target": {"thing": "gateway-3"},
                    "components": [{"name": "com.example.Nope", "version": "1.0.0"}]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = plan(cluster, path)
    assert result.returncode == 1
    assert "gateway-3: would keep its current state (UnknownComponent)" in result.stdout
    assert "default/bad: UnknownComponent" in result.stderr


def test_plan_shows_effective_ipc_permissions_and_refuses_unknown_operations(
        cluster: Cluster, tmp_path: Path) -> None:
    """Each added component's IPC permissions as the device will enforce them (defaults
    merged with the deployment's accessControl); a merged policy naming an operation
    that does not exist is a problem of these files."""
    cluster.kubectl("apply", "-n", "default", "-f", str(ROOT / "examples"))
    extra = {"accessControl": {"aws.greengrass.ipc.pubsub": {"more": {
        "operations": ["aws.greengrass#PublishToTopic"], "resources": ["alerts/#"]}}}}
    ipc = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "Deployment",
           "metadata": {"name": "ipc"},
           "spec": {"target": {"thing": "gateway-3"}, "components": [
               {"name": "com.example.SensorListener", "version": "1.0.0"},
               {"name": "com.example.SensorPublisher", "version": "1.0.0",
                "configurationUpdate": {"merge": extra}}]}}
    path = tmp_path / "ipc.yaml"
    path.write_text(yaml.safe_dump(ipc))
    result = plan(cluster, path)
    assert result.returncode == 0, result.stderr
    pubsub = "aws.greengrass.ipc.pubsub aws.greengrass#"
    assert result.stdout.splitlines()[-6:-1] == [
        "gateway-3:",
        "  + com.example.SensorListener 1.0.0",
        f"      may call {pubsub}SubscribeToTopic: example/sensors/+",
        "  + com.example.SensorPublisher 1.0.0",
        f"      may call {pubsub}PublishToTopic: example/sensors/{{iot:thingName}}, alerts/#",
    ]
    extra["accessControl"]["aws.greengrass.ipc.pubsub"]["more"]["operations"] = [
        "aws.greengrass#Publish"]
    path.write_text(yaml.safe_dump(ipc))
    result = plan(cluster, path)
    assert result.returncode == 1
    assert ("gateway-3: com.example.SensorPublisher: configuration.accessControl."
            "aws.greengrass.ipc.pubsub.more.operations: unknown operation(s) "
            "['aws.greengrass#Publish']") in result.stderr
