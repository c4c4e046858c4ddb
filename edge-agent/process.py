"""The process runtime: lifecycle steps as real processes (one of the runtimes behind
plan).

Each step runs `/bin/sh -c SCRIPT` in its own session (so its process group can be
signalled as a whole and it survives the agent), as the component's user, with a clean
environment, stdin from /dev/null and stdout/stderr into a logpipe process, never into
the agent. Spawning is `os.posix_spawn` (vfork-like: the agent is never copied) of
`hedgerow-gate` (gate/gate.c), which waits at a gate (a pipe on fd 3), makes the work
folder, forks, and drops to the component's user to exec the shell; its root half
stays the step's parent and leaves the step's exit code in state/exits/ (a folder only
root can write), read back for a process the agent adopted after a restart. The gate
opens once the process is in its component's own cgroup (see cgroups.py), so not one
instruction of the step, and nothing it forks, runs outside: that cgroup is how the
agent finds everything a component started, whatever it does with sessions, process
groups and environment. The moves are made by a thread of the agent, off its loop
(the kernel makes an isolated move wait for an RCU grace period, ~7.5 ms, unless
another move came just before), and the gates of a batch open together once all of
it is moved, so the steps' own start-up (their mkdir: 0.1-0.6 ms of CPU on ext4 here;
the shell) does not slow the spawning of the rest. Where hedgerow-gate is not built,
`setpriv` (util-linux) drops privileges, the agent makes the folder, the shell itself
waits at the gate (~1.3 ms more CPU per start, plus the mkdir in the pass) and no one
root writes the exit code: an adopted process's exit then counts as an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import grp
import logging
import os
import pathlib
import pwd
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from hedgerow.agent import cgroups as cgroups_
from hedgerow.agent import fsguard, records
from hedgerow.agent.layout import Layout
from hedgerow.core import component, deployment, documents

log = logging.getLogger("hedgerow.agent")
DEFAULT_TIMEOUTS: Mapping[str, float | None] = {
    "install": 120.0, "startup": 120.0, "shutdown": 15.0, "recover": 60.0, "run": None}
_LOGPIPE = str(pathlib.Path(__file__).with_name("logpipe.py"))
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GATE = pathlib.Path(__file__).with_name("gate") / "hedgerow-gate"
_SHELL_GATE = "read -r _ <&3 || exit 125\nexec 3<&-\n"
# Python ignores these; a step must start with the defaults (`yes | head` ends by SIGPIPE).
_PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)
# What glibc ignores when it starts a program with privileges (its unsecvars.h), plus
# every LD_* and MALLOC_*: in the setpriv fallback, setpriv — dynamically linked — runs
# as root with the step's environment, so a recipe's LD_PRELOAD would run as root. These
# reach the step through its shell instead (`export`), once it runs as its user.
_ROOT_UNSAFE = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
    "LOCPATH", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"})
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def split_root_unsafe(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """(what setpriv may see, the `export` lines that give the step the rest). A name the
    shell cannot export cannot be among the rest: it is left out, and said so."""
    safe, held = {}, []
    for name, value in env.items():
        if name not in _ROOT_UNSAFE and not name.startswith(("LD_", "MALLOC_")):
            safe[name] = value
        elif _SHELL_NAME.fullmatch(name):
            held.append(f"export {name}={shlex.quote(value)}\n")
        else:
            log.warning("%s is not passed to the step: setpriv would see it as root, and "
                        "the shell cannot export it (build hedgerow-gate)", name)
    return safe, "".join(held)


@dataclasses.dataclass(frozen=True)
class StepResult:
    ok: bool
    timed_out: bool = False
    code: int | None = None
    skipped: bool = False
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str
    home: str


def read_start_time(pid: int) -> int | None:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def is_same_process(ref: records.ProcessRef) -> bool:
    """Pid, kernel start time and our marker must all match: pids get reused."""
    if read_start_time(ref.pid) != ref.start_time:
        return False
    try:
        environ = pathlib.Path(f"/proc/{ref.pid}/environ").read_bytes()
    except OSError:
        return False
    return f"HEDGEROW_INSTANCE={ref.marker}".encode() in environ.split(b"\0")


def find_gate() -> str | None:
    """hedgerow-gate: $HEDGEROW_GATE (empty: none, use setpriv), else the one built beside
    this module (`make gate`); None when there is none to run."""
    path = os.environ.get("HEDGEROW_GATE", str(_GATE))
    return path if path and os.access(path, os.X_OK) else None


def is_runnable_gate(path: str) -> bool:
    """It runs on this machine: without arguments it must answer with its usage (127).
    A wheel carries the one built where the wheel was; elsewhere exec fails."""
    try:
        pid = os.posix_spawn(path, [path], {}, file_actions=[
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    except OSError:
        return False
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 127


def resolve_identity(posix_user: str | None, default_user: str,
                     privileged: bool) -> Identity:
    if os.geteuid() != 0:  # an unprivileged agent can only run things as itself
        me = pwd.getpwuid(os.geteuid())
        return Identity(me.pw_uid, me.pw_gid, me.pw_name, me.pw_dir)
    if privileged:
        return Identity(0, 0, "root", "/root")
    user, _, group = (posix_user or default_user).partition(":")
    entry = pwd.getpwnam(user)  # KeyError: an unknown user is a permanent error
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    return Identity(entry.pw_uid, gid, entry.pw_name, entry.pw_dir)


@dataclasses.dataclass(frozen=True)
class _Launch:
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


def _read_proc(path: str) -> bytes:
    """A /proc file, os-level: a scan reads hundreds, and pathlib objects add up."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    finally:
        os.close(fd)


