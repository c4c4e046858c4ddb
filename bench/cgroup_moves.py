"""What placing a component's process in a cgroup costs (cgroup v1, root): the figures
behind the agent's choices in edge-agent/cgroups.py and process.py.

- `move_tasks_ms`: moving one single-threaded process through `tasks`, back to back,
  vs `cgroup.procs` (baseline): the same, so the agent uses cgroup.procs on both versions;
- `isolated_move_ms`: one move after a quiet spell (the kernel waits for an RCU grace
  period), vs a back-to-back move (baseline) — why the agent moves processes on a
  thread of its own, off its loop, and opens a batch's gates together;
- `spawn50_moved_ms`: 50 components' shells (setpriv -> sh, behind a gate) spawned and
  moved into one shared cpu cgroup, vs the same spawned and left where the spawner is
  (baseline);
- `spawn50_own_cgroups_ms`: the same 50, each moved into a cgroup of its own made for
  it (what the agent does since removal must find every process a component started),
  vs all moved into one shared cgroup (baseline), alternating in the same run;
- `own_cgroup_make_remove_ms`: making one component's cgroup and removing it (once per
  component, not per start), vs one back-to-back move (baseline).
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
from collections.abc import Callable, Iterator

from bench import harness
from hedgerow.agent import cgroups

_SCRIPT = "read -r _ <&3 || exit 125\nexec 3<&-\ntrap 'echo $? >/dev/null' EXIT\nsleep 600"


def _spawn(n: int, place: Callable[[int, int], None] | None) -> tuple[float, list[int]]:
    """Seconds to spawn n gated shells as nobody (each placed by `place(i, pid)` when
    given), and their pids."""
    setpriv = shutil.which("setpriv") or "setpriv"
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--",
            "/bin/sh", "-c", _SCRIPT]
    pids = []
    start = time.perf_counter()
    for i in range(n):
        gate_r, gate_w = os.pipe()
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, gate_r, 3)])
        os.close(gate_r)
        if place is not None:
            place(i, pid)
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
    group.create("shared", None)
    shared = group.base / "cpu" / group.group / "shared"
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

        def into_shared(_i: int, pid: int) -> None:
            group.attach("shared", pid)

        def into_own(i: int, pid: int) -> None:
            group.create(f"c{i}", None)
            group.attach(f"c{i}", pid)

        moved: list[float] = []
        left: list[float] = []
        own: list[float] = []
        for _ in range(3):  # alternating, so a busy spell of the machine hits all three
            for place, out in ((into_shared, moved), (None, left), (into_own, own)):
                took, pids = _spawn(50, place)
                out.append(took * 1000)
                time.sleep(0.3)
                _kill(pids)
                for i in range(50):
                    wait_removed = time.monotonic() + 5
                    while not group.remove(f"c{i}") and time.monotonic() < wait_removed:
                        time.sleep(0.01)
        yield harness.Figure("spawn50_moved_ms", statistics.median(moved), "ms",
                             statistics.median(left),
                             "report only (baseline: the same shells, not moved)")
        yield harness.Figure("spawn50_own_cgroups_ms", statistics.median(own), "ms",
                             statistics.median(moved),
                             "report only (baseline: all 50 moved into one shared cgroup)")
        made = []
        for i in range(20):
            start = time.perf_counter()
            group.create(f"m{i}", None)
            group.remove(f"m{i}")
            made.append((time.perf_counter() - start) * 1000)
        yield harness.Figure("own_cgroup_make_remove_ms", statistics.median(made), "ms",
                             statistics.median(warm),
                             "report only (baseline: one back-to-back move)")
    finally:
        _kill(sleepers)
        group.remove("shared")
        for path in (shared.parent, shared.parent.parent):
            with contextlib.suppress(OSError):
                path.rmdir()


if __name__ == "__main__":
    import json

    for figure in run():
        print(json.dumps(figure.to_json()))
