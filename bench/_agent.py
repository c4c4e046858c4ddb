"""A real `hedgerow agent run` on a throw-away root, driven the way the cloud connector
drives it (an atomically replaced desired.json), shared by the agent benchmarks."""

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
from collections.abc import Callable

from hedgerow.core import component, documents


def wait(predicate: Callable[[], object], timeout: float = 120.0, poll: float = 0.0005) -> None:
    """Poll tightly: the benchmarks time how soon a state shows, so the poll must not lag."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark agent did not converge")
        time.sleep(poll)


def processes(names: list[str], script: str = "sleep 600") -> list[documents.ResolvedComponent]:
    return [documents.ResolvedComponent(
        name=n, version="1.0.0",
        lifecycle=component.Lifecycle(run=component.Step(script=script))) for n in names]


class BenchAgent:
    def __init__(self, thing: str = "bench") -> None:
        self.thing = thing
        self.home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-bench-"))
        self.home.chmod(0o711)  # components run as nobody and must reach their work folder
        self.root = self.home / "root"
        (self.root / "desired").mkdir(parents=True)
        (self.root / "deployments").mkdir()
        # BENCH_AGENT_LOG=FILE keeps the agent's log, at debug level (pass timings).
        log_file = os.environ.get("BENCH_AGENT_LOG")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hedgerow", "agent", "run", "--root", str(self.root),
             "--thing", thing, "--settle", "0", "--resync", "60",
             "--log-level", "debug" if log_file else "info"],
            stdout=subprocess.DEVNULL,
            stderr=open(log_file, "ab") if log_file else subprocess.DEVNULL,  # noqa: SIM115
            start_new_session=True)
        self._status_key: tuple[int, int] | None = None
        self._states: dict[str, str] = {}
        wait(lambda: (self.root / "agent.sock").exists())

    def render(self, comps: list[documents.ResolvedComponent]) -> bytes:
        """The desired document, as the connector would write it (untimed: rendering is
        the cloud's work, not the device's)."""
        return documents.render_bytes(documents.render_desired_state(self.thing, [], comps))

    def write(self, rendered: bytes) -> None:
        """The desired-file change the agent reacts to: an atomic replace."""
        tmp = self.root / "desired" / ".desired.tmp"
        tmp.write_bytes(rendered)
        tmp.replace(self.root / "desired" / "desired.json")

    def deploy(self, comps: list[documents.ResolvedComponent]) -> None:
        self.write(self.render(comps))

    def states(self) -> dict[str, str]:
        """The states in status.json, parsed only when the file was replaced: the tight
        poll must not take CPU from the agent it is timing."""
        path = self.root / "state" / "status.json"
        try:
            stat = path.stat()
            key = (stat.st_ino, stat.st_mtime_ns)
            if key != self._status_key:
                data = json.loads(path.read_text())
                self._states = {c["name"]: c["state"] for c in data.get("components", [])}
                self._status_key = key
        except (OSError, ValueError):
            return {}
        return self._states

    def recorded(self, names: list[str]) -> bool:
        """The agent's records show exactly `names`, all RUNNING: the pass that reported
        them is over (the agent writes its records after the status)."""
        try:
            recs = json.loads((self.root / "state" / "components.json").read_text())
        except (OSError, ValueError):
            return not names
        return sorted(recs) == sorted(names) and all(
            r.get("state") == "RUNNING" for r in recs.values())

    def running(self, names: list[str]) -> bool:
        states = self.states()
        return bool(states) and all(states.get(n) == "RUNNING" for n in names)

    def close(self) -> None:
        self.deploy([])
        with contextlib.suppress(TimeoutError):
            wait(lambda: self.states() == {}, 60)
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)
