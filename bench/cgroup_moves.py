"""What placing a component's process in a cgroup costs (cgroup v1, root): the figures
behind the agent's choices in edge-agent/cgroups.py and process.py.

- `move_tasks_ms`: moving one single-threaded process through `tasks`, back to back,
  vs `cgroup.procs` (baseline): the same, so the agent uses cgroup.procs on both versions;
- `isolated_move_ms`: one move after a quiet spell (the kernel waits for an RCU grace
  period), vs a back-to-back move (baseline) — why a few components are born in the
  shared cgroup instead of being moved there;
- `spawn50_moved_ms`: 50 components' shells (setpriv -> sh, behind a gate) spawned and
  moved into one shared cpu cgroup, vs the same spawned and left where the spawner is
  (baseline) — why all of a thing's components share a cgroup that weighs like the agent.
Report only: no targets.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import statistics
import time
import uuid
from collections.abc import Iterator

from bench import harness
from hedgerow.agent import cgroups

_SCRIPT = "read -r _ <&3 || exit 125\nexec 3<&-\ntrap 'echo $? >/dev/null' EXIT\nsleep 600"


def _spawn(n: int, group: cgroups.Cgroups | None) -> tuple[float, list[int]]:
    """Seconds to spawn n gated shells as nobody (moving each into `group`'s shared
    cgroup when given), and their pids."""
    setpriv = shutil.which("setpriv") or "setpriv"
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--",
            "/bin/sh", "-c", _SCRIPT]
    pids = []
    start = time.perf_counter()
    for _ in range(n):
        gate_r, gate_w = os.pipe()
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, gate_r, 3)])
        os.close(gate_r)
        if group is not None:
            group.attach(cgroups.SHARED, pid)
        os.write(gate_w, b"\n")
        os.close(gate_w)
        pids.append(pid)
    return time.perf_counter() - start, pids


def _kill(pids: list[int]) -> None:
    """Every one was spawned in a session of its own: its whole group goes."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _move_ms(path: pathlib.Path, pids: list[int]) -> float:
    """Mean ms per move of `pids` into `path` (tasks or cgroup.procs)."""
    start = time.perf_counter()
    for pid in pids:
        path.write_text(str(pid))
    return (time.perf_counter() - start) / len(pids) * 1000


def run() -> Iterator[harness.Figure]:
    group = cgroups.Cgroups(group=f"hedgerow-bench/{uuid.uuid4().hex[:8]}")
    if group.version != 1 or os.geteuid() != 0:
        print("cgroup_moves: needs root and cgroup v1; nothing measured")
        return
    group.create(cgroups.SHARED, None)
    shared = group.base / "cpu" / group.group / cgroups.SHARED
    root = group.base / "cpu"
    sleepers = [os.posix_spawn("/bin/sleep", ["sleep", "600"], {}, setsid=True)
                for _ in range(40)]
    try:
        by_tasks: list[float] = []
        by_procs: list[float] = []
        for _ in range(3):  # each timed after an untimed move: back to back, both
            for file, out in (("tasks", by_tasks), ("cgroup.procs", by_procs)):
                _move_ms(root / file, sleepers[:1])
                out += [_move_ms(shared / file, sleepers), _move_ms(root / file, sleepers)]
        yield harness.Figure("move_tasks_ms", statistics.mean(by_tasks), "ms",
                             statistics.mean(by_procs), "report only (baseline: cgroup.procs)")
        isolated, warm = [], []
        for pid in sleepers[:10]:
            time.sleep(0.3)
            isolated.append(_move_ms(shared / "tasks", [pid]))
            warm.append(_move_ms(root / "tasks", [pid]))  # right after the first
        yield harness.Figure("isolated_move_ms", statistics.median(isolated), "ms",
                             statistics.median(warm),
                             "report only (baseline: a move right after another)")
        moved, left = [], []
        for _ in range(3):
            took, pids = _spawn(50, group)
            moved.append(took * 1000)
            time.sleep(0.3)
            _kill(pids)
            took, pids = _spawn(50, None)
            left.append(took * 1000)
            time.sleep(0.3)
            _kill(pids)
        yield harness.Figure("spawn50_moved_ms", statistics.median(moved), "ms",
                             statistics.median(left),
                             "report only (baseline: the same shells, not moved)")
    finally:
        _kill(sleepers)
        group.remove(cgroups.SHARED)
        for path in (shared, shared.parent, shared.parent.parent):
            with contextlib.suppress(OSError):
                path.rmdir()


if __name__ == "__main__":
    import json

    for figure in run():
        print(json.dumps(figure.to_json()))
