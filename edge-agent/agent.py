"""The edge agent: ONE level-triggered loop.

Anything — a change under desired/ or deployments/, a component process exit, a control
command, a backoff deadline, the periodic resync — only sets `wake`. Each pass then runs
the same flat checklist (`reconcile`): read desired, pick the document to apply (last
good on bad input, last successful on rollback), observe, plan (pure), apply, judge the
deployment, write status once, persist. The loop decides and applies transitions;
the runtimes (`runtime.Runtime`: processes.py, containerbridge.py, any added later) carry
out the plan's verbs for the components they claim and report lifecycle events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import platform as platform_
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import hedgerow
from hedgerow import files
from hedgerow.agent import (
    artifacts,
    cliipc,
    cloudipc,
    cloudproxy,
    configipc,
    containerbridge,
    desired,
    ipcserver,
    processes,
    pubsub,
    records,
    runtime,
    streamtokens,
    updateipc,
)
from hedgerow.agent import settings as settings_
from hedgerow.agent.layout import Layout
from hedgerow.core import (
    backoff,
    devicereport,
    documents,
    lifecycle,
    limits,
    outcome,
    recipe,
)
from hedgerow.core import deployment as deployment_
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.lifecycle import Event

if TYPE_CHECKING:  # the Docker SDK costs ~15 MB: imported only once a container is wanted
    from hedgerow.agent import containers as containers_

log = logging.getLogger("hedgerow.agent")
AGENT_VERSION = hedgerow.__version__
_DONE = frozenset({State.RUNNING, State.FINISHED})
# In a deployment's reason: a component's validation refused it (never applied, even
# with DO_NOTHING and after a restart).
_REJECTED = " rejected its new configuration: "
# Builds a runtime for the agent (`Agent(..., runtimes=[...])`): it gets the services
# the agent offers runtimes, nothing of the loop itself.
RuntimeFactory = Callable[[runtime.Services], runtime.Runtime]


class AnchoredClock:
    """Seconds on the wall-clock scale that never jump: wall time read once, at start,
    plus the monotonic time since. Every deadline and age the agent decides on (backoff,
    settle, timeouts, retries of dockerd) is on this clock, so a wall clock stepped back
    a day delays nothing and one stepped forward skips nothing; values persisted in one
    run are re-anchored at the next start (`lifecycle.resolve_reanchored`)."""

    def __init__(self, wall: float | None = None, monotonic: float | None = None) -> None:
        self._wall = time.time() if wall is None else wall
        self._monotonic = time.monotonic() if monotonic is None else monotonic

    def __call__(self) -> float:
        return self._wall + (time.monotonic() - self._monotonic)


def observe_platform() -> documents.PlatformInfo:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(
        platform_.machine(), platform_.machine().lower())
    return documents.PlatformInfo(os="linux", arch=arch[:limits.MAX_REPORT_TEXT])


class Agent:
    def __init__(self, root: os.PathLike[str] | str, thing: str,
                 settings: settings_.Settings | None = None,
                 docker_client: containers_.ClientFactory | None = None,
                 runtimes: Sequence[RuntimeFactory] = ()) -> None:
        self.layout = Layout(pathlib.Path(root).resolve())
        self.thing = thing
        self.settings = settings = settings or settings_.Settings()
        self.clock: Callable[[], float] = AnchoredClock()
        self.platform = observe_platform()
        self.store = artifacts.Store(self.layout)
        self.records: dict[str, records.Record] = {}
        self.reader = desired.Reader()  # parses and hashes the inputs once per change
        self.wake = asyncio.Event()
        services = runtime.Services(wake=self.wake.set, checkpoint=self.checkpoint,
                                    clock=lambda: self.clock(),
                                    context_of=lambda c: self.context(c, self.applied),
                                    step_context_of=lambda c: self.context(
                                        c, self.applied, own=True))
        self.processes = processes.Processes(self.layout, thing, settings, self.store,
                                             services)
        # Containers: Docker is loaded on first use (see containerbridge).
        self.containers = containerbridge.ContainerBridge(
            self.layout, thing, settings, self.store, services, docker_client)
        # Asked in this order which runtime runs a component; processes take the rest.
        self.runtimes: list[runtime.Runtime] = [
            *(make(services) for make in runtimes), self.containers, self.processes]
        self._runtime_of: dict[str, runtime.Runtime] = {}  # by spec hash
        self._known: set[str] = set()  # kinds whose runtime could look this pass
        self._settled = False  # a new last good state since the runtimes cleaned up
        self.applied: documents.DesiredState | None = None
        self.problems: tuple[str, ...] = ()
        self.history = outcome.History()
        self.passes = 0  # begun
        self._desired_cache: tuple[documents.DesiredState | None, plan_.Desired] | None = None
        # Passes that wrote their status (the control socket's `status` shows it). Not
        # the report's `sequence`: that is the connector's, stamped as it sends.
        self.passes_reported = 0
        self._stopping = False
        self.lock = asyncio.Lock()
        self.pending_local: str | None = None
        self._judge_at = 0.0
        self._dirty = False
        self._history_written = b""
        self._last_good: documents.DesiredState | None = None  # see `last_good`
        self._last_good_read = False
        self._due: dict[pathlib.Path, bytes] = {}  # state files `persist` writes
        self._troubles: dict[str, str] = {}  # long-lived task -> its last error (logged once)
        # Component IPC (Greengrass event-stream RPC): it sees the records through one
        # lookup (token -> component), nothing else of the loop.
        self.bus = pubsub.Bus()
        self.ipc = ipcserver.Server(self.layout.ipc_socket,
                                    ipcserver.records_lookup(lambda: self.records, thing),
                                    pubsub.operations(self.bus))
        # Components' cloud messages: the connector (cli.py) carries them on its session.
        self.cloud = cloudproxy.CloudProxy(
            self.layout.cloud_spool, policy=settings.cloud_spool_policy,
            max_messages=min(settings.cloud_spool_max_messages,
                             limits.CLOUD_SPOOL_MAX_MESSAGES),
            max_bytes=min(settings.cloud_spool_max_bytes, limits.CLOUD_SPOOL_MAX_BYTES))
        for operation in cloudipc.operations(self.cloud):
            self.ipc.register(operation)
        # Configuration and state over IPC: what each component changed of its own
        # configuration lives in state/configuration.json (configipc).
        self.config = configipc.Store(self.layout.state / "configuration.json",
                                      self._deployed_configuration, self.report_errored,
                                      lambda: self.clock(), self.wake.set)
        self.updates = updateipc.Updates(lambda: self.clock(), self.wake.set)
        for operation in [*self.config.operations(), *cliipc.Service(self).operations(),
                          *self.updates.operations()]:
            self.ipc.register(operation)
        self._validated: set[str] = set()  # revisions components' validation accepted
        # A revision waiting for components to allow its update: (revision, why), and
        # when to look again.
        self._deferral: tuple[str, str] | None = None
        self._update_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._rejected: set[str] = set()  # revisions a component's validation refused
        self._root_ca_stamp: tuple[int, int, int] | None = None
        # For metrics (edge-agent/metrics.py, opt-in): plain values, no import when off.
        self.pass_observer: Callable[[float], None] | None = None  # seconds per pass
        self.restarts: dict[str, int] = {}  # component -> starts after its first
        self._started: set[str] = set()

    # --- records and transitions -------------------------------------------------

    def save(self) -> None:
        """Mark the records changed; `flush` makes them durable in one batched write."""
        self._dirty = True

    def persist(self) -> None:
        """End of pass: records, the applied and last good documents and the outcomes,
        in one batch (one folder fsync). After the status on purpose: the status is a
        report, rewritten every pass; what had to be durable before a process was
        spawned was written then (`flush`), and a crash in between only means the
        restart converges from one pass earlier."""
        self._finish()
        due = dict(self._due)
        if self._dirty:
            due[self.layout.records] = records.render_all(self.records)
        history = self._render_history()
        if history != self._history_written:
            due[self.layout.history_file] = history
        if due:
            files.write_atomic_all(due)  # raises (disk full …): all stays due for next pass
        self.untroubled("records")
        self._due.clear()
        self._dirty = False
        self._history_written = history

    def flush(self) -> None:
        """Write every record at once (temp, fsync, rename, fsync dir). Called before the
        agent relies on them: before spawning (the record that owns a process must exist),
        before awaiting a step, after a process exit, at the end of every pass."""
        self._finish()  # e.g. a recorded process has its start time
        if self._dirty:
            records.save_all(self.layout.records, self.records)
            self._dirty = False

    def transition(self, rec: records.Record, event: Event, message: str = "") -> None:
        before = rec.state
        now = self.clock()
        status = lifecycle.resolve_transition(rec.status, event, now, self.settings.policy)
        rec.state, rec.errors, rec.retry_at = status.state, list(status.errors), status.retry_at
        if message:
            rec.message = message
        if rec.state is State.BROKEN:
            rec.hold_revision = self.applied.revision if self.applied else None
        if event in (Event.RESET, Event.START):
            rec.hold_revision = None
        if rec.state is not before:
            rec.since = now
            if rec.state is State.STARTING:
                if rec.name in self._started:
                    self.restarts[rec.name] = self.restarts.get(rec.name, 0) + 1
                self._started.add(rec.name)
        self.save()
        if rec.state is not before:  # log changes, not repeats
            log.info("%s: %s -> %s%s", rec.name, before, rec.state,
                     f" ({message})" if message else "")

    # --- startup: adopt what still runs ---------------------------------------------

    def adopt(self) -> None:
        """After a crash: keep run processes whose identity matches, end stale steps."""
        self.records = records.load_all(self.layout.records)
        self.config.load()
        now = self.clock()
        for rec in self.records.values():
            # Deadlines and error times written by an earlier run, maybe under a wall
            # clock that has been stepped since: none in the future beyond what the
            # policy could have set.
            status = lifecycle.resolve_reanchored(rec.status, now, self.settings.policy)
            rec.errors, rec.retry_at = list(status.errors), status.retry_at
            rec.since = min(rec.since, now)
            self.apply_changes(rec, self.runtime_of(rec).adopt(rec))
            self.save()
        self.save_records("adopting")
        self.publish_service_tokens()
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.history = outcome.History.model_validate_json(
                self.layout.history_file.read_bytes())
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.applied = documents.DesiredState.model_validate_json(
                self.layout.applied_file.read_bytes())

    # --- runtimes ----------------------------------------------------------------------

    def runtime_for(self, comp: documents.ResolvedComponent) -> runtime.Runtime:
        for candidate in self.runtimes[:-1]:
            if candidate.claims(comp):
                return candidate
        return self.runtimes[-1]

    def runtime_of(self, rec: records.Record) -> runtime.Runtime:
        found = self._runtime_of.get(rec.spec_hash)
        if found is None:
            if len(self._runtime_of) > 1024:
                self._runtime_of.clear()
            found = self._runtime_of[rec.spec_hash] = self.runtime_for(rec.component())
        return found

    def _mine(self, rt: runtime.Runtime) -> list[records.Record]:
        return [r for r in self.records.values() if self.runtime_of(r) is rt]

    def _wants(self, rt: runtime.Runtime) -> bool:
        """`rt` has components, recorded or in the applied document."""
        return bool(self._mine(rt)) or (self.applied is not None and any(
            self.runtime_for(c) is rt for c in self.applied.components))

    def apply_changes(self, rec: records.Record, changes: list[runtime.Change]) -> None:
        for change in changes:
            self.apply_change(rec, change)

    def apply_change(self, rec: records.Record, change: runtime.Change) -> None:
        """What a runtime reported, applied: the only way a component changes state."""
        if change.event is None:
            rec.message = change.message
            self.save()
        else:
            self.transition(rec, change.event, change.message)

    async def _carry_out(self, rec: records.Record, changes: AsyncIterator[runtime.Change],
                         ) -> list[Event]:
        """Apply each event a verb yields as it comes; the events, in order."""
        seen = []
        async for change in changes:
            self.apply_change(rec, change)
            if change.event is not None:
                seen.append(change.event)
        return seen

    def _finish(self) -> None:
        for rt in self.runtimes:
            rt.finish()

    def checkpoint(self) -> None:
        """A runtime's facts in a record must survive a crash now (a long step's pid)."""
        self._dirty = True
        self.flush()

    def save_records(self, why: str) -> None:
        """`flush` where a failure to write must not stop what comes next: the records
        stay due and the next pass writes them (disk full, EIO, no fds)."""
        try:
            self.flush()
        except OSError as exc:
            self.trouble("records", f"cannot write the records ({why}): {exc}")

    def trouble(self, what: str, message: str) -> None:
        """A long-lived part of the agent hit an error it retries: logged on change."""
        if self._troubles.get(what) != message:
            log.error("%s (retrying)", message)
        self._troubles[what] = message

    def untroubled(self, what: str) -> None:
        if self._troubles.pop(what, None) is not None:
            log.info("%s: working again", what)

    # --- the pass --------------------------------------------------------------------

    async def reconcile(self) -> list[plan_.Action]:
        self.passes += 1
        began = time.perf_counter()
        reading = self.reader.fetch(self.layout, self.thing, self.platform,     # 1. read
                                    self.settings.max_privilege)
        if reading.problems != self.problems and reading.problems:
            for problem in reading.problems:
                log.error("rejected: %s", problem)
        self.problems = reading.problems
        doc = self.choose(reading)                                               # 2. pick
        doc = self.validate(doc, reading)  # components may veto their new config
        doc = self.hold_for_update(doc, reading)  # ... or defer their update a while
        observed = await self.observe(doc)                                       # 3. observe
        wanted = self._wanted(doc)
        actions = plan_.plan(wanted, observed)                                  # 4. plan
        if doc is not None and doc != self.applied:
            self.supersede(doc)
            self.applied = doc
            self._due[self.layout.applied_file] = documents.render_bytes(doc)
        try:
            await self.apply(actions, doc)                                       # 5. apply
            await self.clean_up(actions, doc)
        except BaseException:
            self.persist()
            raise
        if doc is not None:
            self.updates.finished(doc.revision)  # postUpdateEvent, if it was announced
        self.config.sync(list(self.records))  # components' own config; tell subscribers
        self.judge(doc, reading)                                                 # 6. judge
        self.write_status(reading)                                               # 7. status
        self.passes_reported += 1
        reported = time.perf_counter()
        self.persist()  # 8. start times, the batch's log writer, records, outcomes
        if self.pass_observer is not None:
            self.pass_observer(time.perf_counter() - began)
        if actions:
            log.debug("pass %d: %d action(s), status after %.1f ms, done after %.1f ms",
                      self.passes, len(actions), (reported - began) * 1000,
                      (time.perf_counter() - began) * 1000)
        return actions

    def _resolve_wanted(self, doc: documents.DesiredState | None) -> plan_.Desired:
        """`plan_.resolve_desired` (every component's spec hash) once per document, not
        once per pass: a pass with nothing new plans from the same hashes."""
        if self._desired_cache is None or self._desired_cache[0] is not doc:
            restart = {c.name: self.restart_hash(c, doc) for c in doc.components} if doc \
                else {}
            self._desired_cache = (doc, plan_.resolve_desired(doc, restart))
        return self._desired_cache[1]

    def validate(self, doc: documents.DesiredState | None, reading: desired.Reading,
                 ) -> documents.DesiredState | None:
        """A new revision that changes a running component's configuration is first put
        to that component when it subscribes (SubscribeToValidateConfigurationUpdates),
        for up to the deployments' configurationValidation.timeoutSeconds. Until all
        answered, the pass goes on with the document already applied (the loop wakes at
        a report or the deadline; the status says who is asked). A rejection fails the
        revision with the component's message (then ROLLBACK or DO_NOTHING applies); the
        component keeps its configuration."""
        self._deferral = None
        if doc is None or doc is not reading.desired or doc == self.applied:
            return doc
        entry = self.history.outcome_of(doc.revision)
        if doc.revision in self._validated:
            return doc
        if doc.revision in self._rejected or (  # refused before the agent restarted
                entry is not None and entry.outcome is documents.Outcome.FAILED
                and _REJECTED in entry.reason):
            return self.applied
        if entry is None or entry.outcome is not documents.Outcome.IN_PROGRESS:
            return doc
        changes = {}
        for comp in doc.components:
            rec = self.records.get(comp.name)
            if rec is not None and rec.state in (State.STARTING, State.RUNNING,
                                                 State.FINISHED) and (
                    rec.spec.get("configuration") or {}) != comp.configuration:
                changes[comp.name] = comp.configuration
        if not changes:
            return doc
        timeout = max((d.policies.configuration_validation.timeout_seconds
                       for d in doc.deployments), default=30)
        verdict = self.config.resolve_validation(changes, doc.revision, timeout)
        if verdict.rejected is not None:
            self._rejected.add(doc.revision)
            self.fail(doc, f"{verdict.rejected[0]}{_REJECTED}{verdict.rejected[1]}")
            return self.applied
        if not verdict.go:
            self._deferral, self._update_at = (doc.revision, verdict.reason), verdict.until
            return self.applied
        self._validated.add(doc.revision)
        return doc

    def hold_for_update(self, doc: documents.DesiredState | None, reading: desired.Reading,
                        ) -> documents.DesiredState | None:
        """A new revision that would stop, replace or remove a running component waits
        for the components that subscribe to updates (SubscribeToComponentUpdates) to
        allow it or for their deferrals to run out, up to the deployments'
        componentUpdate.timeoutSeconds (updateipc). Meanwhile the applied document keeps
        running and the status says who defers."""
        if doc is None or doc is not reading.desired or self.applied is None \
                or not self.updates.subscribers or doc == self.applied:
            return doc
        entry = self.history.outcome_of(doc.revision)
        if entry is None or entry.outcome is not documents.Outcome.IN_PROGRESS:
            return doc
        notify = [d.policies.component_update for d in doc.deployments
                  if d.policies.component_update.action
                  is not deployment_.UpdateAction.SKIP_NOTIFY_COMPONENTS]
        if (doc.deployments and not notify) or not self._disrupts(doc):
            return doc
        verdict = self.updates.resolve(doc.revision, max(
            (p.timeout_seconds for p in notify), default=60))
        if verdict.go:
            return doc
        self._deferral, self._update_at = (doc.revision, verdict.reason), verdict.until
        return self.applied

    def _disrupts(self, doc: documents.DesiredState) -> bool:
        """`doc` would stop, replace or remove a component that runs now."""
        for name, rec in self.records.items():
            if rec.state not in (State.STARTING, State.RUNNING, State.FINISHED):
                continue
            comp = doc.component(name)
            if comp is None:
                return True
            want = plan_.Want(name, comp.spec_hash,
                              restart_hash=self.restart_hash(comp, doc))
            seen = plan_.Observed(name, rec.spec_hash, rec.state,
                                  restart_hash=rec.restart_hash)
            if plan_.is_restart_needed(want, seen):
                return True
        return False

    def choose(self, reading: desired.Reading) -> documents.DesiredState | None:
        if reading.desired is None:
            return self.applied  # bad input: keep the last good state, remove nothing
        target = self.history.outcome_of(reading.desired.revision)
        if target is not None and target.rolled_back_to:
            good = self.last_good()
            if good is not None:
                return good
        # Wanted: a new revision (or a superseded one wanted again) is IN_PROGRESS now.
        self.history = outcome.resolve_started(self.history, reading.desired.revision,
                                               self.clock(), reading.source,
                                               reading.cloud_revision)
        return reading.desired

    async def observe(self, doc: documents.DesiredState | None,
                      ) -> dict[str, plan_.Observed]:
        """Every runtime looks once, then says what happened to each of its records. A
        runtime that cannot look now (dockerd away) has its components left out: they
        are neither planned nor removed until it answers."""
        self._known = set()
        for rt in self.runtimes:
            if await rt.observe(self._mine(rt), doc):
                self._known.add(rt.kind)
        now = self.clock()
        out = {}
        for rec in list(self.records.values()):
            rt = self.runtime_of(rec)
            if rt.kind not in self._known:
                continue
            spec_hash, changes = rt.observe_one(rec, now)
            self.apply_changes(rec, changes)
            deps = tuple(d.name for d in rec.component().dependencies)
            out[rec.name] = plan_.Observed(
                rec.name, spec_hash, rec.state, deps,
                retry_due=rec.retry_at is not None and rec.retry_at <= now,
                hold_revision=rec.hold_revision, runtime=rt.kind,
                # What runs is not what the record made (a replaced container): unknown.
                restart_hash=rec.restart_hash if spec_hash == rec.spec_hash else "")
        return out

    def _wanted(self, doc: documents.DesiredState | None) -> plan_.Desired:
        """The plan's view of `doc`: each component with the runtime that claims it;
        those of a runtime that cannot look now are left alone."""
        wanted = self._resolve_wanted(doc)
        kinds = {c.name: self.runtime_for(c).kind for c in doc.components} if doc else {}
        if all(kinds[w.name] == w.runtime and w.runtime in self._known
               for w in wanted.wants):
            return wanted  # the usual case: the plan's own split, every runtime looked
        return dataclasses.replace(wanted, wants=tuple(
            dataclasses.replace(w, runtime=kinds[w.name])
            for w in wanted.wants if kinds[w.name] in self._known))

    async def clean_up(self, actions: list[plan_.Action],
                       doc: documents.DesiredState | None) -> None:
        settled, self._settled = self._settled, False
        for rt in self.runtimes:
            await rt.clean_up(self._mine(rt), actions, doc, settled=settled,
                              last_good=self.last_good)

    def stopped(self, rec: records.Record, remove: bool, hold: bool) -> None:
        """What every runtime does once a component is stopped: hold or forget it."""
        if hold:
            rec.hold_revision = self.applied.revision if self.applied else None
            self.save()
        if remove:
            self.runtime_of(rec).forget(rec.name)
            self.records.pop(rec.name, None)
            self.save()
            self.flush()
            self.publish_service_tokens()
            log.info("%s: removed", rec.name)

    # --- apply -----------------------------------------------------------------------

    async def apply(self, actions: list[plan_.Action],
                    doc: documents.DesiredState | None) -> None:
        assert doc is not None or not any(a.verb is not plan_.Verb.REMOVE for a in actions)
        by_name = {c.name: c for c in doc.components} if doc else {}
        to_prepare = [by_name.get(a.name) for a in actions
                      if a.verb is plan_.Verb.PREPARE]
        comps = [c for c in to_prepare if c is not None]
        if comps:  # downloads go to a worker thread (one trip); a few mkdirs do not
            failure = (await asyncio.to_thread(self._prepare, comps)
                       if any(c.artifacts or c.container for c in comps)
                       else self._prepare(comps))
            if failure:
                log.error("%s", failure)
                self.fail(doc, failure)  # nothing stops, nothing starts
                return
        for action in actions:
            if action.verb is plan_.Verb.UPDATE and action.name in by_name:
                self.update(by_name[action.name], doc)
        await self._stop_all([a for a in actions
                              if a.verb in (plan_.Verb.STOP, plan_.Verb.REMOVE)], by_name)
        # Install/start/recover: every record that may own a process exists durably before
        # anything is spawned (one write), then independent components go in parallel and
        # each waits only for its own dependencies in this plan.
        ups = [a for a in actions if a.verb in (plan_.Verb.INSTALL, plan_.Verb.START,
                                                  plan_.Verb.RECOVER)
               and not self.runtime_for_name(a.name, by_name).is_deferred(a.name)]
        for action in ups:
            comp = by_name.get(action.name)
            if action.verb is plan_.Verb.INSTALL and comp is not None:
                self.ensure_record(comp)
        self.flush()
        verbs_of: dict[str, list[plan_.Verb]] = {}
        for action in ups:  # the plan lists dependencies first: chains see theirs
            verbs_of.setdefault(action.name, []).append(action.verb)
        chains: dict[str, asyncio.Task[None]] = {}
        for name, verbs in verbs_of.items():
            comp = by_name.get(name)
            if comp is None:
                continue
            deps = [chains[d.name] for d in comp.dependencies if d.name in chains]
            chains[name] = asyncio.create_task(self._bring_up(comp, verbs, deps))
        if chains:
            await asyncio.gather(*chains.values())
        if doc is not None and any(a.verb is plan_.Verb.REMOVE for a in actions):
            good = self.last_good()
            keep = [*doc.components, *(good.components if good else [])]
            await asyncio.to_thread(self.store.collect_garbage, keep)

    async def _stop_all(self, stops: list[plan_.Action],
                        desired: dict[str, documents.ResolvedComponent]) -> None:
        """Stop together, each once the dependents it has among them are stopped — by
        what runs or by what is desired (the plan's order, dependents first, already
        honours both; a stop waits only for stops listed before it, so never in a
        circle): 50 removals take about as long as the slowest one, not their sum. A
        component whose dependent failed to stop is not stopped under it; the first
        failure is raised once every stop is over."""
        def needs(name: str) -> set[str]:
            rec, want = self.records.get(name), desired.get(name)
            return ({d.name for d in rec.component().dependencies} if rec else set()) | (
                {d.name for d in want.dependencies} if want else set())

        async def stop_after(action: plan_.Action, first: list[asyncio.Task[None]]) -> None:
            for result in await asyncio.gather(*first, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise RuntimeError(f"{action.name}: not stopped, a component that "
                                       f"depends on it failed to stop") from result
            await self.stop(action.name, remove=action.verb is plan_.Verb.REMOVE,
                            replacing=action.reason == "spec changed")

        needed = {action.name: needs(action.name) for action in stops}
        tasks: dict[str, asyncio.Task[None]] = {}
        for action in stops:
            first = [task for name, task in tasks.items() if action.name in needed[name]]
            tasks[action.name] = asyncio.create_task(stop_after(action, first))
        for result in await asyncio.gather(*tasks.values(), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    def runtime_for_name(self, name: str, desired: dict[str, documents.ResolvedComponent],
                         ) -> runtime.Runtime:
        comp = desired.get(name)
        if comp is not None:
            return self.runtime_for(comp)
        rec = self.records.get(name)
        return self.runtime_of(rec) if rec is not None else self.processes

    def _prepare(self, comps: list[documents.ResolvedComponent]) -> str | None:
        """Every component's PREPARE (artifacts, images); the first failure, if any."""
        for comp in comps:
            failure = self.runtime_for(comp).prepare(comp)
            if failure:
                return failure
        return None

    async def _bring_up(self, comp: documents.ResolvedComponent, verbs: list[plan_.Verb],
                        deps: list[asyncio.Task[None]]) -> None:
        if deps:
            await asyncio.gather(*deps, return_exceptions=True)
            self._finish()
        for verb in verbs:
            if verb is plan_.Verb.INSTALL:
                await self.install(comp)
            elif verb is plan_.Verb.START:
                await self.start(comp)
            elif verb is plan_.Verb.RECOVER:
                await self.recover(comp)

    def context(self, comp: documents.ResolvedComponent,
                 doc: documents.DesiredState | None, *, own: bool = False) -> recipe.Context:
        """The recipe variables of `comp`. `own`: with each component's own configuration
        changes (UpdateConfiguration) on top, as Greengrass renders a (re)start's steps.
        Without: the deployment's alone -- for restart hashes (an own change never
        restarts anything) and containers (an adopted container must stay the same)."""
        def paths(c: documents.ResolvedComponent) -> recipe.Paths:
            config = self.config.rendered(c.name, c.configuration) if own \
                else c.configuration
            return recipe.Paths(str(self.store.view_of(c)), str(self.store.unpacked_of(c)),
                                str(self.layout.work_of(c.name)), config)
        deps = {}
        for dep in comp.dependencies:
            found = doc.component(dep.name) if doc else None
            if found is not None:
                deps[dep.name] = paths(found)
        return recipe.Context(comp.name, paths(comp), str(self.layout.root), self.thing, deps)

    def restart_hash(self, comp: documents.ResolvedComponent,
                     doc: documents.DesiredState | None) -> str:
        return recipe.render_restart_hash(comp, self.context(comp, doc))

    def _deployed_configuration(self, name: str) -> dict[str, Any] | None:
        rec = self.records.get(name)
        return None if rec is None else dict(rec.spec.get("configuration") or {})

    def report_errored(self, name: str, message: str) -> None:
        """UpdateState ERRORED (once the call is answered): the component is stopped and
        counts as failed, so the state table's ERRORED -> recover -> BROKEN applies as to
        a crash."""
        task = asyncio.get_running_loop().create_task(self._errored(name, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _errored(self, name: str, message: str) -> None:
        async with self.lock:
            rec = self.records.get(name)
            if rec is None or rec.state not in (State.RUNNING, State.STARTING):
                return
            async for change in self.runtime_of(rec).stop(rec, remove=False,
                                                          replacing=False):
                if change.event is Event.STOPPED:  # STOPPING -> ERRORED, not INSTALLED
                    change = runtime.Change(Event.FAILED, message)
                self.apply_change(rec, change)
            self.save_records("a component reported ERRORED")
        self.wake.set()

    def ensure_record(self, comp: documents.ResolvedComponent) -> records.Record:
        rec = self.records.get(comp.name)
        spec_hash = comp.spec_hash  # a hash of the whole spec: computed once
        restart_hash = self.restart_hash(comp, self.applied)
        if rec is None or rec.spec_hash != spec_hash or (
                restart_hash and rec.restart_hash and restart_hash != rec.restart_hash):
            rec = records.Record(name=comp.name, version=comp.version,
                                 spec_hash=spec_hash, spec=comp.to_dict(),
                                 restart_hash=restart_hash,
                                 token=secrets.token_urlsafe(24),
                                 instance=secrets.token_hex(8))
            self.records[comp.name] = rec
            self.save()
            self.publish_service_tokens()
        return rec

    def update(self, comp: documents.ResolvedComponent,
               doc: documents.DesiredState | None) -> None:
        """A configuration change its rendered lifecycle does not use: the record takes
        the new spec, and what runs keeps running (plan.Verb.UPDATE)."""
        rec = self.records[comp.name]
        rec.spec, rec.spec_hash = comp.to_dict(), comp.spec_hash
        rec.restart_hash = self.restart_hash(comp, doc)
        self.save()
        log.info("%s: configuration changed; keeps running (its rendered lifecycle and "
                 "runWith are the same)", comp.name)

    def publish_service_tokens(self) -> None:
        """Tell the stream manager which tokens its dependents hold (as digests)."""
        try:
            streamtokens.apply_tokens(self.layout.root, self.records)
        except OSError as exc:
            self.trouble("stream-manager tokens", str(exc))
        else:
            self.untroubled("stream-manager tokens")

    def _job(self, comp: documents.ResolvedComponent, rec: records.Record) -> runtime.Job:
        return runtime.Job(comp, rec, self.context(comp, self.applied, own=True))

    async def install(self, comp: documents.ResolvedComponent) -> None:
        rec = self.ensure_record(comp)
        rec.installed_in = self.applied.revision if self.applied else ""
        rec.install_failed = False
        self.save()
        events = await self._carry_out(rec, self.runtime_for(comp).install(
            self._job(comp, rec)))
        if events and events[-1] in (Event.FAILED, Event.TIMED_OUT):
            rec.install_failed = True
            self.save()

    def deps_ready(self, comp: documents.ResolvedComponent) -> bool:
        for dep in comp.dependencies:
            other = self.records.get(dep.name)
            if other is None or other.state not in _DONE:
                return False
        return True

    async def start(self, comp: documents.ResolvedComponent) -> None:
        rec = self.records.get(comp.name)
        if rec is None or rec.state not in (State.INSTALLED, State.FINISHED):
            return
        if not self.deps_ready(comp):
            return  # a later pass starts it once its dependencies run (level-triggered)
        await self._carry_out(rec, self.runtime_for(comp).start(self._job(comp, rec)))

    async def stop(self, name: str, remove: bool = False, hold: bool = False,
                   replacing: bool = False) -> None:
        rec = self.records.get(name)
        if rec is None:
            return
        events = await self._carry_out(rec, self.runtime_of(rec).stop(
            rec, remove=remove, replacing=replacing))
        if Event.STOP_REQUESTED in events:  # else nothing could be done now: next pass
            self.stopped(rec, remove, hold)

    async def recover(self, comp: documents.ResolvedComponent) -> None:
        rec = self.records[comp.name]
        events = await self._carry_out(rec, self.runtime_for(comp).recover(
            self._job(comp, rec)))
        if events and events[-1] is Event.RECOVER:
            await self.install(comp)
            await self.start(comp)

    # --- outcome (the rules: hedgerow.core.outcome) --------------------------------

    def _observed(self, doc: documents.DesiredState,
                  exact: bool = False) -> list[outcome.Observed | None]:
        """`doc`'s components as recorded (None: no record; with `exact`, also a record
        of another spec — what runs under that name is not `doc`'s)."""
        out: list[outcome.Observed | None] = []
        for comp in doc.components:
            rec = self.records.get(comp.name)
            if rec is not None and exact and rec.spec_hash != comp.spec_hash:
                rec = None
            out.append(None if rec is None else outcome.Observed(
                rec.name, rec.state, rec.since, rec.install_failed, rec.message))
        return out

    def last_good(self) -> documents.DesiredState | None:
        """The document to roll back to. The one place that reads state/last-good.json:
        once, then kept in memory (`_settle_as_good` replaces it as it writes it)."""
        if not self._last_good_read:
            self._last_good_read = True
            with contextlib.suppress(FileNotFoundError, ValueError):
                self._last_good = documents.DesiredState.model_validate_json(
                    self.layout.last_good_file.read_bytes())
        return self._last_good

    def _settle_as_good(self, doc: documents.DesiredState) -> None:
        """`doc` is what to roll back to from now on (written at the end of the pass)."""
        self._last_good, self._last_good_read = doc, True
        self._due[self.layout.last_good_file] = documents.render_bytes(doc)
        self._settled = True  # what only the previous good state used may go now

    def supersede(self, doc: documents.DesiredState) -> None:
        """`doc` replaces the applied document: judge the one it replaces, as it ran."""
        previous = self.applied
        if previous is None:
            return
        result = outcome.resolve_superseded(self.history, previous.revision, doc.revision,
                                            self._observed(previous, exact=True),
                                            self.clock())
        if result.history is self.history:
            return
        self.history = result.history
        log.warning("deployment %s: %s", previous.revision,
                    result.history.outcomes[previous.revision].reason)
        if result.is_last_good:
            self._settle_as_good(previous)
        self.save_history()

    def fail(self, doc: documents.DesiredState | None, reason: str) -> None:
        if doc is None:
            return
        entry = self.history.outcome_of(doc.revision)
        if entry is None or entry.outcome is not documents.Outcome.IN_PROGRESS:
            return
        log.error("deployment %s failed: %s", doc.revision, reason)
        good = self.last_good()  # maybe settled in this very pass
        target = outcome.resolve_rollback_target(doc.failure_handling, doc.revision,
                                                 good.revision if good else None)
        self.history = outcome.resolve_failure(self.history, doc.revision, reason,
                                               self.clock(), target)
        if target is not None:
            log.warning("rolling back to %s", target)
            self.wake.set()
        self.save_history()

    def judge(self, doc: documents.DesiredState | None, reading: desired.Reading) -> None:
        wanted = reading.desired
        if wanted is None or doc is None or doc.revision != wanted.revision:
            return  # bad input or rolled back: the outcome was recorded when it happened
        now = self.clock()
        if self.pending_local is not None:
            self.history = outcome.resolve_local_applied(self.history, self.pending_local,
                                                         doc.revision)
            self.pending_local = None
        entry = self.history.outcome_of(doc.revision)
        if entry is None or entry.outcome is not documents.Outcome.IN_PROGRESS:
            self.save_history()
            return
        verdict = outcome.resolve_judgement(entry, self._observed(doc), now,
                                            self.settings.settle_s,
                                            self.settings.deployment_timeout_s)
        if verdict.verdict is outcome.Verdict.FAILED:
            self.fail(doc, verdict.reason)
        elif verdict.verdict is outcome.Verdict.SETTLING:
            self._judge_at = verdict.judge_at or now
        elif verdict.verdict is outcome.Verdict.SUCCEEDED:
            self.history = outcome.resolve_succeeded(self.history, doc.revision, now)
            self._settle_as_good(doc)
            self.save_history()
            log.info("deployment %s succeeded", doc.revision)
        else:
            self.save_history()

    # --- status ----------------------------------------------------------------------

    def report(self, reading: desired.Reading | None = None) -> documents.StatusReport:
        return self.render_report(reading)[0]

    def render_report(self, reading: desired.Reading | None = None,
                      ) -> tuple[documents.StatusReport, bytes]:
        """The status and its bytes (what status.json gets): the facts observed here,
        the report decided by hedgerow.core.devicereport."""
        wanted = reading.desired if reading else None
        revision = wanted.revision if wanted else (
            reading.revision if reading is not None and reading.revision else
            self.applied.revision if self.applied else None)
        # A runtime that cannot be used now: its reason on its components.
        down = {rt.kind: why for rt in self.runtimes if (why := rt.unavailable())}
        return devicereport.render_report(devicereport.Facts(
            thing=self.thing, time=datetime.datetime.now(datetime.UTC),
            agent_version=AGENT_VERSION, platform=self.platform, history=self.history,
            components=[devicereport.Seen(
                r.name, r.version, r.state, down.get(self.runtime_of(r).kind, r.message),
                own_configuration=tuple(self.config.own_keys(r.name)))
                for r in self.records.values()],
            desired_revision=revision,
            cloud_revision=reading.cloud_revision if reading is not None else None,
            problems=reading.problems if reading is not None else (),
            applied_revision=self.applied.revision if self.applied else None,
            waiting=self._deferral,
            runtime_down=any(self._wants(rt) for rt in self.runtimes if rt.kind in down)))

    def write_status(self, reading: desired.Reading) -> None:
        # A report, regenerated every pass, not a record the agent relies on: atomic
        # (rename, never torn) but not fsync'd.
        files.write_atomic(self.layout.status_file,
                           self.render_report(reading)[1], durable=False)

    def save_history(self) -> None:
        """Deployment outcomes (state/deployments.json): during a pass, `persist` writes
        them at its end; outside one (a control command), now."""
        if not self.lock.locked():
            data = self._render_history()
            if data != self._history_written:
                files.write_atomic(self.layout.history_file, data)
                self._history_written = data

    def _render_history(self) -> bytes:
        return json.dumps(self.history.to_dict(), indent=1).encode()

    # --- the loop --------------------------------------------------------------------

    def _next_deadline(self) -> float:
        now = self.clock()
        deadline = now + self.settings.resync_s
        if self._judge_at > now:
            deadline = min(deadline, self._judge_at)
        if self._deferral is not None:
            deadline = min(deadline, max(self._update_at, now))
        for rec in self.records.values():
            if rec.state is State.ERRORED and rec.retry_at is not None:
                deadline = min(deadline, rec.retry_at)
        for rt in self.runtimes:
            wake = rt.next_wake(self._mine(rt), now)
            if wake is not None:
                deadline = min(deadline, wake)
        return max(0.0, deadline - now)

    async def _watch_files(self) -> None:
        """Wake on changes under desired/ and deployments/. step=1: yield a change after
        1 ms without another (5 ms cost 4 ms of every deployment's latency); a burst
        split in two only means one more pass of a level-triggered loop."""
        import watchfiles

        async for _changes in watchfiles.awatch(self.layout.desired, self.layout.deployments,
                                                debounce=50, step=1, recursive=True):
            self.untroubled("watching files")
            self.wake.set()

    async def supervise(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run the long-lived coroutine `run()` for as long as the agent runs: whatever
        ends it (EMFILE from inotify, EIO, a bug) is logged and it is started again with
        capped backoff — a part of the agent that died quietly would leave the device
        deaf (no wake on a new document) while it looks alive. A restart also wakes the
        loop: what happened meanwhile is seen by the next pass."""
        failures = 0
        while True:
            began = time.monotonic()
            try:
                await run()
                message = "ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
            if self._stopping:
                return
            failures = 1 if time.monotonic() - began > 60 else failures + 1
            self.trouble(what, f"{what}: {message}")
            self.wake.set()
            await asyncio.sleep(backoff.resolve_delay(failures, 0.25, 30.0, random.random))

    def publish_root_ca(self) -> None:
        """Copy the fleet CA where components can read it (GG_ROOT_CA_PATH): the
        identity folder is root's alone. A certificate is public; the copy follows a
        replaced trust bundle within a pass (one stat a pass when nothing changed)."""
        try:
            seen = self.layout.identity_ca.stat()
        except FileNotFoundError:
            return  # no identity installed: the variable points at nothing yet
        stamp = (seen.st_mtime_ns, seen.st_size, seen.st_ino)
        if stamp != self._root_ca_stamp:
            try:
                files.write_atomic(self.layout.root_ca,
                                   self.layout.identity_ca.read_bytes(), mode=0o644,
                                   durable=False)
            except OSError as exc:
                self.trouble("root-ca", f"cannot copy the fleet CA for components to "
                                        f"{self.layout.root_ca}: {exc}")
                return
            self.untroubled("root-ca")
            self._root_ca_stamp = stamp

    async def run(self, ready: asyncio.Event | None = None) -> None:
        from hedgerow.agent import control

        self.layout.ensure()
        self.adopt()
        for rt in self.runtimes:
            await asyncio.to_thread(rt.warm_up, self._mine(rt))
        server = await control.serve(self)
        self.publish_root_ca()
        try:  # before the first pass: a component started by it finds the socket
            await self.ipc.start()
        except OSError as exc:  # components cannot use IPC; everything else goes on
            self.trouble("ipc", f"cannot serve component IPC on {self.layout.ipc_socket}: "
                                f"{exc}")
        watcher = asyncio.create_task(self.supervise("watching files", self._watch_files))
        for rt in self.runtimes:
            rt.attach(asyncio.get_running_loop())
        self.wake.set()
        failures = 0
        try:
            if ready is not None:
                ready.set()
            while not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self._next_deadline())
                self.wake.clear()
                try:
                    async with self.lock:
                        await self.reconcile()
                    self.ipc.refresh()  # connections of removed/reinstalled components
                    self.publish_root_ca()
                    failures = 0
                    self.untroubled("pass")
                except Exception as exc:  # a bug must not take the device's workloads down
                    # A full disk or no fds fails every pass the same way: logged once
                    # (with the trace: it may be a bug), retried with capped backoff.
                    failures += 1
                    message = f"reconcile pass failed: {type(exc).__name__}: {exc}"
                    if self._troubles.get("pass") != message:
                        log.exception("%s (retrying)", message)
                    self._troubles["pass"] = message
                    self.wake.set()
                    await asyncio.sleep(backoff.resolve_delay(
                        failures, 0.5, self.settings.resync_s, random.random))
        finally:
            for rt in self.runtimes:
                rt.detach()
            watcher.cancel()
            server.close()
            self.ipc.close()
            with contextlib.suppress(FileNotFoundError):
                self.layout.control_socket.unlink()

    def shutdown(self) -> None:
        """Leave the loop; components keep running (a restart adopts them)."""
        self._stopping = True
        self.wake.set()
