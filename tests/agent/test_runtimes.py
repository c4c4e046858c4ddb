"""A third runtime plugs into the agent without touching its loop (issue 14).

`EchoServers` serves built-in components in the agent's own process — each a TCP echo
server on loopback — the way a built-in service or a Pod on a k3s node would be served
later. It only implements `runtime.Runtime` (verbs yield lifecycle events); the real
`Agent` plans it, applies its events through the one state table, recovers it when it
fails, removes it, and runs process components beside it as usual.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hedgerow.agent import agent as agent_
from hedgerow.agent import records, runtime
from hedgerow.agent import settings as settings_
from hedgerow.core import deployment, documents
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.lifecycle import Event
from tests.agent.conftest import AgentProcess, pids_with_marker, rc, remove_cgroups
from tests.support.wait import wait_for

Change = runtime.Change


class EchoServers(runtime.Base):
    """Components whose configuration says `servedBy: in-process`: a loopback TCP server
    in the agent that answers each line with `<component>: <line>`."""

    kind = "in-process"

    def __init__(self, services: runtime.Services) -> None:
        self.services = services
        self.servers: dict[str, asyncio.Server] = {}
        self.ports: dict[str, int] = {}

    def claims(self, comp: documents.ResolvedComponent) -> bool:
        return comp.configuration.get("servedBy") == "in-process"

    def observe_one(self, rec: records.Record, now: float) -> tuple[str, list[Change]]:
        server = self.servers.get(rec.name)
        if rec.state is State.RUNNING and (server is None or not server.is_serving()):
            return rec.spec_hash, [Change(Event.FAILED, "server stopped serving")]
        return rec.spec_hash, []

    async def install(self, job: runtime.Job) -> runtime.Changes:
        yield Change(Event.INSTALLED, "built in")

    async def start(self, job: runtime.Job) -> runtime.Changes:
        name = job.comp.name
        yield Change(Event.START)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async for line in reader:
                writer.write(name.encode() + b": " + line)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        self.servers[name] = server
        self.ports[name] = server.sockets[0].getsockname()[1]
        yield Change(Event.STARTED, f"serving on port {self.ports[name]}")

    async def stop(self, rec: records.Record, *, remove: bool,
                   replacing: bool) -> runtime.Changes:
        await self._close(rec.name)
        yield Change(Event.STOP_REQUESTED)
        if rec.state is State.STOPPING:
            yield Change(Event.STOPPED, "stopped")

    async def recover(self, job: runtime.Job) -> runtime.Changes:
        await self._close(job.comp.name)
        yield Change(Event.RECOVER, "recovering")

    async def _close(self, name: str) -> None:
        server = self.servers.pop(name, None)
        self.ports.pop(name, None)
        if server is not None:
            server.close()
            await server.wait_closed()


class RunningAgent:
    """A real Agent, in this process, on a loop of its own (a thread)."""

    def __init__(self, root: pathlib.Path, thing: str) -> None:
        self.echo: EchoServers | None = None

        def make(services: runtime.Services) -> runtime.Runtime:
            self.echo = EchoServers(services)
            return self.echo

        self.root, self.thing = root, thing
        self.agent = agent_.Agent(root, thing, settings_.Settings(resync_s=0.2, settle_s=0.3),
                                  runtimes=[make])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self.agent.run(),), daemon=True)
        self.thread.start()
        wait_for(lambda: (root / "agent.sock").exists(), 15, "the control socket")

    def deploy(self, *components: documents.ResolvedComponent) -> documents.DesiredState:
        ref = documents.DeploymentRef.model_validate({"name": "cloud"})
        doc = documents.render_desired_state(self.thing, [ref], list(components))
        target = self.root / "desired" / "desired.json"
        target.with_suffix(".tmp").write_bytes(documents.render_bytes(doc))
        target.with_suffix(".tmp").replace(target)
        return doc

    def states(self) -> dict[str, str]:
        try:
            status: dict[str, Any] = json.loads((self.root / "state" / "status.json")
                                                .read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {c["name"]: c["state"] for c in status.get("components", [])}

    def call(self, name: str, text: str) -> str:
        assert self.echo is not None
        with socket.create_connection(("127.0.0.1", self.echo.ports[name]), 5) as conn:
            conn.sendall(text.encode() + b"\n")
            return conn.makefile().readline().rstrip("\n")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.agent.shutdown)
        self.thread.join(20)


@pytest.fixture
def running(agent_home: pathlib.Path) -> Iterator[RunningAgent]:
    agent = RunningAgent(agent_home / "root", f"gw-rt-{uuid.uuid4().hex[:8]}")
    try:
        yield agent
    finally:
        agent.deploy()  # nothing: the agent removes what it runs
        wait_for(lambda: not agent.states() and not pids_with_marker(agent.root), 20,
                 "everything removed")
        agent.stop()
        # Its thing's own folder: a new name each test, so no later agent sweeps it
        # (one hedgerow/gw-rt-*/ was left per run).
        remove_cgroups(agent.thing)


ECHO = "com.example.Echo"
SLEEPER = "com.example.Sleeper"


def test_a_third_runtime_runs_beside_processes_without_touching_the_loop(
    running: RunningAgent,
) -> None:
    echo = rc(ECHO, configuration={"servedBy": "in-process"})
    running.deploy(echo, rc(SLEEPER, run="sleep 60"))
    wait_for(lambda: running.states() == {ECHO: "RUNNING", SLEEPER: "RUNNING"}, 20,
             f"both running (last: {running.states()})")
    assert running.call(ECHO, "hello") == f"{ECHO}: hello"  # served, for real
    assert pids_with_marker(running.root)  # the process component is a real process
    assert running.agent.records[ECHO].process is None  # no process behind the built-in

    # It fails behind the agent's back: its observation reports it, the agent's state
    # table takes it to ERRORED and, after the backoff, recovers it — a new server.
    assert running.echo is not None
    old_port = running.echo.ports[ECHO]
    running.loop.call_soon_threadsafe(running.echo.servers[ECHO].close)
    wait_for(lambda: running.agent.records[ECHO].errors, 10, "the failure recorded")
    wait_for(lambda: running.states().get(ECHO) == "RUNNING"
             and running.echo is not None and running.echo.ports.get(ECHO, old_port)
             != old_port, 15, f"recovered (last: {running.states()})")
    assert running.call(ECHO, "again") == f"{ECHO}: again"

    # Removed from the desired state: stopped and forgotten; the process carries on.
    running.deploy(rc(SLEEPER, run="sleep 60"))
    wait_for(lambda: running.states() == {SLEEPER: "RUNNING"}, 15, "the built-in removed")
    assert ECHO not in running.echo.servers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_port), 2).close()
    assert pids_with_marker(running.root)


@pytest.mark.parametrize(("posix_user", "named"), [
    ("hedgerow-no-such-user", "no such user on this device: 'hedgerow-no-such-user'"),
    ("nobody:hedgerow-no-such-group", "no such group on this device: "
                                      "'hedgerow-no-such-group'"),
])
def test_an_unknown_user_is_a_permanent_failure_that_names_it(
    agent: AgentProcess, posix_user: str, named: str,
) -> None:
    # Users are the device's: a recipe may name one this device does not have. That is
    # bad input (permanent, named), not a crash of the pass and not a KeyError's "'x'".
    agent.deploy(rc("com.example.Keep"))
    agent.wait_states({"com.example.Keep": "RUNNING"})
    pid = agent.record("com.example.Keep")["process"]["pid"]
    ghost = agent.deploy(rc("com.example.Keep"), rc(
        "com.example.Ghost", run_with=deployment.RunWith(posix_user=posix_user)))
    wait_for(lambda: agent.outcome(ghost) == "ROLLED_BACK", 15, "ROLLED_BACK")
    assert named in agent.status()["deployment"]["reason"]
    assert agent.states() == {"com.example.Keep": "RUNNING"}  # the last good keeps running
    assert agent.record("com.example.Keep")["process"]["pid"] == pid
