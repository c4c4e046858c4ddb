"""A real agent with a cloud connection, for the tests of components' cloud messaging
(tests/agent/test_ipc_cloud.py) and of what reaches the cloud through the agent's
session (tests/streams/test_mqtt_export.py): its identity signed by the fleet CA of
tests/identity's `fleet` fixture (real mosquitto, mTLS, the rendered ACL)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
from collections.abc import Callable, Iterator

import pytest

from tests.identity.conftest import Fleet

from .conftest import THING, AgentProcess, pids_with_marker, remove_cgroups, wait_for


@pytest.fixture
def make_cloud_agent(agent_home: pathlib.Path, fleet: Fleet,
                     ) -> Iterator[Callable[..., AgentProcess]]:
    """A real agent whose identity the fleet CA signed: its connector reaches mosquitto."""
    started: list[AgentProcess] = []

    def make(*extra: str) -> AgentProcess:
        root = agent_home / "root"
        (root / "desired").mkdir(parents=True)
        (root / "deployments").mkdir()
        fleet.device(THING, root=root)
        agent = AgentProcess(root)
        agent.start(*extra)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
        for pid in pids_with_marker(agent.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    remove_cgroups(THING)
    if started:
        print(started[0].log.read_text()[-4000:])


def connected(agent: AgentProcess) -> None:
    wait_for(lambda: "connected to the cloud broker" in agent.log.read_text(), 30,
             "the agent's cloud connection")
