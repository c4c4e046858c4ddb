"""Official-SDK IPC clients on a bench agent: components that may use local pub/sub,
and clients connected with their tokens (the bench runs as root and reads the records,
as only root can)."""

from __future__ import annotations

import json
from typing import Any

from awsiot.greengrasscoreipc import connect
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from bench import _agent
from hedgerow.core import accesscontrol, component, documents


def components(names: list[str]) -> list[documents.ResolvedComponent]:
    """Idle components whose policies allow every pub/sub operation on every topic."""
    policy = {"accessControl": {accesscontrol.PUBSUB: {"bench:pubsub:1": {
        "operations": ["*"], "resources": ["*"]}}}}
    return [documents.ResolvedComponent(
        name=n, version="1.0.0", configuration=policy,
        lifecycle=component.Lifecycle(run=component.Step(script="sleep 600")))
        for n in names]


def start(agent: _agent.BenchAgent, names: list[str]) -> None:
    agent.deploy(components(names))
    _agent.wait(lambda: agent.running(names) and agent.recorded(names))


def client(agent: _agent.BenchAgent, name: str, *,
           executor: Any = None) -> GreengrassCoreIPCClientV2:
    """A client connected as component `name`; stream handlers run on the SDK's thread
    unless an executor is given."""
    records = json.loads((agent.root / "state" / "components.json").read_text())
    ipc = connect(ipc_socket=str(agent.root / "ipc" / "ipc.sock"),
                  authtoken=records[name]["token"])
    return GreengrassCoreIPCClientV2(client=ipc, executor=executor)
