"""Containers that try to bind the device (issue 12: "bind sources are checked as strings:
`/proc/self/root/<agent root>/state` passed and a container wrote into the agent's
state; /etc, /root and the Docker socket are accepted without any privilege").

Real agent (root), real dockerd, real containers doing exactly that. Each attack is
refused with the component, the field and the reason; the good container keeps running
(same container), and nothing lands where the attacker aimed.
"""

from __future__ import annotations

import os
from typing import Any

from tests.agent import conftest as agent_conftest
from tests.agent_docker.agent_support import DockerAgent, cc
from tests.support.wait import wait_for

WRITER = "echo pwned > /x/pwned 2>/dev/null; trap 'exit 0' TERM; sleep 1000 & wait"


def _deployment(dagent: DockerAgent, revision: str) -> dict[str, Any]:
    found: dict[str, Any] = dagent.status().get("deployment") or {}
    return found if found.get("revision") == revision else {}


def _good_running(dagent: DockerAgent) -> str:
    good = dagent.deploy(cc("com.example.Good"))
    dagent.wait_states({"com.example.Good": "RUNNING"})
    wait_for(lambda: dagent.outcome(good) == "SUCCEEDED", 15, "SUCCEEDED")
    found = dagent.container_id("com.example.Good")
    assert found is not None
    return found


def test_host_binds_above_the_ceiling_are_refused_as_a_whole(dagent: DockerAgent) -> None:
    dagent.start()
    good = _good_running(dagent)
    doc = dagent.deploy(cc("com.example.Good"), cc(
        "com.example.Evil", command=["/bin/sh", "-c", WRITER],
        volumes=[{"source": "/etc", "target": "/x"},
                 {"source": "/var/run/docker.sock", "target": "/var/run/docker.sock"}]))
    wait_for(lambda: _deployment(dagent, doc.revision).get("outcome") == "REJECTED", 15,
             "REJECTED")
    reason = _deployment(dagent, doc.revision)["reason"]
    assert ("com.example.Evil: container.volumes[0].source: binds host path '/etc'"
            in reason)
    assert "container.volumes[1].source" in reason
    assert "needs privilege level 'privileged', granted 'baseline'" in reason
    dagent.passes(2)
    assert dagent.container_id("com.example.Good") == good
    assert dagent.container_id("com.example.Evil") is None
    assert not os.path.exists("/etc/pwned")


def test_binds_are_checked_as_the_kernel_resolves_them(dagent: DockerAgent) -> None:
    """The device's operator allows privileged components; these do not ask for
    privilege, so they get only their own folders — whatever path spells the others."""
    agent_conftest.AgentProcess.start(dagent, "--max-privilege", "privileged",
                                      env=dict(os.environ))
    good = _good_running(dagent)
    state = dagent.root / "state"
    for source, why in [
        (f"/proc/self/root{state}", f"binding {state} would expose the agent's root"),
        # the kernel may refuse even root this one (ptrace rules): refused, either way
        (f"/proc/1/root{dagent.root}/desired", "/proc/1/root"),
        ("/etc", "binding /etc is a host path outside the component's own folders"),
        ("/root", "binding /root is a host path outside the component's own folders"),
        ("/var/run/docker.sock", "binding /run/docker.sock is the container runtime's "
                                 "socket"),
        ("/proc/sys/kernel", "is a kernel interface"),
    ]:
        doc = dagent.deploy(cc("com.example.Good"), cc(
            "com.example.Evil", command=["/bin/sh", "-c", WRITER],
            volumes=[{"source": source, "target": "/x"}]))
        wait_for(lambda d=doc: _deployment(dagent, d.revision).get("outcome")  # type: ignore[misc]
                 in ("FAILED", "ROLLED_BACK"), 15, f"{source} refused")
        reason = _deployment(dagent, doc.revision)["reason"]
        assert ("com.example.Evil: refused: com.example.Evil: container.volumes[0].source: "
                in reason)
        assert why in reason, reason
        assert dagent.container_id("com.example.Evil") is None
        assert dagent.container_id("com.example.Good") == good
    assert not (state / "pwned").exists()
    assert not os.path.exists("/etc/pwned") and not os.path.exists("/root/pwned")


def test_a_link_planted_in_the_work_folder_is_not_followed(dagent: DockerAgent) -> None:
    """Below `privileged` the device's ceiling already refuses a bind inside the work
    folder (core/privilege); here the operator allows privilege and the component does
    not ask for it, so the render-time check on the real file system is what refuses."""
    agent_conftest.AgentProcess.start(dagent, "--max-privilege", "privileged",
                                      env=dict(os.environ))
    root = dagent.root
    # Version 1 binds its own work folder (allowed) and plants links and a folder there.
    planter = ("ln -s {root}/state /w/evil; ln -s / /w/host; mkdir -p /w/data; "
               "trap 'exit 0' TERM; sleep 1000 & wait").replace("{root}", str(root))
    v1 = dagent.deploy(cc("com.example.Planter", command=["/bin/sh", "-c", planter],
                          volumes=[{"source": "{work:path}", "target": "/w"}]))
    dagent.wait_states({"com.example.Planter": "RUNNING"})
    wait_for(lambda: dagent.outcome(v1) == "SUCCEEDED", 15, "SUCCEEDED")
    work = root / "work" / "com.example.Planter"
    wait_for(lambda: (work / "data").is_dir(), 10, "the links planted")
    first = dagent.container_id("com.example.Planter")

    for sub, why in [("evil", "would expose the agent's root"),
                     ("host", "binding / would expose the agent's root"),
                     # a real folder today, a link tomorrow: Docker resolves it again
                     # at every start, so nothing inside the work folder is bound
                     ("data", "inside the work folder, which the component can change")]:
        doc = dagent.deploy(cc("com.example.Planter", "2.0.0",
                               command=["/bin/sh", "-c", WRITER],
                               volumes=[{"source": "{work:path}/" + sub, "target": "/x"}]))
        wait_for(lambda d=doc: _deployment(dagent, d.revision).get("outcome")  # type: ignore[misc]
                 == "ROLLED_BACK", 15, f"{sub} refused")
        assert why in _deployment(dagent, doc.revision)["reason"]
        assert dagent.container_id("com.example.Planter") == first  # v1 keeps running
    assert not (root / "state" / "pwned").exists()
