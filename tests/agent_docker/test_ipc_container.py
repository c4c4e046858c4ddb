"""Component IPC from inside a container: an image with Python and the official SDK
(scripts/build-ipc-test-image.sh), run by a real agent with mountIpcSocket, as uid 65534,
talks to a process component through the agent's pub/sub — the container finds the
socket and its token where the SDK looks (the in-container path in the variable)."""

from __future__ import annotations

import json
import pathlib
import subprocess

import docker
import pytest

from hedgerow.core import documents
from tests.agent import ipc_support
from tests.conftest import ROOT
from tests.support.wait import wait_for

from .agent_support import DockerAgent, dagent, images  # noqa: F401 (fixtures)

IMAGE = "hedgerow/ipc-python:latest"
sdk = ipc_support.sdk  # the fixture


@pytest.fixture(scope="session")
def ipc_image(docker_client: docker.DockerClient) -> str:
    """Built once per machine (cached by the hash of its inputs)."""
    subprocess.run([str(ROOT / "scripts" / "build-ipc-test-image.sh"), IMAGE,
                    str(pathlib.Path(ROOT / ".venv"))], check=True, cwd=ROOT)
    docker_client.images.get(IMAGE)
    return IMAGE


def test_a_container_component_talks_over_ipc(dagent: DockerAgent,  # noqa: F811
                                              ipc_image: str, sdk: pathlib.Path) -> None:
    ops = ["*"]
    proc = ipc_support.sdk_component(sdk, "ipc.proc", ipc_support.policy(
        "ipc.proc", ops, ["box/#"]))
    dagent.start()
    dagent.deploy(proc)
    dagent.wait_states({"ipc.proc": "RUNNING"}, timeout=30)
    client = ipc_support.Client(dagent, "ipc.proc")
    client.connected()
    client.command("subscribe", id="out", topic="box/out")
    client.wait(lambda e: e["event"] == "subscribed", "subscribed")

    commands = [{"op": "subscribe", "id": "in", "topic": "box/in"},
                {"op": "publish", "topic": "box/out", "json": {"hello": "from a container"}}]
    box = documents.ResolvedComponent.model_validate({
        "name": "ipc.box", "version": "1.0.0",
        "configuration": ipc_support.policy("ipc.box", ops, ["box/#"]),
        "container": {"image": ipc_image, "user": "65534:65534", "mountIpcSocket": True,
                      "command": ["/usr/bin/python3", "-u", "/opt/ipc_component.py"],
                      "env": {"IPC_TEST_HOME": "/tmp",
                              "IPC_TEST_COMMANDS": json.dumps(commands)}}})
    dagent.deploy(proc, box)
    dagent.wait_states({"ipc.proc": "RUNNING", "ipc.box": "RUNNING"}, timeout=60)
    got = client.wait(lambda e: e.get("topic") == "box/out", "the container's message",
                      timeout=60)
    assert got["json"] == {"hello": "from a container"}
    env = dict(v.split("=", 1) for v in dagent.container("ipc.box").attrs["Config"]["Env"])
    assert env["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] == \
        "/run/hedgerow/ipc.sock"
    assert env["SVCUID"] == dagent.record("ipc.box")["token"]

    client.command("publish", topic="box/in", json={"reply": 1})

    def container_heard() -> bool:
        logs = dagent.cli("logs", "get", "ipc.box")
        return '"topic": "box/in"' in logs.stdout and '"reply": 1' in logs.stdout
    wait_for(container_heard, 60, "the container received the reply")
