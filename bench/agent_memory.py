"""Agent PSS with 10 running process components, and with 10 IPC clients connected
(targets <= 40 MB), beside `python -c pass`."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Generator, Iterator

from bench import _agent, harness


def run() -> Iterator[harness.Figure]:
    # `python -c pass` exits at once; the same interpreter blocked on stdin is its PSS.
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        baseline = yield from _with_processes(idle.pid)
        yield from _with_ipc_clients(baseline)
    finally:
        idle.communicate(b"")


def _with_processes(idle: int) -> Generator[harness.Figure, None, float]:
    agent = _agent.BenchAgent()
    try:
        names = [f"c{i}" for i in range(10)]
        agent.deploy(_agent.processes(names))
        _agent.wait(lambda: agent.running(names))
        baseline = harness.pss_mb(idle)
        yield harness.Figure("agent_pss_mb", harness.pss_mb(agent.proc.pid), "MB", baseline,
                             "<= 40 MB")
        shims = [int(p) for p in subprocess.run(
            ["pgrep", "-f", "logpipe.py"], capture_output=True, text=True).stdout.split()]
        total = sum(harness.pss_mb(p) for p in shims if _owned(p, agent))
        yield harness.Figure("logpipe_pss_mb_total", total, "MB", baseline,
                             "report only: one small log writer per batch of spawned steps")
        gates = [p for p in _pids() if _is_gate(p, agent)]
        yield harness.Figure("gate_pss_mb_total", sum(harness.pss_mb(p) for p in gates), "MB",
                             baseline, f"report only: hedgerow-gate's root half, the parent "
                             f"of each step ({len(gates)} of them)")
    finally:
        agent.close()
    return baseline


def _with_ipc_clients(baseline: float) -> Iterator[harness.Figure]:
    """10 components connected over IPC with the official SDK, each subscribed, after
    1,000 messages have been fanned out to them: agent PSS (target <= 40 MB)."""
    from awsiot.greengrasscoreipc import model

    from bench import _ipc

    agent = _agent.BenchAgent()
    clients = []
    try:
        names = [f"c{i}" for i in range(10)]
        _ipc.start(agent, names)
        got = [0] * len(names)
        for i, name in enumerate(names):
            ipc = _ipc.client(agent, name)

            def count(_event: object, i: int = i) -> None:
                got[i] += 1
            ipc.subscribe_to_topic(topic="bench/#", on_stream_event=count)
            clients.append(ipc)
        message = model.PublishMessage(binary_message=model.BinaryMessage(message=b"x" * 256))
        for _ in range(1000):
            clients[0].publish_to_topic(topic="bench/memory", publish_message=message)
        _agent.wait(lambda: min(got) >= 1000)
        yield harness.Figure("agent_pss_mb_ipc10", harness.pss_mb(agent.proc.pid), "MB", baseline,
                             "<= 40 MB")
    finally:
        for ipc in clients:
            ipc.close()
        agent.close()


def _pids() -> list[int]:
    return [int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()]


def _is_gate(pid: int, agent: _agent.BenchAgent) -> bool:
    """A hedgerow-gate still running as root for one of this agent's steps."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return False
    return exe.endswith("hedgerow-gate") and f"HEDGEROW_ROOT={agent.root}".encode() in environ


def _owned(pid: int, agent: _agent.BenchAgent) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(agent.root).encode() in f.read()
    except OSError:
        return False


if __name__ == "__main__":
    for figure in run():
        print(json.dumps(figure.to_json()))
