"""Components as attackers of the agent (issue 12) and the device's privilege ceiling
(issue 11), with the real agent as root and components as real `nobody` processes.

- a desired document asking for more than the device allows is refused as a whole, with
  the component, field and level, and the last good state keeps running;
- a user *name* that maps to uid 0 on the device is refused when the step would spawn;
- 32 MiB of output without a newline costs the root log writer one line of memory, and
  the log stays within its rotation bounds.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hedgerow.core import component, deployment, documents, limits
from tests.agent.conftest import THING, AgentProcess, pids_with_marker, rc, remove_cgroups
from tests.support.wait import wait_for


def _pid_of(agent: AgentProcess, name: str) -> int:
    return int(agent.record(name)["process"]["pid"])


def _good_running(agent: AgentProcess) -> documents.DesiredState:
    """The last good state: one component, deployed and SUCCEEDED."""
    good = agent.deploy(rc("com.example.Good"))
    agent.wait_states({"com.example.Good": "RUNNING"})
    wait_for(lambda: agent.outcome(good) == "SUCCEEDED", 10, "SUCCEEDED")
    return good


def _passes(agent: AgentProcess, count: int = 2) -> None:
    agent.passes(count)


def test_a_document_above_the_ceiling_is_refused_whole_and_the_last_good_keeps_running(
    agent: AgentProcess, agent_home: pathlib.Path,
) -> None:
    _good_running(agent)
    pid = _pid_of(agent, "com.example.Good")
    proof = agent_home / "ran-as-root"

    # What a fooled controller (or a local deployment) could publish: a root step, and a
    # posixUser root, beside the good component and an innocent new one.
    evil = agent.deploy(
        rc("com.example.Good"),
        rc("com.example.New"),
        documents.ResolvedComponent(
            name="com.example.Root", version="1.0.0",
            lifecycle=component.Lifecycle(run=component.Step(
                script=f"id -u > {proof}; sleep 60", requires_privilege=True))),
        rc("com.example.AsRoot", run=f"id -u > {proof}; sleep 60",
           run_with=deployment.RunWith(posix_user="root")),
    )
    wait_for(lambda: agent.outcome(evil) == "REJECTED", 10, "REJECTED")
    reason = agent.status()["deployment"]["reason"]
    assert ("com.example.Root: lifecycle.run.requiresPrivilege: the run step runs as root; "
            "needs privilege level 'privileged', granted 'baseline'") in reason
    assert "com.example.AsRoot: runWith.posixUser" in reason
    assert "--max-privilege" in reason
    _passes(agent)
    assert agent.outcome(evil) == "REJECTED"
    assert agent.states() == {"com.example.Good": "RUNNING"}  # nothing new, nothing gone
    assert _pid_of(agent, "com.example.Good") == pid
    assert not proof.exists()

    # The device's operator allows it: the same document now runs.
    agent.stop()
    agent.start("--max-privilege", "privileged")
    agent.wait_states(dict.fromkeys(("com.example.Good", "com.example.New",
                                     "com.example.Root", "com.example.AsRoot"), "RUNNING"))
    wait_for(lambda: proof.exists() and proof.read_text().strip() == "0", 10, "root step")
    assert _pid_of(agent, "com.example.Good") == pid  # adopted, never restarted


class NamespacedAgent(AgentProcess):
    """The agent in a mount namespace of its own whose /etc/passwd has an extra entry:
    the machine's (shared with other engineers) is never edited."""

    def __init__(self, root: pathlib.Path, passwd: pathlib.Path) -> None:
        super().__init__(root)
        self.passwd = passwd

    def start(self, *extra: str, env: dict[str, str] | None = None,
              extra_groups: list[int] | None = None) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             'mount --bind "$0" /etc/passwd && exec "$@"', str(self.passwd),
             sys.executable, "-m", "hedgerow", "agent", "run", "--root", str(self.root),
             "--thing", self.thing, "--resync", self.resync, "--settle", "0.5", *extra],
            stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: (self.root / "agent.sock").exists(), 30, "the control socket")


