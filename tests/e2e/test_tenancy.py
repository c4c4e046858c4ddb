"""The review's attack, on real agents: from another namespace, a ThingGroup selecting
every device, a Component of the same name running `id`, `runWith.posixUser: root` and a
configuration merge injecting shell, at the highest priority; and, inside the team's own
restricted namespace, `posixUser: root`. Each fails with a condition; the team's devices
keep their processes (same pids, not root) and keep converging on the team's changes.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import yaml

from tests.agent.conftest import pids_with_marker
from tests.e2e.conftest import SUFFIX, Fleet, examples, wait_for
from tests.e2e.test_fleet import HELLO, both, component_roots, condition, converged
from tests.support.passes import wait_passes

API = "hedgerow.dev/v1alpha1"


def _uids(pid: int) -> list[int]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("Uid:"))
    return [int(x) for x in line.split()[1:]]


def _ready(fleet: Fleet, name: str, namespace: str) -> tuple[str, str, str]:
    doc = json.loads(fleet.kubectl("get", "deployments.hedgerow.dev", name, "-n", namespace,
                                   "-o", "json"))
    for c in (doc.get("status") or {}).get("conditions", []):
        if c["type"] == "Ready":
            return c["status"], c["reason"], c["message"]
    return "", "", ""


def test_the_attacks_fail_and_the_team_goes_on(fleet: Fleet) -> None:
    g1, g2, _ = fleet.agents.values()
    fleet.apply(examples())
    for agent in (g1, g2):
        wait_for(functools.partial(converged, fleet, agent, both()), 60,
                 f"{agent.thing} to converge")
    pids = {a.thing: a.pids() for a in (g1, g2)}
    canary = fleet.home / f"pwned-{SUFFIX}"
    zzz = f"zzz-{SUFFIX}"
    fleet.kubectl("create", "namespace", zzz)
    attack = [
        {"apiVersion": API, "kind": "ThingGroup",
         "metadata": {"name": "everything", "namespace": zzz}, "spec": {"selector": {}}},
        {"apiVersion": API, "kind": "Component",
         "metadata": {"name": "shadow", "namespace": zzz},
         "spec": {"name": HELLO, "version": "1.0.0", "manifests": [{"lifecycle": {
             "run": {"script": f"id > {canary}-shadow; sleep 1000"}}}]}},
        {"apiVersion": API, "kind": "Deployment",
         "metadata": {"name": "takeover", "namespace": zzz},
         "spec": {"target": {"thingGroup": "everything"}, "priority": 1000,
                  "components": [{"name": HELLO, "version": "1.0.0",
                                  "runWith": {"posixUser": "root"},
                                  "configurationUpdate": {"merge": {
                                      "message": f"$(id > {canary}-merge)"}}}]}},
    ]
    try:
        fleet.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(attack))
        wait_for(lambda: _ready(fleet, "takeover", zzz)[:2] == ("False", "EmptyTarget"), 30,
                 "EmptyTarget on the attacker's deployment")

        # Inside the team's own namespace (restricted by default): root is refused.
        as_root = {"apiVersion": API, "kind": "Deployment",
                   "metadata": {"name": "as-root", "namespace": "default"},
                   "spec": {"target": {"thingGroup": "factory-1"}, "priority": 5,
                            "components": [{"name": HELLO, "version": "1.0.0",
                                            "runWith": {"posixUser": "root"}}]}}
        fleet.apply([as_root])
        status, _reason, message = wait_for(
            lambda: (r := _ready(fleet, "as-root", "default"))[1] == "PrivilegeViolation"
            and r, 30, "PrivilegeViolation on as-root")
        assert status == "False"
        assert "runWith.posixUser: runs as 'root'" in message and "'restricted'" in message

        # The team changes its greeting: it reaches the devices; nothing else moved.
        team = next(d for d in examples() if d["metadata"]["name"] == "factory-1-apps")
        team["spec"]["components"][0]["configurationUpdate"]["merge"]["message"] = "still ours"
        fleet.apply([team])
        for agent in (g1, g2):
            wait_for(lambda agent=agent: f"still ours from {agent.thing}"  # type: ignore[misc]
                     in agent.cli("logs", "get", HELLO), 30, f"{agent.thing}'s new greeting")
            wait_for(functools.partial(converged, fleet, agent, both()), 30,
                     f"{agent.thing} to converge again")
        for agent in (g1, g2):  # they looked again: still nothing of the attacker's ran
            wait_passes(agent.root)
        assert not list(fleet.home.glob(f"pwned-{SUFFIX}*")), "the attacker's code ran"
        for agent in (g1, g2):
            # The dependency-free Telemetry kept its process; HelloWorld restarted for the
            # new greeting, as nobody, never root.
            # Its one root is hedgerow-gate, whose root half stays the step's parent only
            # to record the exit code; everything of the step itself runs as nobody.
            assert len(component_roots(agent, HELLO)) == 1  # one, not doubled
            step = [p for p in pids_with_marker(agent.root, HELLO)
                    if not os.readlink(f"/proc/{p}/exe").endswith("/hedgerow-gate")]
            assert step and all(0 not in _uids(p) for p in step), (
                agent.thing, {p: _uids(p) for p in step})
            assert agent.pids()[HELLO] != pids[agent.thing][HELLO]
        assert condition(fleet.deployment("factory-1-apps"), "Stalled")[0] == "False"
    finally:
        fleet.kubectl("delete", "deployments.hedgerow.dev,thinggroups,components.hedgerow.dev",
                      "--all", "-n", zzz, "--ignore-not-found")
        fleet.kubectl("delete", "deployments.hedgerow.dev", "as-root", "-n", "default",
                      "--ignore-not-found")
