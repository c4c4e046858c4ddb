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

import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterator

from bench import _agent, harness


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
    agent = _agent.BenchAgent()
    try:
        for n, rounds in ((1, 30), (50, 6)):
            overheads, bares = [], []
            for r in range(rounds):
                names = [f"c{r}-{i}" for i in range(n)]
                start = time.perf_counter()
                agent.deploy(_agent.processes(names))
                _agent.wait(functools.partial(agent.running, names))
                took = time.perf_counter() - start
                bare = _bare(n)
                bares.append(bare * 1000)
                overheads.append((took - bare) * 1000)
                agent.deploy([])
                _agent.wait(lambda: agent.states() == {})
            yield harness.Figure(f"p50_overhead_ms[{n}]", harness.percentile(overheads, 50),
                                 "ms", harness.percentile(bares, 50), "<= +20 ms",
                                 ratio=None)
            yield harness.Figure(f"p99_overhead_ms[{n}]", harness.percentile(overheads, 99),
                                 "ms", harness.percentile(bares, 99), "<= +50 ms")
    finally:
        agent.close()
