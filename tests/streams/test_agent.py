"""hedgerow.StreamManager run by a real agent from its shipped manifest, and components
using the official SDK from their own processes (as `nobody`): a dependent gets the port
and its token and can do everything; a component that is not a dependent cannot connect,
even with a token the agent gave it."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
from typing import Any

import yaml

from hedgerow.core import component, documents, streams
from tests.agent.conftest import AgentProcess, rc
from tests.conftest import ROOT
from tests.support.net import free_port
from tests.support.wait import wait_for

MANIFEST = ROOT / "manifests" / "components" / "stream-manager.yaml"

DEPENDENT = r'''
import json, os, sys
from stream_manager import *
from stream_manager.exceptions import *
out = {"port": os.environ.get("STREAM_MANAGER_SERVER_PORT"),
       "has_token": bool(os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"))}
c = StreamManagerClient()
c.create_message_stream(MessageStreamDefinition(
    name="telemetry", strategy_on_full=StrategyOnFull.OverwriteOldestData,
    flush_on_write=True))
out["seqs"] = [c.append_message("telemetry", b"reading %d" % i) for i in range(20)]
got = c.read_messages("telemetry", ReadMessagesOptions(
    desired_start_sequence_number=5, min_message_count=3, max_message_count=3))
out["read"] = [[m.sequence_number, m.payload.decode()] for m in got]
info = c.describe_message_stream("telemetry")
out["newest"] = info.storage_status.newest_sequence_number
out["streams"] = c.list_streams()
c.close()
open("result.json", "w").write(json.dumps(out))
'''

INTRUDER = r'''
import json, os
from stream_manager import StreamManagerClient
from stream_manager.exceptions import ConnectFailedException
# Not a dependent: it knows the port and holds a real token of its own (SVCUID).
os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = os.environ["SVCUID"]
try:
    StreamManagerClient(port=int(os.environ["PORT"]))
    result = "connected"
except ConnectFailedException:
    result = "refused"
open("result.json", "w").write(json.dumps(result))
'''


def component_python(home: pathlib.Path) -> str:
    """A Python that `nobody` can run with Hedgerow and the SDK importable (this venv's
    interpreter lives under /root, which nobody may traverse)."""
    import site

    path = home / "python"
    path.write_text("#!/bin/sh\n"
                    f"PYTHONPATH={ROOT / 'src'}:{site.getsitepackages()[0]} "
                    "exec /usr/bin/python3 \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def stream_manager(python: str, port: int, **config: Any) -> documents.ResolvedComponent:
    """The shipped manifest, resolved as the agent gets it, on a free port."""
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]
    return documents.ResolvedComponent(
        name=spec["name"], version=spec["version"],
        lifecycle=component.Lifecycle.model_validate(spec["manifests"][0]["lifecycle"]),
        configuration={**spec["defaultConfiguration"], "python": python,
                       "port": port, **config})


def script(home: pathlib.Path, name: str, text: str) -> str:
    path = home / f"{name}.py"
    path.write_text(text)
    path.chmod(0o644)
    return f"{component_python(home)} {path} && sleep 3600"


def result(agent: AgentProcess, name: str) -> Any:
    path = agent.root / "work" / name / "result.json"
    try:
        wait_for(path.exists, 60, f"{name}'s result")
    except AssertionError as exc:
        logs = {p.name: p.read_text()[-800:] for p in (agent.root / "logs").glob("*.log")}
        raise AssertionError(f"{exc}; component logs: {logs}") from None
    return json.loads(path.read_text())


def test_dependent_uses_the_sdk_and_others_are_refused(
        agent: AgentProcess, agent_home: pathlib.Path) -> None:
    port = free_port()
    dep = documents.ResolvedDependency(name=streams.COMPONENT_NAME, version="1.0.0",
                                       type=component.DependencyType.HARD)
    agent.deploy(
        stream_manager(component_python(agent_home), port),
        rc("com.example.StreamUser", run=script(agent_home, "user", DEPENDENT),
           dependencies=[dep]),
        rc("com.example.Intruder",
           run=f"PORT={port} " + script(agent_home, "intruder", INTRUDER)))
    got = result(agent, "com.example.StreamUser")
    assert got["port"] == str(port) and got["has_token"]
    assert got["seqs"] == list(range(20))
    assert got["read"] == [[5, "reading 5"], [6, "reading 6"], [7, "reading 7"]]
    assert got["newest"] == 19 and got["streams"] == ["telemetry"]
    assert result(agent, "com.example.Intruder") == "refused"

    # The agent wrote digests, never tokens, in a file only root can write.
    tokens = agent.root / streams.TOKENS_FILE
    assert tokens.stat().st_uid == 0 and tokens.stat().st_mode & 0o777 == 0o644
    token = agent.record("com.example.StreamUser")["token"]
    assert token not in tokens.read_text()
    assert streams.render_tokens_file([token]).decode() == tokens.read_text()
    # Its data lives in the stream manager's own work folder.
    data = agent.root / "work" / streams.COMPONENT_NAME / "streams" / b"telemetry".hex()
    assert any(data.glob("*.seg"))


WRITER = r'''
import os, threading, time
from stream_manager import *
from stream_manager.exceptions import *

def client():
    while True:
        try:
            return StreamManagerClient(request_timeout=5)
        except Exception:
            time.sleep(0.1)

c = client()
try:
    c.create_message_stream(MessageStreamDefinition(
        name="durable", strategy_on_full=StrategyOnFull.RejectNewData, flush_on_write=True))
except InvalidRequestException:
    pass  # restarted: the stream is there

def writer(n):
    c, i = client(), 0
    with open(f"acked-{n}.txt", "a", buffering=1) as out:
        while not os.path.exists("stop"):
            payload = f"w{n}-{i}-" + "x" * 200
            try:
                seq = c.append_message("durable", payload.encode())
            except Exception:
                time.sleep(0.05)
                try:
                    c.close()
                except Exception:
                    pass
                c = client()
                continue
            out.write(f"{seq} {payload}\n")
            i += 1

threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
open("done", "w").close()
'''


def test_kill9_of_the_component_loses_no_acknowledged_append(
        agent: AgentProcess, agent_home: pathlib.Path) -> None:
    """The agent restarts a stream manager killed with SIGKILL in the middle of four
    concurrent flushOnWrite appenders; every append it acknowledged is there after."""
    from stream_manager import ReadMessagesOptions, StreamManagerClient
    from stream_manager.exceptions import NotEnoughMessagesException

    from tests.agent.conftest import pids_with_marker

    port = free_port()
    dep = documents.ResolvedDependency(name=streams.COMPONENT_NAME, version="1.0.0",
                                       type=component.DependencyType.HARD)
    agent.deploy(stream_manager(component_python(agent_home), port),
                 rc("com.example.Writer", run=script(agent_home, "writer", WRITER),
                    dependencies=[dep]))
    work = agent.root / "work" / "com.example.Writer"

    def acked() -> dict[int, str]:
        out = {}
        for path in work.glob("acked-*.txt"):
            for line in path.read_text().splitlines():
                seq, _, payload = line.partition(" ")
                out[int(seq)] = payload
        return out

    def servers() -> set[int]:
        """The stream manager's Python (not the gate that is its parent)."""
        found = set()
        for pid in pids_with_marker(agent.root, streams.COMPONENT_NAME):
            with contextlib.suppress(OSError):
                argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[1:3] == [b"-m", b"hedgerow.streams"]:
                    found.add(pid)
        return found

    wait_for(lambda: len(acked()) > 200, 60, "200 acknowledged appends")
    [victim] = wait_for(servers, 10, "the stream manager's process")
    os.kill(victim, signal.SIGKILL)
    before = len(acked())
    wait_for(lambda: servers() - {victim}, 60, "the agent to restart the stream manager")
    wait_for(lambda: len(acked()) > before + 100, 60, "appends to go on after the restart")
    (work / "stop").touch()
    wait_for((work / "done").exists, 30, "the writers to stop")

    os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = agent.record("com.example.Writer")["token"]
    try:
        client = StreamManagerClient(port=port)
    finally:
        del os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    stored: dict[int, str] = {}
    with client:
        while True:
            try:
                got = client.read_messages("durable", ReadMessagesOptions(
                    desired_start_sequence_number=len(stored), max_message_count=500))
            except NotEnoughMessagesException:
                break
            stored.update((m.sequence_number, m.payload.decode()) for m in got)
    assert sorted(stored) == list(range(len(stored)))
    lost = {s: p for s, p in acked().items() if stored.get(s) != p}
    assert not lost, f"{len(lost)} acknowledged appends lost or changed"


