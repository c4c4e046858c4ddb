"""Per-thing and per-component cgroups: CPU fairness, memory/CPU limits, and the
inventory of a component's processes.

Every component process runs inside hedgerow/<thing> (per thing: two agents on one
machine never share a cgroup) from its first instruction: born there, or moved there
while it waits at its gate (see process.py). That folder weighs, for the scheduler, as
much as the agent itself: all components together, however many start at once or spin,
cannot starve the agent's loop (each component is its own session, so without this
every one of them would weigh as much as the agent).

- A component with limits gets hedgerow/<thing>/<name>: the limits apply there, and the
  folder lists everything it forked, including daemons that left its process group.
- The others share the leaf hedgerow/<thing>/_shared (no component name starts with
  "_"): a cgroup of their own costs more than spawning the process (~1 ms on v1), and
  their process group plus the marker every descendant inherits find what they started
  — Greengrass, too, uses cgroups only for limits. On v1 one thread of the agent (its
  spawner) sits in the shared leaf's cpu cgroup, so what it spawns is born there; the
  agent's other threads stay where the agent was started. Never kill by this leaf's
  cgroup.procs: it lists the agent.

cgroup v2 (unified) when the machine has it, v1 otherwise (memory + cpu hierarchies for
limits, cpu alone for the shared leaf); without a writable cgroupfs (not root) limits
are refused and components run where the agent runs.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re

from hedgerow.core import deployment

_PERIOD_US = 100_000
SHARED = "_shared"
_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


class LimitError(RuntimeError):
    pass


def resolve_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    if not match:
        raise LimitError(f"not a quantity: {quantity!r}")
    return int(float(match[1]) * _UNITS[match[2] or ""])


class Cgroups:
    def __init__(self, base: pathlib.Path = pathlib.Path("/sys/fs/cgroup"),
                 group: str = "hedgerow") -> None:
        self.base, self.group = base, group
        if (base / "cgroup.controllers").exists():
            self.version: int | None = 2
        elif (base / "memory").is_dir() and os.access(base / "memory", os.W_OK):
            self.version = 1
        else:
            self.version = None
        self._shared_made = False

    def _dirs(self, name: str) -> dict[str, pathlib.Path]:
        if self.version == 2:
            return {"unified": self.base / self.group / name}
        if self.version == 1:
            controllers = ("cpu",) if name == SHARED else ("memory", "cpu")
            return {c: self.base / c / self.group / name for c in controllers}
        return {}

    def create(self, name: str,
               limits: deployment.SystemResourceLimits | None) -> str | None:
        """The cgroup a process of component `name` joins (`attach`): its own, with these
        limits, or the shared one without; None without a writable cgroupfs."""
        limited = bool(limits and (limits.memory or limits.cpus))
        if self.version is None:
            if limited:
                raise LimitError("resource limits need a writable cgroup filesystem")
            return None
        if self.version == 2:
            self._enable_v2_controllers()
        if limits is None or not limited:
            if not self._shared_made:  # once, not per spawn: mkdir on cgroupfs is slow
                for path in self._dirs(SHARED).values():
                    path.mkdir(parents=True, exist_ok=True)
                self._shared_made = True
            return SHARED
        dirs = self._dirs(name)
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        memory = resolve_bytes(limits.memory) if limits.memory else None
        quota = int(limits.cpus * _PERIOD_US) if limits.cpus else None
        if self.version == 2:
            d = dirs["unified"]
            (d / "memory.max").write_text(str(memory) if memory else "max")
            (d / "cpu.max").write_text(f"{quota or 'max'} {_PERIOD_US}")
            if memory:  # no swap escape hatch
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
        else:
            mem = dirs["memory"]
            # memory.limit may never exceed memsw.limit: lift memsw first, then set both.
            with contextlib.suppress(OSError):
                (mem / "memory.memsw.limit_in_bytes").write_text("-1")
            (mem / "memory.limit_in_bytes").write_text(str(memory) if memory else "-1")
            if memory:
                with contextlib.suppress(OSError):  # needs swap accounting enabled
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(memory))
            cpu = dirs["cpu"]
            (cpu / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota) if quota else "-1")
        return name

    def _enable_v2_controllers(self) -> None:
        parts = pathlib.PurePosixPath(self.group).parts
        for i in range(len(parts) + 1):
            path = self.base.joinpath(*parts[:i])
            path.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                (path / "cgroup.subtree_control").write_text("+memory +cpu")

    def is_inherited(self, name: str) -> bool:
        """Whether a process can be born in `name` instead of being moved there: on v1 a
        thread can sit in the shared cpu cgroup (see `enter`), and what it spawns starts
        there. (v2 places whole processes, so there the agent moves each one.)"""
        return self.version == 1 and name == SHARED

    def enter(self, name: str, tid: int) -> None:
        """Move the agent's thread `tid` into `name` (v1, cpu only; see is_inherited)."""
        (self.base / "cpu" / self.group / name / "tasks").write_text(str(tid))

    def exists(self, name: str) -> bool:
        return any(path.is_dir() for path in self._dirs(name).values())

    def attach(self, name: str, pid: int) -> None:
        """Move process `pid` (a shell at its gate) into `name`. Back to back a move costs
        ~0.03 ms; the first after a quiet spell waits for an RCU grace period, ~7.5 ms
        on the test machine (`python -m bench cgroup_moves`; see process.py)."""
        file = "cgroup.procs"
        for path in self._dirs(name).values():
            try:
                fd = os.open(path / file, os.O_WRONLY)
            except FileNotFoundError:
                if name != SHARED:
                    raise
                path.mkdir(parents=True, exist_ok=True)  # removed behind our back
                fd = os.open(path / file, os.O_WRONLY)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)

    def pids(self, name: str) -> set[int]:
        dirs = list(self._dirs(name).values())
        if not dirs:
            return set()
        try:
            text = (dirs[0] / "cgroup.procs").read_text()
        except FileNotFoundError:
            return set()
        return {int(p) for p in text.split()}

    def limit_files(self, name: str) -> dict[str, str]:
        """What the kernel enforces, for `component details` and tests."""
        out = {}
        for path in self._dirs(name).values():
            for file in ("memory.max", "cpu.max", "memory.limit_in_bytes", "cpu.cfs_quota_us"):
                with contextlib.suppress(OSError):
                    out[file] = (path / file).read_text().strip()
        return out

    def remove(self, name: str) -> None:
        """Remove the component's own cgroup (rmdir only succeeds when it is empty: never
        strands a process). The shared one and the thing's folder stay for the agent's
        lifetime: empty they cost nothing, on v1 the agent's spawner thread sits in the
        shared one, and making it again would cost every first start a mkdir."""
        for path in self._dirs(name).values():
            with contextlib.suppress(OSError):
                path.rmdir()
