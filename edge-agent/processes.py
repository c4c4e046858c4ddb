"""Process components: the lifecycle verbs (install, start, stop, recover) carried out
as real processes by `process.ProcessRuntime`, reported to the loop as lifecycle events
(`runtime.Change`). The recipe's steps are rendered here, the identity a step would get
is checked against the device's privilege ceiling here, and what goes wrong is sorted
into the two kinds of failure (`failures`): the component's (permanent: ERRORED, retried
by the state table's backoff) and the device's (transient: out of descriptors, memory or
space — not charged to the component, retried soon).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable

from hedgerow.agent import artifacts, desired, failures, procfs, records, runtime, userswitch
from hedgerow.agent import cgroups as cgroups_
from hedgerow.agent import process as process_
from hedgerow.agent import settings as settings_
from hedgerow.agent.layout import Layout
from hedgerow.core import component, documents, privilege, recipe, streams
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.lifecycle import Event

log = logging.getLogger("hedgerow.agent")
Change = runtime.Change


class PrivilegeError(failures.PermanentError):
    """A step would get more than the device's ceiling allows."""


@dataclasses.dataclass(frozen=True)
class _Exit:
    ref: records.ProcessRef
    code: int | None  # None: adopted, and no exit code was left


class Processes(runtime.Base):
    kind = "process"

    def __init__(self, layout: Layout, thing: str, settings: settings_.Settings,
                 store: artifacts.Store, services: runtime.Services) -> None:
        self.settings, self.store, self.services = settings, store, services
        self.cgroups = cgroups_.Cgroups(group=f"hedgerow/{thing}")
        self.runner = process_.ProcessRuntime(
            layout, thing, self.cgroups, settings.default_user,
            settings.log_max_bytes, settings.log_keep, settings.kill_grace_s,
            settings.aws_region)
        self._exits: dict[str, _Exit] = {}  # run processes that ended since the last look
        self._retry_at = 0.0  # the device ran out of fds/space: try again then
        self._trouble = ""

    def claims(self, comp: documents.ResolvedComponent) -> bool:
        return comp.lifecycle is not None

    # --- observe ----------------------------------------------------------------------

    def observe_one(self, rec: records.Record, now: float) -> tuple[str, list[Change]]:
        ended = self._exits.pop(rec.name, None)
        if rec.state not in (State.RUNNING, State.STARTING) or rec.process is None:
            return rec.spec_hash, []
        if ended is not None and ended.ref == rec.process:
            rec.process = None
            if ended.code == 0:
                return rec.spec_hash, [Change(Event.EXITED_OK, "exited with 0")]
            return rec.spec_hash, [Change(Event.FAILED, "exit code unknown (adopted)"
                                          if ended.code is None
                                          else f"exited with {ended.code}")]
        if rec.state is State.RUNNING and not self.runner.is_running(rec.name, rec.process):
            rec.process = None
            return rec.spec_hash, [Change(Event.FAILED, "process disappeared")]
        return rec.spec_hash, []

    def _watch(self, name: str, ref: records.ProcessRef) -> None:
        def ended(code: int | None) -> None:
            self._exits[name] = _Exit(ref, code)
            self.services.wake()
        self.runner.watch(name, ref, ended)

    # --- prepare ----------------------------------------------------------------------

    def prepare(self, comp: documents.ResolvedComponent) -> str | None:
        """Fetch and verify the artifacts, owned by the user the component runs as."""
        try:
            identity = self.runner.identity(
                comp.run_with.posix_user if comp.run_with else None, False)
            self.store.prepare(comp, identity.uid, identity.gid)
        except (artifacts.ArtifactError, userswitch.UnknownUserError) as exc:
            return f"{comp.name}: artifact failure: {exc}"
        return None

    # --- the verbs --------------------------------------------------------------------

    async def install(self, job: runtime.Job) -> runtime.Changes:
        if job.rec.state is State.BROKEN:
            yield Change(Event.RESET, "new desired revision")
        result = await self._step(job, "install")
        if result is not None and not result.ok:
            yield Change(_fail_event(result), result.message)
            return
        yield Change(Event.INSTALLED, result.message if result else "")

    async def start(self, job: runtime.Job) -> runtime.Changes:
        comp, rec = job.comp, job.rec
        yield Change(Event.START)
        life = comp.lifecycle
        assert life is not None
        if life.run is None:
            result = await self._step(job, "startup")
            if result is not None and not result.ok:
                yield Change(_fail_event(result), result.message)
            elif result is None:
                yield Change(Event.EXITED_OK, "no startup or run step")
            else:
                yield Change(Event.STARTED)
            return
        try:
            script, env, skip = self._render(job, life.run)
            if self.runner.is_skipped(skip):
                yield Change(Event.EXITED_OK, f"run skipped ({skip})")
                return
            _proc, ref = await self.runner.spawn(rec, comp, "run", life.run, script, env)
        except OSError as exc:
            failure = failures.of_os_error(exc, "run could not start")
            if isinstance(failure, failures.PermanentError):
                yield Change(Event.FAILED, str(failure))
                return
            # The device is out of fds, memory or space: not the component's fault.
            # Back to INSTALLED through the table, no error counted; retried soon.
            yield Change(Event.STOP_REQUESTED)
            yield Change(Event.STOPPED, f"not started, retrying: {exc}")
            self._retry_at = self.services.clock() + 2.0
            if self._trouble != str(exc):
                log.error("cannot start components: %s (retrying)", exc)
            self._trouble = str(exc)
            return
        except ValueError as exc:  # the kernel's refusal of what no schema caught (a NUL)
            yield Change(Event.FAILED, f"run could not start: {exc}")
            return
        except failures.PermanentError as exc:  # a variable, the ceiling, no such user
            yield Change(Event.FAILED, f"run: {exc}")
            return
        if self._trouble:
            log.info("spawn: working again")
            self._trouble = ""
        rec.process = ref
        yield Change(Event.STARTED, f"pid {ref.pid}")
        self._watch(comp.name, ref)

    async def stop(self, rec: records.Record, *, remove: bool,
                   replacing: bool) -> runtime.Changes:
        ref, rec.process = rec.process, None
        self._thaw(rec)
        self.runner.unwatch(rec.name)
        self._exits.pop(rec.name, None)
        yield Change(Event.STOP_REQUESTED)
        if rec.state is State.STOPPING:
            comp = rec.component()
            job = runtime.Job(comp, rec, self.services.step_context_of(comp))
            result = await self._step(job, "shutdown") if comp.lifecycle else None
            await self.runner.terminate(rec.name, ref)
            yield Change(Event.STOPPED,
                         result.message if result and not result.ok else "stopped")
        else:
            await self.runner.terminate(rec.name, ref)

    def _thaw(self, rec: records.Record) -> None:
        """A paused component (IPC PauseComponent) is thawed before it is stopped: a
        frozen process cannot run its shutdown nor even die of SIGKILL."""
        rec.paused = False
        if self.cgroups.is_frozen(rec.name):
            self.cgroups.freeze(rec.name, False)

    async def recover(self, job: runtime.Job) -> runtime.Changes:
        self._thaw(job.rec)
        await self.runner.terminate(job.comp.name, job.rec.process)
        job.rec.process = None
        result = await self._step(job, "recover")
        if result is not None and not result.ok:
            yield Change(_fail_event(result), result.message)
            return
        yield Change(Event.RECOVER, "recovering")

    def forget(self, name: str) -> None:
        self._exits.pop(name, None)
        self.runner.remove(name)

    def finish(self) -> None:
        self.runner.finish_spawns()

    # --- steps --------------------------------------------------------------------------

    def _render(self, job: runtime.Job,
                step: component.Step) -> tuple[str, dict[str, str], str | None]:
        """The step's script, environment and skipif, rendered; raises PermanentError
        (a variable that does not resolve, an identity above the ceiling)."""
        life = job.comp.lifecycle
        assert life is not None
        self._check_identity(job.comp, step)
        try:
            script = recipe.render_text(step.script, job.context)
            env = {**streams.resolve_client_env(
                {n: p.configuration for n, p in job.context.dependencies.items()},
                job.rec.token),
                **recipe.render_env({**life.setenv, **step.setenv}, job.context)}
            skip = recipe.render_text(step.skip_if, job.context) if step.skip_if else None
        except recipe.RecipeVariableError as exc:
            raise failures.PermanentError(str(exc)) from exc
        return script, env, skip

    async def _step(self, job: runtime.Job, name: str) -> process_.StepResult | None:
        """Run a lifecycle step to completion; None when the recipe has no such step."""
        life = job.comp.lifecycle
        assert life is not None
        step: component.Step | None = getattr(life, name)
        if step is None:
            return None
        try:
            script, env, skip = self._render(job, step)
        except failures.PermanentError as exc:
            return process_.StepResult(ok=False, message=f"{name}: {exc}")
        rec = job.rec

        def remember(ref: records.ProcessRef) -> None:
            rec.process = ref
            self.services.checkpoint()  # the step may run long: its pid must survive a crash

        result = await self.runner.run_step(rec, job.comp, name, step, script, env, skip,
                                            remember)
        rec.process = None
        return result

    def _check_identity(self, comp: documents.ResolvedComponent,
                        step: component.Step) -> None:
        """Below `privileged`, no step runs as uid or gid 0 — also not through a user
        *name* that maps to 0 on this device (`toor:x:0:0`), which no check of the recipe
        can see. Raises PrivilegeError (UnknownUserError: no such user)."""
        ceiling = self.settings.max_privilege
        if privilege.is_allowed(privilege.Level.PRIVILEGED, ceiling) or os.geteuid() != 0:
            return
        user = comp.run_with.posix_user if comp.run_with else None
        identity = self.runner.identity(user, step.requires_privilege)
        if identity.uid == 0 or identity.gid == 0:
            raise PrivilegeError(
                f"{comp.name}: runs as {user or self.settings.default_user!r} = uid "
                f"{identity.uid}, gid {identity.gid} (root); needs privilege level "
                f"'privileged', granted {ceiling.value!r} ({desired.CEILING_SOURCE})")

    # --- around the loop ----------------------------------------------------------------

    def adopt(self, rec: records.Record) -> list[Change]:
        """After a crash: keep a run process whose identity matches; a step cut short by
        the crash (install, startup, shutdown, recover) is ended and retried from a known
        state — nothing runs twice, nothing is orphaned."""
        ref = rec.process
        alive = ref is not None and procfs.is_same_process(ref)
        if ref is not None and alive and ref.step == "run" and rec.state is State.RUNNING:
            self._watch(rec.name, ref)
            log.info("%s: adopted pid %d", rec.name, ref.pid)
            return []
        self.runner.kill(rec.name, ref if alive else None, rec.instance)
        rec.process = None
        if rec.state in (State.STARTING, State.RUNNING):
            return [Change(Event.FAILED, "process ended while the agent was down")]
        if rec.state is State.STOPPING:
            return [Change(Event.STOPPED)]
        return []

    def warm_up(self, recs: Iterable[records.Record]) -> None:
        self.runner.warm_up([r.process.marker for r in recs if r.process is not None])

    def next_wake(self, recs: Iterable[records.Record], now: float) -> float | None:
        return self._retry_at if self._retry_at > now else None


def _fail_event(result: process_.StepResult) -> Event:
    return Event.TIMED_OUT if result.timed_out else Event.FAILED

