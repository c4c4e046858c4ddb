"""PauseComponent / ResumeComponent on a container component, through the OFFICIAL SDK
client from a process component the agent runs as `nobody` (with an aws.greengrass.Cli
policy): Docker's pause freezes the container (Docker says `paused`), the agent does not
take it for a failed one however many passes go by, resume continues it, and a stop of a
paused container resumes it first and stops it cleanly."""

from __future__ import annotations

import pathlib

from hedgerow.agent import cliipc
from tests.agent import ipc_support
from tests.agent.test_ipc_cli import call
from tests.agent.test_ipc_configuration import component, config_sdk
from tests.support.wait import wait_for

from .agent_support import DockerAgent, cc, dagent, images  # noqa: F401 (fixtures)

sdk = ipc_support.sdk  # the fixture
__all__ = ["config_sdk", "sdk"]

BOX = "ipc.pausebox"


def test_a_container_is_paused_and_resumed(dagent: DockerAgent,  # noqa: F811
                                           config_sdk: pathlib.Path) -> None:
    ops = ipc_support.policy("cli.boss", ["*"], ["*"], service=cliipc.CLI)
    boss = component(config_sdk, "cli.boss", ops)
    dagent.start()
    dagent.deploy(boss, cc(BOX))
    dagent.wait_states({"cli.boss": "RUNNING", BOX: "RUNNING"}, timeout=60)
    client = ipc_support.Client(dagent, "cli.boss")
    client.connected()
    pid = dagent.container(BOX).attrs["State"]["Pid"]

    assert "error" not in call(client, "pause", "pause_component", component_name=BOX)
    assert dagent.container(BOX).status == "paused"
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    assert stat[stat.rindex(")") + 2] == "D"  # the kernel's freezer holds it
    dagent.passes(3)
    assert dagent.states()[BOX] == "RUNNING"  # paused on purpose: not a failure
    assert dagent.container(BOX).attrs["State"]["Pid"] == pid
    assert dagent.record(BOX)["paused"] is True

    assert "error" not in call(client, "resume", "resume_component", component_name=BOX)
    assert dagent.container(BOX).status == "running"
    assert dagent.container(BOX).attrs["State"]["Pid"] == pid

    # Paused, then stopped: resumed first, then stopped cleanly (not left frozen).
    call(client, "pause2", "pause_component", component_name=BOX)
    assert call(client, "stop", "stop_component", component_name=BOX)[
        "response"]["stopStatus"] == "SUCCEEDED"
    wait_for(lambda: dagent.states()[BOX] == "INSTALLED", 30, "stopped")
    assert dagent.container(BOX).status == "exited"