def test_a_new_dependent_is_let_in_and_a_removed_one_shut_out(
        agent: AgentProcess, agent_home: pathlib.Path) -> None:
    """The stream manager re-reads the agent's tokens file when it changes: no restart
    lets a new dependent in, and a removed component's token stops working."""
    from stream_manager import StreamManagerClient
    from stream_manager.exceptions import ConnectFailedException

    port = free_port()
    dep = documents.ResolvedDependency(name=streams.COMPONENT_NAME, version="1.0.0",
                                       type=component.DependencyType.HARD)
    sm = stream_manager(component_python(agent_home), port)
    first = rc("com.example.First", run="sleep 3600", dependencies=[dep])
    agent.deploy(sm, first)
    agent.wait_states({streams.COMPONENT_NAME: "RUNNING", "com.example.First": "RUNNING"}, 60)
    old_token = agent.record("com.example.First")["token"]

    def answer(token: str) -> str:
        os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
        try:
            StreamManagerClient(port=port).close()
        except ConnectFailedException:
            return "refused"
        except ConnectionError:
            return "down"
        finally:
            del os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
        return "connected"

    wait_for(lambda: answer(old_token) != "down", 30, "the stream manager's port")
    assert answer(old_token) == "connected"
    pid = agent.record(streams.COMPONENT_NAME)["process"]["pid"]
    second = rc("com.example.Second", run="sleep 3600", dependencies=[dep])
    agent.deploy(sm, second)  # First removed, Second added; the stream manager stays up
    agent.wait_states({streams.COMPONENT_NAME: "RUNNING", "com.example.Second": "RUNNING"}, 60)
    assert answer(agent.record("com.example.Second")["token"]) == "connected"
    assert answer(old_token) == "refused"
    assert agent.record(streams.COMPONENT_NAME)["process"]["pid"] == pid  # not restarted
