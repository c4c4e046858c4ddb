"""The spawn batcher: one job — start steps as fast as a small device can, together.

Steps spawned in the same turn of the event loop (a pass starting 50 components) are
launched together, after all of them are prepared: the Python work is done before the
first child competes for the CPU, and the launches (`os.posix_spawn`, vfork-like: the
agent is never copied) run back to back. A gated step waits at its gate (a pipe on fd
3) until a thread of the agent has moved it into its cgroup, off the loop (an isolated
move waits for an RCU grace period, ~7.5 ms, unless another came just before); the
gates of a batch open together once all of it is moved. The batch's output pipes go
to ONE log writer (logpipe.py) and its start times are read once the batch is done
(`finish`): reading /proc/PID/stat waits while PID is still in exec.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
import pathlib
import signal
import sys

from hedgerow.agent import cgroups as cgroups_
from hedgerow.agent import failures, procfs, records
from hedgerow.core import deployment

log = logging.getLogger("hedgerow.agent")
LOGPIPE = str(pathlib.Path(__file__).with_name("logpipe.py"))
# Python ignores these; a step must start with the defaults (`yes | head` ends by SIGPIPE).
_PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclasses.dataclass(frozen=True)
class Launch:
    """A step ready to start: everything but the posix_spawn itself."""

    argv: list[str]
    env: dict[str, str]
    cgroup: str | None
    limits: deployment.SystemResourceLimits | None
    gated: bool  # waits for a byte on fd 3 (hedgerow-gate, or the shell when in a cgroup)
    log_path: str
    ref: records.ProcessRef  # pid 0 until launched


class Child:
    """A spawned process the agent is the parent of (a tiny Popen for posix_spawn)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reaped(self, status: int) -> int:
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 255
                return self.returncode
            if pid:
                return self._reaped(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            try:
                return self._reaped(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:
                self.returncode = 255
        return self.returncode


_Done = asyncio.Future[tuple[Child, records.ProcessRef]]  # a launch, answered


async def wait_exit(proc: Child, timeout: float | None) -> int | None:
    """The exit code, or None when `timeout` passed first. A pidfd wakes the loop."""
    if proc.poll() is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(proc.pid)
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


class Spawner:
    def __init__(self, cgroups: cgroups_.Cgroups, log_max_bytes: int, log_keep: int) -> None:
        self.cgroups = cgroups
        self.log_max_bytes, self.log_keep = log_max_bytes, log_keep
        self.children: dict[int, Child] = {}
        self._pending_logs: list[tuple[int, str]] = []  # pipe read ends, log paths
        self._pending_refs: list[records.ProcessRef] = []  # start times still to read
        self._launches: list[tuple[Launch, _Done]] = []
        # Moves processes into their cgroups and opens their gates, off the loop.
        self._mover: concurrent.futures.ThreadPoolExecutor | None = None

    def warm_up(self) -> None:
        """The thread that moves processes into their cgroups, made before it is needed."""
        if self._mover is None:
            self._mover = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cgroup-mover")

    async def submit(self, launch: Launch) -> tuple[Child, records.ProcessRef]:
        """Launch with the rest of this turn's batch; the child and its ref. Its output
        pipe is queued for the batch's log writer, and the ref's start time is read
        then: call `finish` before awaiting anything else (a pipe holds 64 KiB until the
        writer starts) and before the ref is recorded."""
        loop = asyncio.get_running_loop()
        done: _Done = loop.create_future()
        self._launches.append((launch, done))
        if len(self._launches) == 1:
            loop.call_soon(self._launch_all)
        return await done

    def _launch_all(self) -> None:
        launches, self._launches = self._launches, []
        launches = [(la, d) for la, d in launches if not d.cancelled()]  # nobody waits
        results, placing = self._spawn_batch([la for la, _ in launches])
        for (launch, done), result in zip(launches, results, strict=True):
            self._settle(launch, done, result)
        if any(launch.cgroup for _, launch, _ in placing):
            if self._mover is None:
                self._mover = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="cgroup-mover")
            self._mover.submit(self._place, placing)
        else:
            self._place(placing)

    def _spawn_batch(self, batch: list[Launch]) -> tuple[
            list[tuple[int, int] | Exception], list[tuple[int, Launch, int]]]:
        """posix_spawn every step; per step (pid, log read end) or what stopped it, and
        what `_place` must do: (pid, launch, gate write end)."""
        results: list[tuple[int, int] | Exception] = []
        placing: list[tuple[int, Launch, int]] = []
        for launch in batch:
            try:
                pid, log_r, gate_w = self._spawn_process(launch)
            except Exception as exc:  # OSError, ValueError …: no spawn may wait forever
                if not isinstance(exc, OSError | ValueError | failures.Error):
                    log.exception("%s: spawning failed", launch.log_path)
                results.append(exc)
                continue
            results.append((pid, log_r))
            if gate_w >= 0:
                placing.append((pid, launch, gate_w))
        return results, placing

    def _place(self, placing: list[tuple[int, Launch, int]]) -> None:
        """Move each gated step into its cgroup (made at its first start), then open all
        their gates together (a step's own start-up does not take the CPU from the moves
        of the rest). One that cannot be placed has its gate closed: it exits 125 there,
        having run nothing. System calls and the cgroups' own table only: safe on the
        mover thread."""
        opened = []
        for pid, launch, gate_w in placing:
            if launch.cgroup is not None:
                try:
                    self.cgroups.attach(launch.cgroup, pid, launch.limits)
                except (OSError, cgroups_.LimitError) as exc:
                    log.error("%s: pid %d cannot be put into its cgroup, so it does not "
                              "run: %s", launch.cgroup, pid, exc)
                    os.close(gate_w)
                    continue
            opened.append(gate_w)
        for fd in opened:
            with contextlib.suppress(OSError):  # EPIPE: it died; its watch sees it
                os.write(fd, b"\n")
            os.close(fd)

    def _spawn_process(self, launch: Launch) -> tuple[int, int, int]:
        """The child's pid, its output's read end and its gate's write end (-1: none)."""
        log_r, log_w = os.pipe()
        try:
            gate_r, gate_w = os.pipe() if launch.gated else (-1, -1)
        except OSError:
            os.close(log_r)
            os.close(log_w)
            raise
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_w, 1), (os.POSIX_SPAWN_DUP2, log_w, 2)]
        if launch.gated:
            actions.append((os.POSIX_SPAWN_DUP2, gate_r, 3))
        try:
            pid = os.posix_spawn(launch.argv[0], launch.argv, launch.env, setsid=True,
                                 file_actions=actions, setsigdef=_PYTHON_IGNORES)
        except BaseException:
            for fd in (log_r, gate_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (log_w, gate_r):
                if fd >= 0:
                    os.close(fd)
        return pid, log_r, gate_w

    def _settle(self, launch: Launch, done: _Done,
                result: tuple[int, int] | Exception) -> None:
        """Back on the loop: account for the spawned process, answer the spawner."""
        if isinstance(result, Exception):
            if not done.done():
                done.set_exception(result)
            return
        pid, log_r = result
        self._pending_logs.append((log_r, launch.log_path))
        child = Child(pid)
        self.children[pid] = child
        ref = launch.ref.model_copy(update={"pid": pid})
        self._pending_refs.append(ref)
        if not done.done():
            done.set_result((child, ref))

    def finish(self) -> None:
        """Complete the steps spawned since the last call: their start times (read now,
        not at each spawn: reading /proc/PID/stat waits while PID is still in exec) and
        one log writer for all of them."""
        refs, self._pending_refs = self._pending_refs, []
        for ref in refs:
            ref.start_time = procfs.read_start_time(ref.pid) or 0
        pending, self._pending_logs = self._pending_logs, []
        if not pending:
            return
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)]
        args = [sys.executable, "-I", "-S", LOGPIPE, str(self.log_max_bytes),
                str(self.log_keep)]
        # Our read ends may sit where the writer wants fds 3..: move them above first.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(pending)) for fd, _ in pending]
        for i, (fd, (_, path)) in enumerate(zip(high, pending, strict=True)):
            actions.append((os.POSIX_SPAWN_DUP2, fd, 3 + i))
            args.append(f"{3 + i}={path}")
        try:
            pid = os.posix_spawn(sys.executable, args, {}, setsid=True, file_actions=actions)
            self.children[pid] = Child(pid)
        finally:
            for fd in [*high, *(fd for fd, _ in pending)]:
                os.close(fd)