def scan_groups() -> dict[int, set[int]]:
    """Every live (not zombie) process, by process group: one pass over /proc."""
    out: dict[int, set[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = _read_proc(f"/proc/{entry.name}/stat")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] != b"Z":
            out.setdefault(int(fields[2]), set()).add(int(entry.name))
    return out


def group_members(pgid: int) -> set[int]:
    return scan_groups().get(pgid, set())


def marked(prefix: bytes, among: set[int] | None = None) -> set[int]:
    """Live processes with an environment entry starting with `prefix` (our marker),
    looked for `among` these pids, or all of /proc."""
    pids = among if among is not None else (
        int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
    out = set()
    for pid in pids:
        try:
            environ = _read_proc(f"/proc/{pid}/environ")
        except OSError:
            continue
        if any(v.startswith(prefix) for v in environ.split(b"\0")) and \
                read_start_time(pid) is not None:
            out.add(pid)
    return out


class ProcessRuntime:
    name = "process"

    def __init__(self, layout: Layout, thing: str, cgroups: cgroups_.Cgroups,
                 default_user: str = "nobody", log_max_bytes: int = 1 << 20,
                 log_keep: int = 3, kill_grace_s: float = 5.0) -> None:
        self.layout, self.thing, self.cgroups = layout, thing, cgroups
        self.default_user, self.kill_grace_s = default_user, kill_grace_s
        self.log_max_bytes, self.log_keep = log_max_bytes, log_keep
        self.children: dict[int, Child] = {}
        self._watches: dict[str, int] = {}
        self._pending_logs: list[tuple[int, str]] = []  # pipe read ends, log paths
        self._pending_refs: list[records.ProcessRef] = []  # start times still to read
        self._identities: dict[tuple[str | None, bool], tuple[Identity, float]] = {}
        self._launches: list[tuple[_Launch, _Done]] = []
        # Moves processes into their cgroups and opens their gates, off the loop.
        self._mover: concurrent.futures.ThreadPoolExecutor | None = None
        self._doomed: dict[str, int] = {}  # cgroups to remove, tries left
        self._scan: tuple[float, dict[int, set[int]]] | None = None
        self._verified: dict[str, records.ProcessRef] = {}  # by component: is_running
        # Resolved once: posix_spawn takes a path. Missing, the spawn fails with a clear
        # "No such file or directory: 'setpriv'" instead of running a step as root.
        self.gate = find_gate()
        self.setpriv = shutil.which("setpriv", path=_SAFE_PATH) or "setpriv"

    # --- environment ----------------------------------------------------------------

    def identity(self, posix_user: str | None, privileged: bool) -> Identity:
        """`resolve_identity`, remembered for a second: a pass that starts 50 components
        reads /etc/passwd once, and a user added since is seen by the next pass."""
        key = (posix_user, privileged)
        now = time.monotonic()
        known = self._identities.get(key)
        if known is None or known[1] < now:
            known = (resolve_identity(posix_user, self.default_user, privileged), now + 1.0)
            self._identities[key] = known
        return known[0]

    def environment(self, record: records.Record, comp: documents.ResolvedComponent,
                    step_env: Mapping[str, str], identity: Identity,
                    marker: str) -> dict[str, str]:
        env = {
            "PATH": _SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(self.layout.work_of(comp.name)),
            "USER": identity.name,
            "HEDGEROW_THING_NAME": self.thing, "AWS_IOT_THING_NAME": self.thing,
            "HEDGEROW_ROOT": str(self.layout.root),
            "HEDGEROW_COMPONENT": comp.name, "HEDGEROW_COMPONENT_VERSION": comp.version,
            "HEDGEROW_IPC_SOCKET": str(self.layout.ipc_socket),
            "HEDGEROW_AUTH_TOKEN": record.token, "SVCUID": record.token,
        }
        env.update(step_env)
        env["HEDGEROW_INSTANCE"] = marker  # last: a recipe cannot forge our marker
        return env

    def prepare_work(self, comp: documents.ResolvedComponent, identity: Identity) -> None:
        """The work folder, the component's, 0700 (by descriptor: work/ is root's, and a
        link in the folder's place is refused, not followed)."""
        work = self.layout.work_of(comp.name)
        with contextlib.suppress(FileExistsError):
            work.mkdir(mode=0o700)
        fsguard.chown_dir(work, identity.uid, identity.gid, 0o700)

    # --- spawning -------------------------------------------------------------------

    async def spawn(self, record: records.Record, comp: documents.ResolvedComponent,
                    step_name: str, step: component.Step, script: str,
                    env: Mapping[str, str]) -> tuple[Child, records.ProcessRef]:
        """Start one step; raises OSError/KeyError/LimitError when it cannot start.

        Steps spawned in the same turn of the event loop (a pass starting 50 components)
        are launched together, after all of them are prepared: the Python work is done
        before the first child competes for the CPU, and the launches run back to back.
        Its output pipe is queued for the batch's log writer, and the ref's start time
        is read then: call `finish_spawns` before awaiting anything else (a pipe holds
        64 KiB until the writer starts) and before the ref is recorded."""
        launch = self._prepare_launch(record, comp, step_name, step, script, env)
        loop = asyncio.get_running_loop()
        done: _Done = loop.create_future()
        self._launches.append((launch, done))
        if len(self._launches) == 1:
            loop.call_soon(self._launch_all)
        return await done

    def _prepare_launch(self, record: records.Record, comp: documents.ResolvedComponent,
                        step_name: str, step: component.Step, script: str,
                        env: Mapping[str, str]) -> _Launch:
        identity = self.identity(comp.run_with.posix_user if comp.run_with else None,
                                 step.requires_privilege)
        drop = os.geteuid() == 0 and identity.uid != 0
        gate = self.gate if drop else None  # None: setpriv, or no user switch at all
        if gate is None:  # else hedgerow-gate makes it, past the agent's pass
            self.prepare_work(comp, identity)
        limits = comp.run_with.system_resource_limits if comp.run_with else None
        cgroup = self.cgroups.name_for(comp.name, limits)  # made by the mover thread
        marker = f"{record.instance or 'x'}.{uuid.uuid4().hex[:16]}"
        work = self.layout.work_of(comp.name)
        environ, exports = self.environment(record, comp, env, identity, marker), ""
        if drop and gate is None:
            environ, exports = split_root_unsafe(environ)
        gate_in_shell = cgroup is not None and gate is None
        exit_file = str(self.layout.exit_file(marker))
        # The exit code is written by root: hedgerow-gate's parent half, or the step's
        # own shell when it runs as the agent's user. A step that dropped privileges
        # through setpriv leaves none (it could write whatever it likes).
        trap = "" if drop else (
            f"trap {shlex.quote(f'echo $? >{shlex.quote(exit_file)}')} EXIT\n")
        inner = ((_SHELL_GATE if gate_in_shell else "") + exports + trap
                 + f"cd {shlex.quote(str(work))} || exit 125\n{script}")
        if gate is not None:
            argv = [gate, str(identity.uid), str(identity.gid), str(work), exit_file,
                    "/bin/sh", "-c", inner]
        elif drop:
            argv = [self.setpriv, f"--reuid={identity.uid}", f"--regid={identity.gid}",
                    "--clear-groups", "--", "/bin/sh", "-c", inner]
        else:
            argv = ["/bin/sh", "-c", inner]
        return _Launch(argv, environ, cgroup, limits, gate_in_shell or gate is not None,
                       str(self.layout.log_of(comp.name)),
                       records.ProcessRef(pid=0, start_time=0, marker=marker, step=step_name))

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

    def warm_up(self, adopted: Iterable[str] = ()) -> None:
        """At start: check that hedgerow-gate runs here (else setpriv, said once), make
        the thread that moves processes into their cgroups, and remove the empty cgroups
        earlier runs left (of removed components and things, of older versions) and the
        exit files of every process but the `adopted` markers."""
        if self.gate is not None and os.geteuid() == 0 and not is_runnable_gate(self.gate):
            log.warning("%s does not run here (built for another machine?): rebuild it "
                        "with `make gate`", self.gate)
            self.gate = None
        if self.gate is None and os.geteuid() == 0:
            log.info("hedgerow-gate is not built (make gate, or HEDGEROW_GATE=PATH): steps "
                     "drop privileges with setpriv, ~1.3 ms more CPU per start")
        if self._mover is None:
            self._mover = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cgroup-mover")
        try:
            swept = self.cgroups.sweep()
        except OSError as exc:
            log.warning("cannot remove empty cgroups of earlier runs: %s", exc)
        else:
            if swept:
                log.info("removed %d empty cgroup(s) of earlier runs", len(swept))
        keep = set(adopted)
        with contextlib.suppress(OSError):
            for entry in self.layout.exits.iterdir():
                if entry.name not in keep:
                    entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # work folders a removal left half deleted
            for trash in self.layout.work.glob(".removed-*"):
                threading.Thread(target=shutil.rmtree, args=(trash, True), daemon=True,
                                 name="work-remover").start()

    def _spawn_batch(self, batch: list[_Launch]) -> tuple[
            list[tuple[int, int] | Exception], list[tuple[int, _Launch, int]]]:
        """posix_spawn every step; per step (pid, log read end) or what stopped it, and
        what `_place` must do: (pid, launch, gate write end)."""
        results: list[tuple[int, int] | Exception] = []
        placing: list[tuple[int, _Launch, int]] = []
        for launch in batch:
            try:
                pid, log_r, gate_w = self._spawn_process(launch)
            except Exception as exc:  # OSError, ValueError …: no spawn may wait forever
                if not isinstance(exc, OSError | ValueError | cgroups_.LimitError):
                    log.exception("%s: spawning failed", launch.log_path)
                results.append(exc)
                continue
            results.append((pid, log_r))
            if gate_w >= 0:
                placing.append((pid, launch, gate_w))
        return results, placing

    def _place(self, placing: list[tuple[int, _Launch, int]]) -> None:
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

    def _spawn_process(self, launch: _Launch) -> tuple[int, int, int]:
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

    def _settle(self, launch: _Launch, done: _Done,
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

    def finish_spawns(self) -> None:
        """Complete the steps spawned since the last call: their start times (read now,
        not at each spawn: reading /proc/PID/stat waits while PID is still in exec) and
        one log writer for all of them."""
        refs, self._pending_refs = self._pending_refs, []
        for ref in refs:
            ref.start_time = read_start_time(ref.pid) or 0
        pending, self._pending_logs = self._pending_logs, []
        if not pending:
            return
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)]
        args = [sys.executable, "-I", "-S", _LOGPIPE, str(self.log_max_bytes),
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

    def exit_code_of(self, ref: records.ProcessRef) -> int | None:
        """An adopted process's exit code, from the file root wrote when it ended
        (state/exits/: never through a link, never a FIFO, a few bytes at most)."""
        path = self.layout.exit_file(ref.marker)
        try:
            text = fsguard.read_small(path, 8, owner=os.geteuid()).strip()
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        return int(text) if text.isdigit() else None

    def is_skipped(self, step: component.Step, skip_if: str | None) -> bool:
        if not skip_if:
            return False
        kind, _, arg = skip_if.partition(" ")
        if kind == "onpath":
            return shutil.which(arg.strip(), path=_SAFE_PATH) is not None
        return pathlib.Path(arg.strip()).exists()

    async def run_step(self, record: records.Record, comp: documents.ResolvedComponent,
                       step_name: str, step: component.Step, script: str,
                       env: Mapping[str, str], skip_if: str | None,
                       on_spawn: Callable[[records.ProcessRef], None]) -> StepResult:
        """Run a step to completion (install, startup, shutdown, recover)."""
        if self.is_skipped(step, skip_if):
            return StepResult(ok=True, skipped=True, message=f"{step_name} skipped ({skip_if})")
        timeout = step.timeout_seconds or DEFAULT_TIMEOUTS[step_name]
        try:
            proc, ref = await self.spawn(record, comp, step_name, step, script, env)
        except Exception as exc:  # whatever it is, the component fails, not the pass
            return StepResult(ok=False, message=f"{step_name} could not start: {exc}")
        self.finish_spawns()
        on_spawn(ref)
        code = await wait_exit(proc, timeout)
        if code is None:
            await self.terminate(comp.name, ref)
            return StepResult(ok=False, timed_out=True,
                              message=f"{step_name} timed out after {timeout:g}s")
        self.children.pop(proc.pid, None)
        self.layout.exit_file(ref.marker).unlink(missing_ok=True)
        await self.kill_leftovers(ref.pid)
        if code != 0:
            return StepResult(ok=False, code=code, message=f"{step_name} exited with {code}")
        return StepResult(ok=True, code=0)

    # --- watching and stopping ----------------------------------------------------

    def watch(self, name: str, ref: records.ProcessRef,
              on_exit: Callable[[int | None], None]) -> bool:
        """Call on_exit(code) once when the process ends; code is None for an adopted one."""
        self.unwatch(name)
        try:
            fd = os.pidfd_open(ref.pid)
        except ProcessLookupError:
            return False
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self.unwatch(name)
            proc = self.children.pop(ref.pid, None)
            if proc is not None:
                code: int | None = proc.wait()
                self.layout.exit_file(ref.marker).unlink(missing_ok=True)
            else:
                code = self.exit_code_of(ref)
            on_exit(code)

        self._watches[name] = fd
        loop.add_reader(fd, fire)
        return True

    def unwatch(self, name: str) -> None:
        fd = self._watches.pop(name, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def members(self, name: str, leader: records.ProcessRef | None,
                instance: str = "") -> set[int]:
        found = self.cgroups.pids(name)
        if leader is not None:
            found |= self._group(leader)
        if instance:  # after a crash: processes spawned but never recorded by pid
            found |= marked(f"HEDGEROW_INSTANCE={instance}.".encode())
        return found

    def is_running(self, name: str, ref: records.ProcessRef) -> bool:
        """is_same_process, with the marker read once per process: pid and kernel start
        time already tell two processes apart; the marker (a read of the whole
        environment) proves, once, that the pid in a record is ours. Every pass asks this
        for every running component."""
        if self._verified.get(name) == ref and read_start_time(ref.pid) == ref.start_time:
            return True
        if is_same_process(ref):
            self._verified[name] = ref.model_copy()
            return True
        self._verified.pop(name, None)
        return False

    def _group(self, leader: records.ProcessRef) -> set[int]:
        """group_members from a /proc scan at most 5 ms old, plus the leader when alive.
        Stopping 50 components together, each polls its group every 20 ms; one scan
        answers them all. A poll after a kill comes 20 ms later, so the scan it reads was
        made after that kill; the first poll may read a scan made before the group's
        leader was spawned, which is why the leader is added (then killed, then polled)."""
        now = time.monotonic()
        if self._scan is None or now - self._scan[0] > 0.005:
            self._scan = (now, scan_groups())
        found = set(self._scan[1].get(leader.pid, ()))
        if read_start_time(leader.pid) == leader.start_time:  # not a reused pid
            found.add(leader.pid)
        return found

    async def kill_leftovers(self, pgid: int) -> None:
        """A finished step's background processes in its group are not left behind."""
        for pid in group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def terminate(self, name: str, ref: records.ProcessRef | None) -> None:
        """SIGTERM the group and the cgroup, SIGKILL what remains after the grace period.
        The component's own cgroup lists every process it started, wherever it went;
        only without a cgroupfs (an unprivileged agent) are escaped processes looked
        for by the marker they inherited."""
        self.unwatch(name)
        leader = ref if ref is not None and is_same_process(ref) else None
        escaped = (f"HEDGEROW_INSTANCE={ref.marker}".encode()
                   if ref is not None and self.cgroups.version is None else None)
        deadline = time.monotonic() + self.kill_grace_s
        sig = signal.SIGTERM
        while True:
            self._reap()
            pids = self.members(name, leader)
            if not pids and escaped is not None:
                pids = marked(escaped)
            if not pids:
                break
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            await asyncio.sleep(0.02)
        if ref is not None:
            proc = self.children.pop(ref.pid, None)
            if proc is not None:
                proc.wait()
            self.layout.exit_file(ref.marker).unlink(missing_ok=True)

    def _reap(self) -> None:
        for pid, proc in list(self.children.items()):
            if proc.poll() is not None:
                self.children.pop(pid, None)

    def remove(self, name: str) -> None:
        """The component's work folder and its cgroup, once the kernel lets it go. The
        folder is renamed out of the way at once (work/ is root's: the name is the
        agent's) and deleted by a thread: a component may have left a million files,
        and the loop must not wait for them (rmtree walks by descriptor and never
        follows a link). What a crash interrupts, the next start finishes."""
        trash = self.layout.work / f".removed-{uuid.uuid4().hex[:12]}"
        try:
            self.layout.work_of(name).rename(trash)
        except FileNotFoundError:
            pass
        else:
            threading.Thread(target=shutil.rmtree, args=(trash, True), daemon=True,
                             name="work-remover").start()
        self._verified.pop(name, None)
        if not self.cgroups.remove(name):
            self._doomed[name] = 50
            asyncio.get_running_loop().call_later(0.1, self._remove_cgroup, name)

    def _remove_cgroup(self, name: str) -> None:
        """Try again (every 0.1 s, 5 s in all; the next start's sweep after that)."""
        tries = self._doomed.pop(name, 0)
        if tries and not self.cgroups.remove(name) and tries > 1:
            self._doomed[name] = tries - 1
            asyncio.get_running_loop().call_later(0.1, self._remove_cgroup, name)
