"""The aws.greengrass.Cli operations over IPC through the OFFICIAL client, from a
component the agent runs as `nobody`: list, details, pause (the cgroup freezer: the
processes stop, the kernel says so) and resume, restart, stop, local deployments (the
same as the CLI's and the deployments/ folder's), token validation — each allowed only
by an aws.greengrass.Cli policy, default deny."""

from __future__ import annotations

import pathlib
import time
from typing import Any

from hedgerow.agent import cliipc

from .conftest import AgentProcess, pids_with_marker, rc, wait_for
from .ipc_support import Client, policy
from .test_ipc_configuration import component, config_sdk, sdk, tagged

__all__ = ["config_sdk", "sdk"]  # fixtures

WORKER = "cli.worker"
TICK = 'i=0; while true; do i=$((i+1)); echo $i > "$HOME/tick.tmp"; ' \
       'mv "$HOME/tick.tmp" "$HOME/tick"; sleep 0.05; done'
EXTRA = """apiVersion: hedgerow.dev/v1alpha1
kind: Component
metadata: {name: cli.extra-1.0.0}
spec:
  name: cli.extra
  version: 1.0.0
  manifests:
    - lifecycle:
        run: {script: "sleep 600"}
"""


def call(client: Client, tag: str, method: str, **args: Any) -> dict[str, Any]:
    client.command("call", method=method, args=args, tag=tag)
    return tagged(client, tag)


def ticks(agent: AgentProcess) -> int:
    try:
        return int((agent.root / "work" / WORKER / "tick").read_text())
    except (OSError, ValueError):
        return 0


def states_of(pids: set[int]) -> set[str]:
    out = set()
    for pid in pids:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        out.add(stat[stat.rindex(")") + 2])
    return out


def test_cli_operations_over_ipc(agent: AgentProcess, config_sdk: pathlib.Path) -> None:
    ops = policy("cli.ops", ["*"], ["*"], service=cliipc.CLI)
    agent.deploy(component(config_sdk, "cli.ops", ops), component(config_sdk, "cli.nosy", {}),
                 rc(WORKER, TICK, configuration={"k": "v"}))
    agent.wait_states({"cli.ops": "RUNNING", "cli.nosy": "RUNNING", WORKER: "RUNNING"}, 30)
    cli, nosy = Client(agent, "cli.ops"), Client(agent, "cli.nosy")
    cli.connected()
    nosy.connected()

    listed = call(cli, "list", "list_components")["response"]["components"]
    assert {c["componentName"]: c["state"] for c in listed} == {
        "cli.ops": "RUNNING", "cli.nosy": "RUNNING", WORKER: "RUNNING"}
    details = call(cli, "details", "get_component_details", component_name=WORKER)
    assert details["response"]["componentDetails"] == {
        "componentName": WORKER, "version": "1.0.0", "state": "RUNNING",
        "configuration": {"k": "v"}}

    # Default deny: no aws.greengrass.Cli policy, no listing, and the refusal says what
    # to write.
    refused = call(nosy, "nosy", "list_components")
    assert refused["error"] == "UnauthorizedError"
    assert "aws.greengrass.Cli" in refused["message"]
    assert "aws.greengrass#ListComponents" in refused["message"]

    # Pause: every process of the worker is frozen (the kernel's view) and its counter
    # stops; resume: it counts again.
    wait_for(lambda: ticks(agent) > 3, 10, "the worker ticking")
    assert "error" not in call(cli, "pause", "pause_component", component_name=WORKER)
    procs = pids_with_marker(agent.root, WORKER)
    freezer = pathlib.Path(f"/sys/fs/cgroup/freezer/hedgerow/{agent.thing}/{WORKER}")
    wait_for(lambda: (freezer / "freezer.state").read_text().strip() == "FROZEN", 10,
             "frozen")
    assert procs and procs <= {int(p) for p in (freezer / "cgroup.procs").read_text().split()}
    assert states_of(procs) == {"D"}  # frozen tasks sleep uninterruptibly in the freezer
    before = ticks(agent)
    time.sleep(0.5)  # the one fixed wait: proving that nothing happens takes time
    assert ticks(agent) == before
    assert "error" not in call(cli, "resume", "resume_component", component_name=WORKER)
    wait_for(lambda: ticks(agent) > before + 3, 10, "ticking again")
    assert agent.states()[WORKER] == "RUNNING"

    # Restart: a new process. Stop: held until the next revision.
    pid = agent.record(WORKER)["process"]["pid"]
    assert call(cli, "restart", "restart_component", component_name=WORKER)[
        "response"]["restartStatus"] == "SUCCEEDED"
    wait_for(lambda: (agent.record(WORKER).get("process") or {}).get("pid") not in
             (None, pid), 15, "restarted")
    call(cli, "pause2", "pause_component", component_name=WORKER)  # a paused one stops too
    assert call(cli, "stop", "stop_component", component_name=WORKER)[
        "response"]["stopStatus"] == "SUCCEEDED"
    wait_for(lambda: agent.states()[WORKER] == "INSTALLED", 15, "stopped")
    wait_for(lambda: not pids_with_marker(agent.root, WORKER), 10, "no worker process")
    missing = call(cli, "missing", "get_component_details", component_name="cli.none")
    assert missing["error"] == "ResourceNotFoundError"

    # Tokens: a component's SVCUID is valid, anything else is not.
    token = agent.record("cli.nosy")["token"]
    assert call(cli, "tok", "validate_authorization_token", token=token)[
        "response"]["isValid"] is True
    assert call(cli, "bad", "validate_authorization_token", token="x" * 32)[
        "response"]["isValid"] is False

    # A local deployment, the same as `hedgerow deployment create`.
    recipes = agent.root / "deployments" / "recipes"
    recipes.mkdir(mode=0o700, exist_ok=True)
    (recipes / "cli.extra.yaml").write_text(EXTRA)
    created = call(cli, "create", "create_local_deployment",
                   root_component_versions_to_add={"cli.extra": "1.0.0"})
    deployment_id = created["response"]["deploymentId"]
    wait_for(lambda: agent.states().get("cli.extra") == "RUNNING", 30, "cli.extra running")
    listed_deployments = call(cli, "deps", "list_local_deployments")["response"][
        "localDeployments"]
    assert deployment_id in [d["deploymentId"] for d in listed_deployments]
    wait_for(lambda: call(cli, f"status-{time.monotonic()}", "get_local_deployment_status",
                          deployment_id=deployment_id)["response"]["deployment"]["status"]
             == "SUCCEEDED", 30, "the local deployment succeeded")
    shown = agent.cli("deployment", "list", "-o", "json")
    assert deployment_id in shown.stdout
    paths = call(cli, "paths", "create_local_deployment", recipe_directory_path="/root")
    assert paths["error"] == "InvalidArgumentsError"
    assert "recipeDirectoryPath is not taken over IPC" in paths["message"]
