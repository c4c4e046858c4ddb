"""The agent outlives the device running out of disk and of file descriptors (issue 12:
"every long-lived thread or task survives an I/O error and retries").

A real agent (root) on a tiny tmpfs that is filled up, and a real agent whose
RLIMIT_NOFILE is cut while it runs: the running component is untouched (its log writer
drops lines instead of dying and taking it down with SIGPIPE), the agent keeps answering
and retrying, and once space or descriptors come back it converges on the document that
arrived meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import resource
import subprocess
import time
from collections.abc import Iterator

import pytest

from hedgerow.core import documents
from tests.agent.conftest import THING, AgentProcess, pids_with_marker, rc, remove_cgroups
from tests.support.passes import wait_passes
from tests.support.wait import wait_for

TICKER = "while :; do echo tick; sleep 0.1; done"
# 20 KB/s of 2 KB lines (within the log budget): a page of the log fills in 0.2 s, so
# the log writer meets the full disk at once.
LOUD = "while :; do head -c 2000 /dev/zero | tr '\\000' t; echo; sleep 0.1; done"


def _stage(agent: AgentProcess, *components: documents.ResolvedComponent,
           ) -> tuple[documents.DesiredState, pathlib.Path]:
    """A desired document written beside desired.json, to be renamed into place later
    (a rename needs no free space: it is how the connector lands documents, too)."""
    ref = documents.DeploymentRef.model_validate(
        {"name": "cloud", "policies": {"failureHandling": "DO_NOTHING"}})
    doc = documents.render_desired_state(agent.thing, [ref], list(components))
    staged = agent.root / "desired" / ".staged.json"
    staged.write_bytes(documents.render_bytes(doc))
    return doc, staged


def _pid(agent: AgentProcess, name: str) -> int:
    return int(agent.record(name)["process"]["pid"])


@pytest.fixture
def tmpfs_agent(agent_home: pathlib.Path) -> Iterator[AgentProcess]:
    root = agent_home / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0711", "tmpfs", str(root)],
                   check=True)
    a = AgentProcess(root)
    try:
        (root / "desired").mkdir()
        (root / "deployments").mkdir()
        a.start()
        yield a
    finally:
        a.stop()
        for pid in pids_with_marker(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        remove_cgroups(THING)
        print(a.log.read_text()[-6000:] if a.log.exists() else "")
        subprocess.run(["umount", "-l", str(root)], check=False)


def _fill(path: pathlib.Path) -> None:
    """Write until the file system says ENOSPC."""
    with path.open("wb", buffering=0) as out:
        block = b"\0" * 65536
        while True:
            try:
                out.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:  # the last few bytes
            try:
                out.write(b"\0" * 512)
            except OSError:
                break


def test_a_full_disk_is_survived_and_the_agent_converges_once_space_returns(
    tmpfs_agent: AgentProcess,
) -> None:
    agent = tmpfs_agent
    first = agent.deploy(rc("com.example.Ticker", run=LOUD))
    agent.wait_states({"com.example.Ticker": "RUNNING"})
    wait_for(lambda: agent.outcome(first) == "SUCCEEDED", 10, "SUCCEEDED")
    ticker = _pid(agent, "com.example.Ticker")
    doc, staged = _stage(agent, rc("com.example.Ticker", run=LOUD),
                         rc("com.example.Late", run="echo late; sleep 60"))

    filler = agent.root / "filler"
    _fill(filler)
    staged.replace(agent.root / "desired" / "desired.json")
    wait_for(lambda: "No space left on device" in agent.log.read_text(), 15,
             "the agent meeting the full disk")
    # While full: the agent is alive and answers, the component logs into nothing but
    # runs on (its log writer did not die, so no SIGPIPE).
    # Each poll starts a CLI interpreter: 5.5 s of 10 on a loaded machine.
    wait_for(lambda: "com.example.Ticker" in agent.cli("component", "list").stdout, 30,
             "the control socket answering")
    wait_passes(agent.root, 3)  # a while full: passes keep failing, the agent goes on
    assert agent.proc is not None and agent.proc.poll() is None
    os.kill(ticker, 0)

    filler.unlink()
    agent.wait_states({"com.example.Ticker": "RUNNING", "com.example.Late": "RUNNING"},
                      timeout=30)
    wait_for(lambda: agent.outcome(doc) == "SUCCEEDED", 15, "the new document SUCCEEDED")
    assert _pid(agent, "com.example.Ticker") == ticker  # never restarted
    logs = agent.root / "logs"
    wait_for(lambda: "could not write the log: [Errno 28] No space left on device" in
             "".join(f.read_text(errors="replace")
                     for f in logs.glob("com.example.Ticker.log*")),
             10, "the drop said in the component's log")
    # the pass failed the same way many times: said once (log changes, not repeats)
    assert agent.log.read_text().count("reconcile pass failed") <= 3


def test_running_out_of_file_descriptors_is_survived(agent: AgentProcess) -> None:
    first = agent.deploy(rc("com.example.Steady", run=TICKER))
    agent.wait_states({"com.example.Steady": "RUNNING"})
    wait_for(lambda: agent.outcome(first) == "SUCCEEDED", 10, "SUCCEEDED")
    steady = _pid(agent, "com.example.Steady")
    assert agent.proc is not None
    pid = agent.proc.pid
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    doc, staged = _stage(agent, rc("com.example.Steady", run=TICKER),
                         rc("com.example.Second", run="sleep 60"))
    # Not one descriptor more than it holds now: every open, pipe and accept fails.
    held = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (held, before[1]))
    try:
        staged.replace(agent.root / "desired" / "desired.json")
        wait_for(lambda: "Too many open files" in agent.log.read_text(), 15,
                 "the agent out of descriptors")
        short_since = time.monotonic()
        while time.monotonic() - short_since < 3:  # a while short: retries keep failing
            assert agent.proc.poll() is None
            os.kill(steady, 0)
            time.sleep(0.2)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    agent.wait_states({"com.example.Steady": "RUNNING", "com.example.Second": "RUNNING"},
                      timeout=30)
    wait_for(lambda: agent.outcome(doc) == "SUCCEEDED", 15, "the new document SUCCEEDED")
    assert _pid(agent, "com.example.Steady") == steady
    # the agent's own shortage is not charged to the component: no error, not BROKEN
    assert agent.record("com.example.Second")["errors"] == []
    assert json.loads(agent.cli("component", "list", "-o", "json").stdout)


def test_a_long_lived_task_that_dies_is_logged_and_started_again(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The catch-all every long-lived task of the agent runs under (the file watcher is
    one): an error ends one run, not the task; each restart wakes the loop."""
    import asyncio

    from hedgerow.agent import agent as agent_

    the_agent = agent_.Agent(tmp_path / "root", "gw-supervise")
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise OSError(errno.EMFILE, "Too many open files")
        the_agent.shutdown()  # third run: fine, and the agent is stopping

    async def main() -> None:
        await asyncio.wait_for(the_agent.supervise("watching files", flaky), 10)

    asyncio.run(main())
    assert runs == [0, 1, 2]
    assert the_agent.wake.is_set()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["watching files: OSError: [Errno 24] Too many open files (retrying)"]
