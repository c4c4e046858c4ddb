"""The process runtime's shell: lifecycle steps as real processes, started, watched and
ended (`processes.py` decides which step runs when; this module runs it).

Each step runs `/bin/sh -c SCRIPT` in its own session (so its process group can be
signalled as a whole and it survives the agent), as the component's user
(`userswitch.py`), with a clean environment, stdin from /dev/null and stdout/stderr into
a logpipe process, never into the agent. Spawning (`spawner.py`, the batcher) is
`os.posix_spawn` of `hedgerow-gate` (gate/gate.c), which waits at a gate (a pipe on fd
3), makes the work folder, forks, and drops to the component's user to exec the shell;
its root half stays the step's parent and leaves the step's exit code in state/exits/
(a folder only root can write), read back for a process the agent adopted after a
restart. The gate opens once the process is in its component's own cgroup (see
cgroups.py), so not one instruction of the step, and nothing it forks, runs outside:
that cgroup is how the agent finds everything a component started, whatever it does
with sessions, process groups and environment (`procfs.py` reads the rest). Where
hedgerow-gate is not built, `setpriv` (util-linux) drops privileges, the agent makes the
folder, the shell itself waits at the gate (~1.3 ms more CPU per start, plus the mkdir
in the pass) and no one root writes the exit code: an adopted process's exit then
counts as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import shlex
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from hedgerow.agent import cgroups as cgroups_
from hedgerow.agent import failures, fsguard, procfs, records, settings, spawner, userswitch
from hedgerow.agent.layout import Layout
from hedgerow.core import component, documents, environment

log = logging.getLogger("hedgerow.agent")
DEFAULT_TIMEOUTS: Mapping[str, float | None] = {
    "install": 120.0, "startup": 120.0, "shutdown": 15.0, "recover": 60.0, "run": None}
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GATE = pathlib.Path(__file__).with_name("gate") / "hedgerow-gate"
_SHELL_GATE = "read -r _ <&3 || exit 125\nexec 3<&-\n"
@dataclasses.dataclass(frozen=True)
class StepResult:
    ok: bool
    timed_out: bool = False
    code: int | None = None
    skipped: bool = False
    message: str = ""


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


class ProcessRuntime:
    name = "process"

    def __init__(self, layout: Layout, thing: str, cgroups: cgroups_.Cgroups,
                 default_user: str = "nobody", log_max_bytes: int = 1 << 20,
                 log_keep: int = 3, kill_grace_s: float = 5.0,
                 region: str = settings.DEFAULT_REGION) -> None:
        self.layout, self.thing, self.cgroups = layout, thing, cgroups
        self.facts = environment.AgentFacts(
            thing=thing, region=region, ipc_socket=str(layout.ipc_socket),
            root_ca=str(layout.root_ca), root=str(layout.root))
        self.default_user, self.kill_grace_s = default_user, kill_grace_s
        self.log_max_bytes, self.log_keep = log_max_bytes, log_keep
        self.spawner = spawner.Spawner(cgroups, log_max_bytes, log_keep)
        self.children = self.spawner.children  # the steps this agent is the parent of
        self._watches: dict[str, int] = {}
        self._identities: dict[tuple[str | None, bool],
                               tuple[userswitch.Identity, float]] = {}
        self._doomed: dict[str, int] = {}  # cgroups to remove, tries left
        self._scan: tuple[float, dict[int, set[int]]] | None = None
        self._verified: dict[str, records.ProcessRef] = {}  # by component: is_running
        # Resolved once: posix_spawn takes a path. Missing, the spawn fails with a clear
        # "No such file or directory: 'setpriv'" instead of running a step as root.
        self.gate = find_gate()
        self.setpriv = shutil.which("setpriv", path=_SAFE_PATH) or "setpriv"

    # --- environment ----------------------------------------------------------------

    def identity(self, posix_user: str | None, privileged: bool) -> userswitch.Identity:
        """`resolve_identity`, remembered for a second: a pass that starts 50 components
        reads /etc/passwd once, and a user added since is seen by the next pass."""
        key = (posix_user, privileged)
        now = time.monotonic()
        known = self._identities.get(key)
        if known is None or known[1] < now:
            known = (userswitch.resolve_identity(posix_user, self.default_user, privileged),
                     now + 1.0)
            self._identities[key] = known
        return known[0]

    def environment(self, record: records.Record, comp: documents.ResolvedComponent,
                    step_env: Mapping[str, str], identity: userswitch.Identity,
                    marker: str) -> dict[str, str]:
        env = {
            "PATH": _SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(self.layout.work_of(comp.name)),
            "USER": identity.name,
            **environment.render_component_env(comp.name, comp.version, record.token,
                                               self.facts),
        }
        env.update(step_env)
        env["HEDGEROW_INSTANCE"] = marker  # last: a recipe cannot forge our marker
        return env

    def prepare_work(self, comp: documents.ResolvedComponent,
                     identity: userswitch.Identity) -> None:
        """The work folder, the component's, 0700 (by descriptor: work/ is root's, and a
        link in the folder's place is refused, not followed)."""
        work = self.layout.work_of(comp.name)
        with contextlib.suppress(FileExistsError):
            work.mkdir(mode=0o700)
        fsguard.chown_dir(work, identity.uid, identity.gid, 0o700)

    # --- spawning -------------------------------------------------------------------

    async def spawn(self, record: records.Record, comp: documents.ResolvedComponent,
                    step_name: str, step: component.Step, script: str,
                    env: Mapping[str, str]) -> tuple[spawner.Child, records.ProcessRef]:
        """Start one step; raises failures.PermanentError (no such user, a limit the
        cgroups cannot set), OSError or ValueError (the kernel refused) when it cannot.

        Steps spawned in the same turn of the event loop (a pass starting 50 components)
        are launched together, after all of them are prepared: the Python work is done
        before the first child competes for the CPU, and the launches run back to back.
        Its output pipe is queued for the batch's log writer, and the ref's start time
        is read then: call `finish_spawns` before awaiting anything else (a pipe holds
        64 KiB until the writer starts) and before the ref is recorded."""
        return await self.spawner.submit(
            self._prepare_launch(record, comp, step_name, step, script, env))

    def _prepare_launch(self, record: records.Record, comp: documents.ResolvedComponent,
                        step_name: str, step: component.Step, script: str,
                        env: Mapping[str, str]) -> spawner.Launch:
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
            environ, exports = userswitch.split_root_unsafe(environ)
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
        return spawner.Launch(argv, environ, cgroup, limits, gate_in_shell or gate is not None,
                       str(self.layout.log_of(comp.name)),
                       records.ProcessRef(pid=0, start_time=0, marker=marker, step=step_name))

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
        self.spawner.warm_up()
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

    def finish_spawns(self) -> None:
        """`Spawner.finish`: start times and one log writer for the steps just spawned."""
        self.spawner.finish()

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

    def is_skipped(self, skip_if: str | None) -> bool:
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
        if self.is_skipped(skip_if):
            return StepResult(ok=True, skipped=True, message=f"{step_name} skipped ({skip_if})")
        timeout = step.timeout_seconds or DEFAULT_TIMEOUTS[step_name]
        try:
            proc, ref = await self.spawn(record, comp, step_name, step, script, env)
        except (failures.Error, OSError, ValueError) as exc:  # the component fails
            return StepResult(ok=False, message=f"{step_name} could not start: {exc}")
        self.finish_spawns()
        on_spawn(ref)
        code = await spawner.wait_exit(proc, timeout)
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
            found |= procfs.marked(f"HEDGEROW_INSTANCE={instance}.".encode())
        return found

    def is_running(self, name: str, ref: records.ProcessRef) -> bool:
        """is_same_process, with the marker read once per process: pid and kernel start
        time already tell two processes apart; the marker (a read of the whole
        environment) proves, once, that the pid in a record is ours. Every pass asks this
        for every running component."""
        if (self._verified.get(name) == ref
                and procfs.read_start_time(ref.pid) == ref.start_time):
            return True
        if procfs.is_same_process(ref):
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
            self._scan = (now, procfs.scan_groups())
        found = set(self._scan[1].get(leader.pid, ()))
        if procfs.read_start_time(leader.pid) == leader.start_time:  # not a reused pid
            found.add(leader.pid)
        return found

    async def kill_leftovers(self, pgid: int) -> None:
        """A finished step's background processes in its group are not left behind."""
        for pid in procfs.group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def terminate(self, name: str, ref: records.ProcessRef | None) -> None:
        """SIGTERM the group and the cgroup, SIGKILL what remains after the grace period.
        The component's own cgroup lists every process it started, wherever it went;
        only without a cgroupfs (an unprivileged agent) are escaped processes looked
        for by the marker they inherited."""
        self.unwatch(name)
        leader = ref if ref is not None and procfs.is_same_process(ref) else None
        escaped = (f"HEDGEROW_INSTANCE={ref.marker}".encode()
                   if ref is not None and self.cgroups.version is None else None)
        deadline = time.monotonic() + self.kill_grace_s
        sig = signal.SIGTERM
        while True:
            self._reap()
            pids = self.members(name, leader)
            if not pids and escaped is not None:
                pids = procfs.marked(escaped)
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
        """The component's work folder (`remove_work`) and its cgroup, once the kernel
        lets it go."""
        remove_work(self.layout, name)
        self._verified.pop(name, None)
        if not self.cgroups.remove(name):
            self._doomed[name] = 50
            asyncio.get_running_loop().call_later(0.1, self._remove_cgroup, name)

    def kill(self, name: str, leader: records.ProcessRef | None, instance: str) -> None:
        """SIGKILL whatever of the component still runs, at once (a step a crash of the
        agent cut short: it is retried from a known state)."""
        for pid in self.members(name, leader, instance):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _remove_cgroup(self, name: str) -> None:
        """Try again (every 0.1 s, 5 s in all; the next start's sweep after that)."""
        tries = self._doomed.pop(name, 0)
        if tries and not self.cgroups.remove(name) and tries > 1:
            self._doomed[name] = tries - 1
            asyncio.get_running_loop().call_later(0.1, self._remove_cgroup, name)


def remove_work(layout: Layout, name: str) -> None:
    """A removed component's work folder, whatever ran it. Renamed out of the way at
    once (work/ is root's: the name is the agent's) and deleted by a thread: a component
    may have left a million files, and the loop must not wait for them (rmtree walks by
    descriptor and never follows a link). What a crash interrupts, the next start
    finishes."""
    trash = layout.work / f".removed-{uuid.uuid4().hex[:12]}"
    try:
        layout.work_of(name).rename(trash)
    except FileNotFoundError:
        return
    threading.Thread(target=shutil.rmtree, args=(trash, True), daemon=True,
                     name="work-remover").start()