@pytest.fixture
def toor_agent(agent_home: pathlib.Path) -> Iterator[NamespacedAgent]:
    passwd = agent_home / "passwd"
    passwd.write_text(pathlib.Path("/etc/passwd").read_text()
                      + "toor:x:0:0:looks harmless:/root:/bin/sh\n")
    root = agent_home / "root"
    (root / "desired").mkdir(parents=True)
    (root / "deployments").mkdir()
    a = NamespacedAgent(root, passwd)
    a.start()
    yield a
    a.stop()
    for pid in pids_with_marker(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_cgroups(THING)
    print((agent_home / "agent.log").read_text()[-4000:])


def test_a_user_name_that_maps_to_root_is_refused_when_it_would_spawn(
    toor_agent: NamespacedAgent, agent_home: pathlib.Path,
) -> None:
    proof = agent_home / "toor-ran"
    doc = toor_agent.deploy(
        rc("com.example.Fine"),
        rc("com.example.Toor", run=f"id -u > {proof}; sleep 60",
           run_with=deployment.RunWith(posix_user="toor")),
        failure_handling="DO_NOTHING")
    # No check of the recipe can see it: the name is not `root`. The spawn refuses it.
    wait_for(lambda: toor_agent.states().get("com.example.Toor") in ("ERRORED", "BROKEN")
             and "uid 0" in toor_agent.record("com.example.Toor")["message"], 15,
             "Toor refused")
    message = toor_agent.record("com.example.Toor")["message"]
    assert "runs as 'toor' = uid 0, gid 0 (root); needs privilege level 'privileged', " \
           "granted 'baseline'" in message
    wait_for(lambda: toor_agent.states().get("com.example.Toor") == "BROKEN", 20, "BROKEN")
    wait_for(lambda: toor_agent.outcome(doc) == "FAILED", 10, "FAILED")
    assert toor_agent.states()["com.example.Fine"] == "RUNNING"
    assert not proof.exists()


def test_32_mib_without_a_newline_costs_the_log_writer_one_line(
    agent: AgentProcess,
) -> None:
    name = "com.example.Flood"
    agent.deploy(rc(name, run=(
        "head -c 33554432 /dev/zero | tr '\\000' a; touch {work:path}/written; "
        "echo after-the-flood; sleep 60")))
    agent.wait_states({name: "RUNNING"})
    written = agent.root / "work" / name / "written"
    wait_for(written.exists, 60, "the flood written")  # linear: a few seconds at most
    log = agent.root / "logs" / f"{name}.log"
    writer = _log_writer_of(log)
    assert writer is not None, "the log writer is still running for the component"
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB",
                             pathlib.Path(f"/proc/{writer}/status").read_text())[1])
    # Before: the whole 32 MiB line was held, and copied at every read (108 MB).
    assert peak_kib < 24 * 1024, f"log writer peaked at {peak_kib} KiB"

    wait_for(lambda: "after-the-flood" in log.read_text(errors="replace"), 10,
             "the next line (the budget refills)")
    files = sorted(log.parent.glob(f"{name}.log*"))
    assert len(files) <= 4  # the file and 3 rotated ones, never more
    for file in files:
        data = file.read_bytes()
        assert len(data) <= 1 << 20  # --log-max-bytes default: 1 MiB
        longest = max(len(line) for line in data.split(b"\n"))
        assert longest <= limits.MAX_LOG_LINE_BYTES + 32  # the line and its timestamp
    text = "".join(f.read_text(errors="replace") for f in files)
    dropped = re.search(r"\[hedgerow\] (\d+) line\(s\), (\d+) bytes dropped: over the log "
                        r"limit", text)
    assert dropped is not None and int(dropped[2]) > 16 << 20
    assert agent.states() == {name: "RUNNING"}  # the component was never blocked or killed
    out = agent.cli("logs", "get", name)
    assert out.returncode == 0 and "after-the-flood" in out.stdout


def _log_writer_of(log: pathlib.Path) -> int | None:
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"logpipe.py") for a in argv) and \
                any(a.endswith(b"=" + str(log).encode()) for a in argv):
            return int(entry.name)
    return None


PRIVILEGED_RECIPE = """apiVersion: hedgerow.dev/v1alpha1
kind: Component
metadata: {name: com.example.rooted-1.0.0}
spec:
  name: com.example.Rooted
  version: 1.0.0
  manifests:
    - lifecycle:
        run: {script: "id -u > PROOF; sleep 60", requiresPrivilege: true}
"""


def test_a_local_deployment_above_the_ceiling_is_refused_when_created(
    agent: AgentProcess, agent_home: pathlib.Path, tmp_path: pathlib.Path,
) -> None:
    good = _good_running(agent)
    # This test's own proof file: one fixed path in /tmp, left by any run where the step
    # did run, would fail every later run on the machine.
    proof = agent_home / "rooted-proof"
    (tmp_path / "rooted.yaml").write_text(PRIVILEGED_RECIPE.replace("PROOF", str(proof)))
    created = agent.cli("deployment", "create", "--recipes", str(tmp_path),
                        "--merge", "com.example.Rooted=1.0.0")
    assert created.returncode == 1
    assert ("com.example.Rooted: lifecycle.run.requiresPrivilege: the run step runs as "
            "root; needs privilege level 'privileged', granted 'baseline'") in created.stderr
    assert not (agent.root / "deployments" / "local.yaml").exists()  # nothing changed
    _passes(agent)
    assert agent.outcome(good) == "SUCCEEDED"  # not REJECTED: the cloud document runs on
    assert agent.states() == {"com.example.Good": "RUNNING"}
    assert agent.cli("deployment", "list", "-o", "json").stdout.count("local-") == 0
    assert not proof.exists()
