"""The CLI over the control socket, cgroup limits, local deployments."""

from __future__ import annotations

import json
import pathlib

from hedgerow.core import deployment

from .conftest import THING, AgentProcess, rc, wait_for

RECIPE = """apiVersion: hedgerow.dev/v1alpha1
kind: Component
metadata: {name: com.example.hello-1.0.0}
spec:
  name: com.example.Hello
  version: 1.0.0
  defaultConfiguration: {message: hi}
  manifests:
    - lifecycle:
        run: {script: "echo {configuration:/message}; sleep 60"}
"""


def test_component_list_details_stop_restart(agent: AgentProcess) -> None:
    limits = deployment.RunWith.model_validate(
        {"systemResourceLimits": {"memory": "32Mi", "cpus": 0.5}})
    agent.deploy(rc("a", run_with=limits))
    agent.wait_states({"a": "RUNNING"})
    table = agent.cli("component", "list")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "VERSION", "STATE"]
    details = json.loads(agent.cli("component", "details", "a", "--output", "json").stdout)
    assert details["limits"]["memory.limit_in_bytes"] == str(32 * 1024 * 1024)
    assert details["limits"]["cpu.cfs_quota_us"] == "50000"
    assert "token" not in json.dumps(details).lower()
    pid = details["pid"]
    cgroup = pathlib.Path(f"/proc/{pid}/cgroup").read_text()
    assert f"memory:/hedgerow/{THING}/a" in cgroup
    assert agent.cli("component", "stop", "a").returncode == 0
    agent.wait_states({"a": "INSTALLED"})
    assert agent.cli("component", "restart", "a").returncode == 0
    agent.wait_states({"a": "RUNNING"})
    missing = agent.cli("component", "details", "nope")
    assert missing.returncode == 1 and "no component 'nope'" in missing.stderr


def test_local_deployment_create_list_remove_and_logs(
    agent: AgentProcess, tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "hello.yaml").write_text(RECIPE)
    created = agent.cli("deployment", "create", "--recipes", str(tmp_path),
                        "--merge", "com.example.Hello=1.0.0", "--update-config",
                        '{"com.example.Hello": {"merge": {"message": "bonjour"}}}')
    assert created.returncode == 0, created.stderr
    agent.wait_states({"com.example.Hello": "RUNNING"})
    log = agent.root / "logs" / "com.example.Hello.log"
    wait_for(lambda: log.exists() and "bonjour" in log.read_text())
    logs = agent.cli("logs", "get", "com.example.Hello")
    assert "bonjour" in logs.stdout
    wait_for(lambda: "SUCCEEDED" in agent.cli("deployment", "status", "local-1").stdout)
    listed = json.loads(agent.cli("deployment", "list", "-o", "json").stdout)
    assert listed[0]["id"] == "local-1" and listed[0]["outcome"] == "SUCCEEDED"
    assert agent.cli("deployment", "create", "--remove", "com.example.Hello").returncode == 0
    wait_for(lambda: agent.states() == {})


def test_cli_without_agent_says_so(tmp_path: pathlib.Path) -> None:
    probe = AgentProcess(tmp_path)
    result = probe.cli("component", "list")
    assert result.returncode == 1 and "no agent answers" in result.stderr
