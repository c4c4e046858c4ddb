"""Per-thing and per-component cgroups: CPU fairness, memory/CPU limits, and the
inventory of a component's processes.

Every component process runs inside hedgerow/<thing>/<name> from its first instruction:
moved there while it waits at its gate (see process.py). Its own cgroup is what finds
everything it started, whatever it does with sessions, process groups and its
environment (`setsid env -i daemon` leaves its group and drops the marker; it cannot
leave a cgroup: that takes root). The thing's folder weighs, for the scheduler, as
much as the agent itself: all components together, however many start at once or
spin, cannot starve the agent's loop (the children share that weight).

- v1: the `cpu` hierarchy for every component (fairness and the inventory), `memory`
  too when it has a memory limit; v2: one unified folder.
- Cost (python -m bench cgroup_moves): making a cgroup once per component and moving
  each process into it, against moving every process into one shared cgroup, is the
  figure `own_cgroup_start_ms`. The move waits for an RCU grace period in the kernel
  unless another came just before; the agent does it off its loop (process.py).
- What the agent makes it removes: a component's folders when it is removed, and at
  start every empty folder under its own hedgerow/<thing>/ (left by removed components
  or earlier versions). It never touches another thing's folders: several agents share
  a host (the demo, bare Docker hosts, the tests), and an empty folder of another agent
  may be one that agent has just made and is about to move a process into.

cgroup v2 (unified) when the machine has it, v1 otherwise; without a writable cgroupfs
(not root) limits are refused and components run where the agent runs.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re

from hedgerow.agent import failures, procfs
from hedgerow.core import deployment

_PERIOD_US = 100_000
_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


class LimitError(failures.PermanentError):
    """A resource limit this device cannot set (a bad quantity, no cgroupfs)."""


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
        # name -> the limits it was made with: made once, not per spawn (mkdir on
        # cgroupfs is slow), and made again with them if removed behind our back.
        self._made: dict[str, deployment.SystemResourceLimits | None] = {}

    def _hierarchies(self) -> tuple[str, ...]:
        return {2: ("unified",), 1: ("cpu", "memory")}.get(self.version or 0, ())

    def _path(self, hierarchy: str, name: str) -> pathlib.Path:
        if hierarchy == "unified":
            return self.base / self.group / name
        return self.base / hierarchy / self.group / name

    def _dirs(self, name: str, memory: bool = True) -> dict[str, pathlib.Path]:
        """Its folders, the one that lists its processes first (v1: cpu)."""
        return {h: self._path(h, name) for h in self._hierarchies()
                if memory or h != "memory"}

    def name_for(self, name: str,
                 limits: deployment.SystemResourceLimits | None) -> str | None:
        """The cgroup a process of component `name` joins: its own; None without a
        writable cgroupfs. No I/O: the agent's loop asks, its mover thread `make`s."""
        limited = bool(limits and (limits.memory or limits.cpus))
        if self.version is None:
            if limited:
                raise LimitError("resource limits need a writable cgroup filesystem")
            return None
        if limits and limits.memory:
            resolve_bytes(limits.memory)  # a bad quantity fails the start, not the move
        return name

    def create(self, name: str,
               limits: deployment.SystemResourceLimits | None) -> str | None:
        """`name_for`, made (`make`)."""
        found = self.name_for(name, limits)
        if found is not None:
            self.make(found, limits)
        return found

    def make(self, name: str, limits: deployment.SystemResourceLimits | None) -> None:
        """Make the component's cgroup with these limits (once: later calls with no
        limits cost nothing)."""
        limited = bool(limits and (limits.memory or limits.cpus))
        if not limited and name in self._made and self._made[name] is None:
            return  # made already, nothing to write
        if self.version == 2:
            self._enable_v2_controllers()
        memory = resolve_bytes(limits.memory) if limits and limits.memory else None
        quota = int(limits.cpus * _PERIOD_US) if limits and limits.cpus else None
        dirs = self._dirs(name, memory=self.version == 2 or memory is not None)
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # Written on the first start after the agent's (a limit it had before is lifted).
        if self.version == 2:
            d = dirs["unified"]
            (d / "memory.max").write_text(str(memory) if memory else "max")
            (d / "cpu.max").write_text(f"{quota or 'max'} {_PERIOD_US}")
            if memory:  # no swap escape hatch
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
        else:
            if memory is not None:
                mem = dirs["memory"]
                # memory.limit may never exceed memsw.limit: lift memsw first, then both.
                with contextlib.suppress(OSError):
                    (mem / "memory.memsw.limit_in_bytes").write_text("-1")
                (mem / "memory.limit_in_bytes").write_text(str(memory))
                with contextlib.suppress(OSError):  # needs swap accounting enabled
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(memory))
            else:
                with contextlib.suppress(OSError):  # a memory limit it had before: gone
                    self._path("memory", name).rmdir()
            cpu = dirs["cpu"]
            if quota is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota) if quota else "-1")
        self._made[name] = limits if limited else None

    def _enable_v2_controllers(self) -> None:
        parts = pathlib.PurePosixPath(self.group).parts
        for i in range(len(parts) + 1):
            path = self.base.joinpath(*parts[:i])
            path.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                (path / "cgroup.subtree_control").write_text("+memory +cpu")

    def exists(self, name: str) -> bool:
        return any(path.is_dir() for path in self._dirs(name).values())

    def attach(self, name: str, pid: int,
               limits: deployment.SystemResourceLimits | None = None) -> None:
        """Move process `pid` (a step at its gate) into `name`, made first if it is not
        (with `limits`). Back to back a move costs ~0.03 ms; the first after a quiet
        spell waits for an RCU grace period, ~7.5 ms on the test machine
        (`python -m bench cgroup_moves`; see process.py)."""
        wanted = limits if limits and (limits.memory or limits.cpus) else None
        if name not in self._made or self._made[name] != wanted or wanted is not None:
            self.make(name, limits)  # first start, or limits (written at every start)
        limits = self._made.get(name)
        memory = self.version == 2 or bool(limits and limits.memory)
        for attempt in (1, 2):
            try:
                for path in self._dirs(name, memory).values():
                    fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, str(pid).encode())
                    finally:
                        os.close(fd)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise
                # Removed behind our back (an operator; an older agent's start-up
                # sweep): made again, with the limits it had.
                self._made.pop(name, None)
                self.make(name, limits)

    def pids(self, name: str) -> set[int]:
        dirs = list(self._dirs(name).values())
        if not dirs:
            return set()
        try:
            text = (dirs[0] / "cgroup.procs").read_text()
        except FileNotFoundError:
            return set()
        return {int(p) for p in text.split()}

    def freeze(self, name: str, frozen: bool) -> None:
        """Pause (freeze) or resume (thaw) every process of the component: v2 its
        folder's cgroup.freeze; v1 the freezer hierarchy, into which its processes are
        moved first (until none is left out: one may fork while they are moved)."""
        if self.version == 2:
            (self._path("unified", name) / "cgroup.freeze").write_text(
                "1" if frozen else "0")
            return
        if self.version != 1:
            raise OSError("pausing needs a writable cgroup filesystem")
        path = self._path("freezer", name)
        if not frozen:
            with contextlib.suppress(FileNotFoundError):
                (path / "freezer.state").write_text("THAWED")
            return
        path.mkdir(parents=True, exist_ok=True)
        (path / "freezer.state").write_text("FROZEN")
        for _ in range(10):
            inside = {int(p) for p in (path / "cgroup.procs").read_text().split()}
            missing = self.pids(name) - inside
            if not missing:
                return
            for pid in missing:  # moved into a frozen cgroup: frozen
                with contextlib.suppress(ProcessLookupError):
                    (path / "cgroup.procs").write_text(str(pid))
        raise OSError(f"{name}: its processes keep forking; not all could be frozen")

    def is_frozen(self, name: str) -> bool:
        if self.version == 2:
            path = self._path("unified", name) / "cgroup.freeze"
        else:
            path = self._path("freezer", name) / "freezer.state"
        try:
            return path.read_text().strip() in ("1", "FROZEN", "FREEZING")
        except OSError:
            return False
    def observe_usage(self, name: str) -> tuple[float | None, int | None]:
        """(CPU seconds used, memory bytes in use) of component `name`, for metrics.
        cgroup v2: cpu.stat usage_usec and memory.current, cumulative over every process
        the cgroup ever held. v1 (only the cpu hierarchy is joined, and memory only with
        a limit): what the kernel has, else summed over the processes in it now from
        /proc (CPU of processes that have exited is then not counted)."""
        dirs = self._dirs(name)
        if not dirs:
            return None, None
        cpu: float | None = None
        memory: int | None = None
        first = next(iter(dirs.values()))
        with contextlib.suppress(OSError, ValueError):
            if self.version == 2:
                for line in (first / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        cpu = int(value) / 1e6
                memory = int((first / "memory.current").read_text())
            elif "memory" in dirs:
                memory = int((dirs["memory"] / "memory.usage_in_bytes").read_text())
        if self.version == 1 and (cpu is None or memory is None):
            seconds, resident = 0.0, 0
            for pid in self.pids(name):
                usage = procfs.read_usage(pid)
                if usage is not None:
                    seconds, resident = seconds + usage[0], resident + usage[1]
            cpu = seconds if cpu is None else cpu
            memory = resident if memory is None else memory
        return cpu, memory

    def limit_files(self, name: str) -> dict[str, str]:
        """What the kernel enforces, for `component details` and tests."""
        out = {}
        for path in self._dirs(name).values():
            for file in ("memory.max", "cpu.max", "memory.limit_in_bytes", "cpu.cfs_quota_us"):
                with contextlib.suppress(OSError):
                    out[file] = (path / file).read_text().strip()
        return out

    def remove(self, name: str) -> bool:
        """Remove the component's cgroup; whether it is gone. rmdir only succeeds on an
        empty one (it never strands a process); right after its last process exited
        the kernel may still hold it for a moment: the caller tries again later."""
        self._made.pop(name, None)
        gone = True
        extra = [self._path("freezer", name)] if self.version == 1 else []
        for path in [*self._dirs(name).values(), *extra]:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone

    def sweep(self) -> list[str]:
        """At start: remove every empty cgroup folder under this thing's hedgerow/<thing>/
        — of removed components, of earlier versions (`_shared`). Deepest first; a
        folder with a process or a child stays (rmdir refuses). Another thing's folders
        are its agent's to remove."""
        removed = []
        # v1's freezer too: a paused component's folder there outlives it when it is
        # removed while the agent is down (remove() takes it otherwise).
        paused = ("freezer",) if self.version == 1 else ()
        for hierarchy in (*self._hierarchies(), *paused):
            root = self._path(hierarchy, "")
            if not root.is_dir():
                continue
            for folder, _dirs, _files in os.walk(root, topdown=False):
                if pathlib.Path(folder) == root:
                    continue
                try:
                    pathlib.Path(folder).rmdir()
                except OSError:  # holds a process or a folder that does
                    continue
                removed.append(f"{hierarchy}:{os.path.relpath(folder, root)}")
        self._made.clear()
        return removed
