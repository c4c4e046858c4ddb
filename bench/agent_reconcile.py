"""Desired-file change -> process components RUNNING, vs spawning them with bare subprocess.

Alternates, in the same run, an agent round (write desired.json, wait until status.json
shows every component RUNNING) with a bare round (subprocess.Popen of the same shell
scripts). Overhead = agent time - bare time of the adjacent round, for 1 and 50 components.
Targets: p50 within +20 ms, p99 within +50 ms.

Measured on the 2-core test machine (cgroup v1, agent as root, components as nobody):
  before batching (fsync'd record per transition, fork+logpipe per step, agent-side
  cgroup attach, one component at a time): p50 +52 / +990 ms, p99 +122 / +2022 ms;
  after (same machine, busy with other work): p50 +22 / +190..230 ms,
  p99 +40..58 / +200..310 ms.
For 50 components what remains is ~3 ms of kernel work per component on the agent's
side (posix_spawn while 50 fresh shells compete for 2 CPUs, cgroup v1 mkdir); bare
`subprocess` does none of the cgroup, identity or record work.
"""

from __future__ import annotations

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

from bench import harness
from hedgerow.core import component, documents

THING = "bench"


class BenchAgent:
    def __init__(self) -> None:
        self.home = pathlib.Path(tempfile.mkdtemp(prefix="hedgerow-bench-"))
        self.home.chmod(0o711)
        self.root = self.home / "root"
        (self.root / "desired").mkdir(parents=True)
        (self.root / "deployments").mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hedgerow", "agent", "run", "--root", str(self.root),
             "--thing", THING, "--settle", "0", "--resync", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.wait(lambda: (self.root / "agent.sock").exists())

    def deploy(self, names: list[str], script: str = "sleep 600") -> None:
        comps = [documents.ResolvedComponent(
            name=n, version="1.0.0",
            lifecycle=component.Lifecycle(run=component.Step(script=script))) for n in names]
        doc = documents.render_desired_state(THING, [], comps)
        tmp = self.root / "desired" / ".desired.tmp"
        tmp.write_bytes(documents.render_bytes(doc))
        tmp.replace(self.root / "desired" / "desired.json")

    def states(self) -> dict[str, str]:
        try:
            data: dict[str, Any] = json.loads((self.root / "state" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return {c["name"]: c["state"] for c in data.get("components", [])}

    @staticmethod
    def wait(predicate: Any, timeout: float = 60.0, poll: float = 0.0005) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark agent did not converge")
            time.sleep(poll)

    def close(self) -> None:
        self.deploy([])
        self.wait(lambda: self.states() == {})
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def _bare(n: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(["/bin/sh", "-c", "sleep 600"], start_new_session=True)
             for _ in range(n)]
    elapsed = time.perf_counter() - start
    for p in procs:  # the whole group: sh may have forked sleep rather than exec'd it
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return elapsed


def run() -> Iterator[harness.Figure]:
    agent = BenchAgent()
    try:
        for n, rounds in ((1, 30), (50, 6)):
            overheads, bares = [], []
            for r in range(rounds):
                names = [f"c{r}-{i}" for i in range(n)]
                start = time.perf_counter()
                agent.deploy(names)
                agent.wait(lambda names=names: (s := agent.states()) and all(
                    s.get(x) == "RUNNING" for x in names))
                took = time.perf_counter() - start
                bare = _bare(n)
                bares.append(bare * 1000)
                overheads.append((took - bare) * 1000)
                agent.deploy([])
                agent.wait(lambda: agent.states() == {})
            yield harness.Figure(f"p50_overhead_ms[{n}]", harness.percentile(overheads, 50),
                                 "ms", harness.percentile(bares, 50), "<= +20 ms",
                                 ratio=None)
            yield harness.Figure(f"p99_overhead_ms[{n}]", harness.percentile(overheads, 99),
                                 "ms", harness.percentile(bares, 99), "<= +50 ms")
    finally:
        agent.close()
