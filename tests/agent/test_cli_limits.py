"""The CLI over the control socket, cgroup limits, local deployments."""

from __future__ import annotations

import json
import os
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
    wait_for(lambda: f"memory:/hedgerow/{THING}/a" in pathlib.Path(
        f"/proc/{pid}/cgroup").read_text(), 5, "a in its memory cgroup")
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


def _cpu_cgroup(pid: int) -> str:
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") or controllers == "":
            return path
    raise AssertionError(f"no cpu cgroup for {pid}")


def test_each_component_has_its_own_cgroup_and_stop_finds_daemons(
    agent: AgentProcess,
) -> None:
    # "b" starts a daemon that leaves its process group (setsid): its cgroup lists it.
    limits = deployment.RunWith.model_validate({"systemResourceLimits": {"memory": "64Mi"}})
    agent.deploy(rc("a", run_with=limits),
                 rc("b", "setsid sh -c 'echo $$ > daemon.pid; exec sleep 300' & sleep 300"))
    agent.wait_states({"a": "RUNNING", "b": "RUNNING"})
    a_pid = agent.record("a")["process"]["pid"]
    b_pid = agent.record("b")["process"]["pid"]
    # RUNNING means spawned: the agent's mover thread puts each into its cgroup (off the
    # loop) before its gate opens.
    wait_for(lambda: _cpu_cgroup(a_pid) == f"/hedgerow/{THING}/a", 20, "a in its cgroup")
    wait_for(lambda: _cpu_cgroup(b_pid) == f"/hedgerow/{THING}/b", 20, "b in its cgroup")
    assert pathlib.Path(f"/sys/fs/cgroup/memory/hedgerow/{THING}/a").is_dir()
    assert not pathlib.Path(f"/sys/fs/cgroup/memory/hedgerow/{THING}/b").exists()
    daemon_file = agent.root / "work" / "b" / "daemon.pid"
    wait_for(lambda: daemon_file.exists() and daemon_file.read_text().strip(), 20, "daemon.pid")
    daemon = int(daemon_file.read_text())
    assert os.getsid(daemon) != os.getsid(b_pid)  # really outside the group and session
    assert _cpu_cgroup(daemon) == f"/hedgerow/{THING}/b"
    assert agent.cli("component", "stop", "b").returncode == 0
    agent.wait_states({"a": "RUNNING", "b": "INSTALLED"})
    wait_for(lambda: not pathlib.Path(f"/proc/{daemon}").exists()
             or pathlib.Path(f"/proc/{daemon}/stat").read_text().split(") ")[1][0] == "Z",
             20, "the daemon that left b's process group")
    # A device that never ran a container never loaded Docker, nor looks for orphans.
    assert not (agent.root / "state" / "docker-used").exists()


def test_a_large_batch_lands_in_their_cgroups_and_the_agent_stays_out(
    agent: AgentProcess,
) -> None:
    # Moved off the agent's loop, then their gates open: each ends in its own cgroup,
    # and the agent itself does not share its components' CPU.
    names = [f"n{i}" for i in range(8)]
    agent.deploy(*(rc(n) for n in names))
    agent.wait_states(dict.fromkeys(names, "RUNNING"))
    for name in names:
        pid = agent.record(name)["process"]["pid"]
        wait_for(lambda p=pid, n=name: _cpu_cgroup(p) == f"/hedgerow/{THING}/{n}", 20,
                 f"{name} in its cgroup")
    assert agent.proc is not None
    assert _cpu_cgroup(agent.proc.pid) == _cpu_cgroup(os.getpid())  # where it was started
