"""A real agent process on a real temp root, and helpers to drive it by its files."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hedgerow.agent import control
from hedgerow.core import component, documents
from tests.support.wait import wait_for

# Per test process: cgroups are hedgerow/<thing>/<component>, so parallel runs never collide.
THING = f"gw-test-{os.getpid()}"


def rc(name: str, run: str | None = None, version: str = "1.0.0", **kw: Any,
       ) -> documents.ResolvedComponent:
    life = kw.pop("lifecycle", None) or component.Lifecycle(
        run=component.Step(script=run or "sleep 60"))
    return documents.ResolvedComponent(name=name, version=version, lifecycle=life, **kw)


class AgentProcess:
    """A real `hedgerow agent run` on a test root, and what tests read back from it."""

    resync = "2"

    def __init__(self, root: pathlib.Path, thing: str = THING) -> None:
        self.root, self.thing = root, thing
        self.log = root.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None,
              extra_groups: list[int] | None = None) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hedgerow", "agent", "run", "--root", str(self.root),
             "--thing", self.thing, "--resync", self.resync, "--settle", "0.5", *extra],
            stdout=log, stderr=log, start_new_session=True, env=env,
            extra_groups=extra_groups)
        # A condition, so a generous deadline: at load 22 (2 cores) it took 5.6 s.
        wait_for(lambda: (self.root / "agent.sock").exists(), 30, "the control socket")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        (self.root / "agent.sock").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def deploy(self, *components: documents.ResolvedComponent,
               failure_handling: str = "ROLLBACK") -> documents.DesiredState:
        ref = documents.DeploymentRef.model_validate(
            {"name": "cloud", "policies": {"failureHandling": failure_handling}})
        doc = documents.render_desired_state(self.thing, [ref], list(components))
        target = self.root / "desired" / "desired.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(documents.render_bytes(doc))
        tmp.replace(target)
        return doc

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / "state" / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def outcome(self, doc: documents.DesiredState | None = None) -> str:
        """The deployment outcome the agent reports — for ``doc`` only, when given: the
        status may still describe the previous revision for a moment after a deploy."""
        deployment = self.status().get("deployment") or {}
        if doc is not None and deployment.get("revision") != doc.revision:
            return ""
        return str(deployment.get("outcome", ""))

    def states(self) -> dict[str, str]:
        return {c["name"]: c["state"] for c in self.status().get("components", [])}

    def wait_states(self, expected: dict[str, str], timeout: float = 15.0) -> None:
        """Until the status shows `expected` and the records agree (the agent writes
        status.json first and its records at the end of the same pass)."""
        wait_for(lambda: self.states() == expected and self._recorded(expected), timeout,
                 f"states {expected} (last: {self.states()})")

    def _recorded(self, expected: dict[str, str]) -> bool:
        try:
            recs = json.loads((self.root / "state" / "components.json").read_text())
        except (OSError, ValueError):
            return not expected
        return all(recs.get(n, {}).get("state") == s for n, s in expected.items())

    def record(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.root / "state" / "components.json").read_text())[name]
        return data

    def passes_reported(self) -> int:
        """How many passes have written their status since the agent started (0 while
        it does not answer)."""
        try:
            reply = control.request(self.root / "agent.sock", {"op": "status"}, timeout=10)
        except (OSError, ValueError):  # CommandError is a ValueError
            return 0
        return int(reply.get("passesReported", 0))

    def passes(self, count: int = 2, timeout: float = 30.0) -> None:
        """Let `count` more passes run to their status (a loaded machine took 6 of
        the 10 s this once allowed)."""
        start = self.passes_reported()
        wait_for(lambda: self.passes_reported() >= start + count, timeout, "more passes")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hedgerow", *args, "--root",
                               str(self.root)], capture_output=True, text=True, timeout=60)


def pids_with_marker(root: pathlib.Path, component: str | None = None) -> set[int]:
    """Every live process whose environment points at this agent root (and, given
    ``component``, that the agent started for that component)."""
    out = set()
    needles = {f"HEDGEROW_ROOT={root}".encode()}
    if component is not None:
        needles.add(f"HEDGEROW_COMPONENT={component}".encode())
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needles <= set((entry / "environ").read_bytes().split(b"\0")):
                    stat = (entry / "stat").read_text()
                    if stat[stat.rindex(")") + 2] != "Z":
                        out.add(int(entry.name))
            except OSError:
                continue
    return out


@pytest.fixture
def agent_home() -> Iterator[pathlib.Path]:
    """A temp folder components (running as nobody) can traverse; pytest's is 0700."""
    home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-agent-"))
    home.chmod(0o711)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def agent(agent_home: pathlib.Path) -> Iterator[AgentProcess]:
    tmp_path = agent_home
    root = tmp_path / "root"
    (root / "desired").mkdir(parents=True)
    (root / "deployments").mkdir()
    a = AgentProcess(root)
    a.start()
    yield a
    a.stop()
    for pid in pids_with_marker(root):  # never leave test workloads behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_cgroups(THING)
    print((tmp_path / "agent.log").read_text()[-4000:])


def remove_cgroups(thing: str, timeout: float = 5.0) -> None:
    """The cgroup folders this thing's agent made (and a test made under them): kill
    what is left in them (only this test's processes), then remove them, deepest first,
    once the kernel has let those processes go. v1's freezer too (a paused component):
    thawed first, as a frozen process dies only once thawed. Left behind, they pile up
    over runs (nothing else removes another thing's folders: cgroups.py)."""
    folders = [base / "hedgerow" / thing for base in (
        pathlib.Path("/sys/fs/cgroup/memory"), pathlib.Path("/sys/fs/cgroup/cpu"),
        pathlib.Path("/sys/fs/cgroup/freezer"), pathlib.Path("/sys/fs/cgroup"))]
    deadline = time.monotonic() + timeout
    while True:
        for folder in folders:
            if not folder.is_dir():
                continue
            for path, _dirs, _files in os.walk(folder, topdown=False):
                child = pathlib.Path(path)
                with contextlib.suppress(OSError):
                    (child / "freezer.state").write_text("THAWED")
                with contextlib.suppress(OSError, ValueError):
                    for pid in (child / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    child.rmdir()
        if not any(f.is_dir() for f in folders) or time.monotonic() > deadline:
            return
        time.sleep(0.05)
