"""kill -9 of the agent: workloads keep running, a restart adopts them, no duplicates."""

from __future__ import annotations

import os
import signal

from hedgerow.core import component

from .conftest import AgentProcess, pids_with_marker, rc, wait_for


def test_kill9_then_restart_adopts_without_duplicates(agent: AgentProcess) -> None:
    agent.deploy(rc("a", "sleep 60 & wait"), rc("b"))
    agent.wait_states({"a": "RUNNING", "b": "RUNNING"})
    pid_a = agent.record("a")["process"]["pid"]
    # RUNNING means spawned: let the shells fork their children before taking stock.
    # Per component: hedgerow-gate (root, the step's parent), its shell and a sleep.
    wait_for(lambda: len(pids_with_marker(agent.root)) == 6, 20, "gate, sh + sleep for a and b")
    before = pids_with_marker(agent.root)
    agent.kill9()
    assert pids_with_marker(agent.root) == before  # workloads survive the agent
    agent.start()
    agent.wait_states({"a": "RUNNING", "b": "RUNNING"})
    wait_for(lambda: agent.passes_reported() >= 1)
    assert agent.record("a")["process"]["pid"] == pid_a
    assert pids_with_marker(agent.root) == before
    # The adopted process is still watched: its exit is noticed and it is restarted.
    os.killpg(pid_a, signal.SIGKILL)
    wait_for(lambda: (agent.record("a").get("process") or {}).get("pid") not in (None, pid_a))
    agent.wait_states({"a": "RUNNING", "b": "RUNNING"})


def test_kill9_mid_install_leaves_no_orphan_and_converges(agent: AgentProcess) -> None:
    life = component.Lifecycle.model_validate({
        "install": {"script": "test -f {work:path}/done || { touch {work:path}/started; "
                              "sleep 2; touch {work:path}/done; }"},
        "run": {"script": "sleep 60"}})
    agent.deploy(rc("slow", lifecycle=life))
    wait_for(lambda: (agent.root / "work" / "slow" / "started").exists(), 10)
    agent.kill9()
    agent.start()
    agent.wait_states({"slow": "RUNNING"}, timeout=20)
    # Exactly one process group of this component (no second run, no stray install).
    pids = pids_with_marker(agent.root)
    assert {os.getpgid(p) for p in pids} == {agent.record("slow")["process"]["pid"]}


def test_process_that_died_while_agent_was_down_is_restarted(agent: AgentProcess) -> None:
    agent.deploy(rc("a"))
    agent.wait_states({"a": "RUNNING"})
    pid = agent.record("a")["process"]["pid"]
    agent.kill9()
    os.killpg(pid, signal.SIGKILL)
    agent.start()
    wait_for(lambda: (agent.record("a").get("process") or {}).get("pid") not in (None, pid), 15)
    agent.wait_states({"a": "RUNNING"})
