"""A newer revision must not erase what the device actually ran (issue 13).

The exact timing of the report: v1 reaches RUNNING, and within the settle period (the
default 2 s) v2 arrives, whose install times out. ROLLBACK must bring back v1 with its
configuration — not the document that last *settled* (here the empty start-up one,
which would remove the component) — and v1 must not stay IN_PROGRESS for good.
"""

from __future__ import annotations

import json

from hedgerow.core import component

from .conftest import AgentProcess, rc, wait_for


def test_failed_update_within_the_settle_period_rolls_back_to_what_ran(
        agent: AgentProcess) -> None:
    agent.stop()
    agent.start("--settle", "2")  # the default settle period, as a user's device has it
    empty = agent.deploy()  # what a freshly registered device gets from the controller
    wait_for(lambda: agent.outcome(empty) == "SUCCEEDED")

    v1 = agent.deploy(rc("web", "sleep 60", configuration={"greeting": "from v1"}))
    agent.wait_states({"web": "RUNNING"})
    assert agent.outcome(v1) == "IN_PROGRESS"  # still settling: v1 is not last good yet

    slow_install = component.Lifecycle.model_validate(
        {"install": {"script": "sleep 30", "timeoutSeconds": 1},
         "run": {"script": "sleep 60"}})
    v2 = agent.deploy(rc("web", version="2.0.0", lifecycle=slow_install,
                         configuration={"greeting": "from v2"}))
    wait_for(lambda: agent.outcome(v2) == "ROLLED_BACK", 20)
    assert agent.status()["deployment"]["rolledBackTo"] == v1.revision

    agent.wait_states({"web": "RUNNING"})
    assert agent.status()["appliedRevision"] == v1.revision
    web = agent.record("web")
    assert web["version"] == "1.0.0"
    assert web["spec"]["configuration"] == {"greeting": "from v1"}
    listed = agent.cli("component", "list", "-o", "json")
    assert [c["name"] for c in json.loads(listed.stdout)] == ["web"], listed.stderr

    # v1 is settled as superseded (not left IN_PROGRESS), and says by what.
    history = json.loads((agent.root / "state" / "deployments.json").read_text())
    assert history["outcomes"][v1.revision]["outcome"] == "SUPERSEDED"
    deployments = json.loads(agent.cli("deployment", "list", "-o", "json").stdout)
    by_revision = {d["revision"]: d for d in deployments}
    assert by_revision[v1.revision]["outcome"] == "SUPERSEDED"
    assert v2.revision[:12] in by_revision[v1.revision]["reason"]
    assert by_revision[v2.revision]["outcome"] == "ROLLED_BACK"
    assert by_revision[empty.revision]["outcome"] == "SUCCEEDED"


def test_update_superseding_an_unfinished_revision_rolls_back_to_the_last_good_one(
        agent: AgentProcess) -> None:
    """v1 never ran healthy (a component still ERRORED, retrying, when v2 came): v2
    failing goes back to the last good document, and v1 is SUPERSEDED, not IN_PROGRESS
    for good."""
    good = agent.deploy(rc("base", "sleep 60"))
    wait_for(lambda: agent.outcome(good) == "SUCCEEDED")
    v1 = agent.deploy(rc("base", "sleep 60"), rc("extra", "exit 1"))
    wait_for(lambda: agent.states().get("extra") == "ERRORED")
    assert agent.outcome(v1) == "IN_PROGRESS"
    failing = component.Lifecycle.model_validate(
        {"install": {"script": "exit 4"}, "run": {"script": "sleep 60"}})
    v2 = agent.deploy(rc("base", "sleep 60"), rc("extra", lifecycle=failing))
    wait_for(lambda: agent.outcome(v2) == "ROLLED_BACK", 20)
    assert agent.status()["deployment"]["rolledBackTo"] == good.revision
    agent.wait_states({"base": "RUNNING"})
    history = json.loads((agent.root / "state" / "deployments.json").read_text())
    assert history["outcomes"][v1.revision]["outcome"] == "SUPERSEDED"
