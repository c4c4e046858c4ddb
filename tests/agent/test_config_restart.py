"""A configuration change restarts a component only when its rendered lifecycle changes
(Greengrass's rule): the same process (same pid) keeps running through a change no step
uses; a change its run step renders replaces it."""

from __future__ import annotations

from hedgerow.core import component
from tests.support.wait import wait_for

from .conftest import AgentProcess, pids_with_marker, rc

LIFE = component.Lifecycle(setenv={"GREETING": "{configuration:/greeting}"},
                           run=component.Step(script='echo "$GREETING"; exec sleep 600'))


def test_a_config_only_change_keeps_the_process(agent: AgentProcess) -> None:
    first = agent.deploy(rc("cfg-keep", lifecycle=LIFE,
                            configuration={"greeting": "hi", "batch": 10}))
    agent.wait_states({"cfg-keep": "RUNNING"})
    # RUNNING is reported once the gate (the recorded pid) is spawned; the shell it forks
    # may not exist yet. Its greeting in the log says it does: only then is the set of
    # the component's processes complete, to be compared after the change.
    log = agent.root / "logs" / "cfg-keep.log"
    wait_for(lambda: log.exists() and "hi" in log.read_text(), 10, "the greeting")
    pid = agent.record("cfg-keep")["process"]["pid"]
    pids = pids_with_marker(agent.root, "cfg-keep")
    assert pid in pids

    # `batch` is read over IPC, never rendered into the lifecycle: no restart.
    second = agent.deploy(rc("cfg-keep", lifecycle=LIFE,
                             configuration={"greeting": "hi", "batch": 20}))
    assert second.revision != first.revision
    agent.passes(3)
    assert agent.record("cfg-keep")["process"]["pid"] == pid
    assert pids_with_marker(agent.root, "cfg-keep") == pids  # not one process restarted
    assert agent.record("cfg-keep")["spec"]["configuration"]["batch"] == 20
    assert agent.states() == {"cfg-keep": "RUNNING"}
    assert "configuration changed; keeps running" in agent.log.read_text()

    # `greeting` reaches the process through setenv: it restarts with the new value.
    agent.deploy(rc("cfg-keep", lifecycle=LIFE, configuration={"greeting": "ho", "batch": 20}))
    agent.passes(3)
    agent.wait_states({"cfg-keep": "RUNNING"})
    assert agent.record("cfg-keep")["process"]["pid"] != pid
    assert not pids & pids_with_marker(agent.root, "cfg-keep")
