"""The edge agent: ONE level-triggered loop.

Anything — a change under desired/ or deployments/, a component process exit, a control
command, a backoff deadline, the periodic resync — only sets `wake`. Each pass then runs
the same flat checklist (`reconcile`): read desired, pick the document to apply (last
good on bad input, last successful on rollback), observe, plan (pure), apply, judge the
deployment, write status once.
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
import threading
import time
from typing import TYPE_CHECKING, Any

from hedgerow import files
from hedgerow.agent import artifacts, desired, records
from hedgerow.agent import cgroups as cgroups_
from hedgerow.agent import process as process_
from hedgerow.agent.dockererrors import ContainerRuntimeError, PermanentError, TransientError
from hedgerow.agent.layout import Layout
from hedgerow.core import component, documents, lifecycle, recipe
from hedgerow.core import container as container_
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.lifecycle import Event

if TYPE_CHECKING:  # the Docker SDK costs ~15 MB: imported only once a container is wanted
    from hedgerow.agent import containers as containers_

log = logging.getLogger("hedgerow.agent")
AGENT_VERSION = "0.1.0"
_DONE = frozenset({State.RUNNING, State.FINISHED})


@dataclasses.dataclass(frozen=True)
class Settings:
    resync_s: float = 30.0
    deployment_timeout_s: float = 600.0
    # A revision succeeds once every component has been RUNNING/FINISHED this long: a
    # process that crashes right after starting must fail the deployment, not pass it.
    settle_s: float = 2.0
    kill_grace_s: float = 5.0
    default_user: str = "nobody"
    log_max_bytes: int = 1 << 20
    log_keep: int = 3
    policy: lifecycle.Policy = dataclasses.field(default_factory=lifecycle.Policy)
    container_stop_s: int = 10         # SIGTERM → SIGKILL for containers
    docker_backoff_base_s: float = 1.0  # retrying an unreachable dockerd
    docker_backoff_cap_s: float = 30.0
    orphan_scan_s: float = 60.0        # look for our labels even with no container wanted


def _is_container(rec: records.Record) -> bool:
    return "container" in rec.spec


def _why(obs: container_.ObservedContainer) -> str:
    if obs.is_running:
        return "container unhealthy"
    if obs.error:
        return f"container failed to start: {obs.error}"
    if obs.oom_killed:
        return "container killed: out of memory"
    if obs.status == "exited":
        return f"container exited with {obs.exit_code}"
    return f"container {obs.status}"


def observe_platform() -> documents.PlatformInfo:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(
        platform_.machine(), platform_.machine().lower())
    return documents.PlatformInfo(os="linux", arch=arch)


class Agent:
    def __init__(self, root: os.PathLike[str] | str, thing: str,
                 settings: Settings = Settings(),
                 docker_client: containers_.ClientFactory | None = None) -> None:
        self.layout = Layout(pathlib.Path(root).resolve())
        self.thing, self.settings = thing, settings
        self.platform = observe_platform()
        self.cgroups = cgroups_.Cgroups(group=f"hedgerow/{thing}")
        self.runtime = process_.ProcessRuntime(
            self.layout, thing, self.cgroups, settings.default_user,
            settings.log_max_bytes, settings.log_keep, settings.kill_grace_s)
        self.store = artifacts.Store(self.layout)
        # The second runtime, created on first use (see `containers`). `docker_client`
        # (default: docker.from_env, which honours DOCKER_HOST) is how tests point the
        # agent at a daemon that is not there.
        self._docker_client = docker_client
        self._containers: containers_.ContainerRuntime | None = None
        self._container_logs: containers_.LogMirror | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.docker_available: bool | None = None  # unknown until first used
        self.docker_message = ""
        self._docker_failures = 0
        self._docker_retry_at = 0.0
        self._seen: dict[str, container_.ObservedContainer] | None = None
        self._orphans: list[str] = []
        self._orphan_scan_at = 0.0
        self._configs: dict[tuple[str, str], container_.ContainerConfig] = {}
        self._deferred: set[str] = set()
        self._events_stop = threading.Event()
        self._transient: ContainerRuntimeError | None = None
        self._gc_due = False
        self.records: dict[str, records.Record] = {}
        self.wake = asyncio.Event()
        self.applied: documents.DesiredState | None = None
        self.problems: tuple[str, ...] = ()
        self.history: dict[str, Any] = {"outcomes": {}, "local": []}
        self.sequence = 0
        self.passes = 0
        self._stopping = False
        self.lock = asyncio.Lock()
        self.pending_local: str | None = None
        self._judge_at = 0.0
        self._dirty = False
        self._history_written = b""
        self._due: dict[pathlib.Path, bytes] = {}  # state files `persist` writes

    # --- the container runtime, loaded on demand ------------------------------------

    @property
    def containers(self) -> containers_.ContainerRuntime:
        """The Docker runtime. A device that never runs a container never imports the
        Docker SDK (about half the agent's memory); the first container component, or an
        orphan scan on a root where containers once ran, loads it."""
        if self._containers is None:
            from hedgerow.agent import containers

            if self._docker_client is None:
                import docker

                self._docker_client = docker.from_env
            self._containers = containers.ContainerRuntime(
                self._docker_client, thing=self.thing, state_dir=self.layout.state)
            self._container_logs = containers.LogMirror(
                self._containers, self.layout.log_of, self.settings.log_max_bytes,
                self.settings.log_keep)
            if not self.layout.docker_marker.exists():
                files.write_atomic(self.layout.docker_marker, b"")
            if self._loop is not None:
                self._watch_docker_events(self._loop)
        return self._containers

    @property
    def container_logs(self) -> containers_.LogMirror:
        self.containers  # noqa: B018 - creates the log mirror with the runtime
        assert self._container_logs is not None
        return self._container_logs

    def _watch_docker_events(self, loop: asyncio.AbstractEventLoop) -> None:
        threading.Thread(target=self.containers.watch_events, name="docker-events",
                         args=(lambda: loop.call_soon_threadsafe(self.wake.set),
                               self._events_stop), daemon=True).start()

    # --- records and transitions -------------------------------------------------

    def save(self, rec: records.Record) -> None:
        """Mark the records changed; `flush` makes them durable in one batched write."""
        self._dirty = True

    def persist(self) -> None:
        """End of pass: records, the applied and last good documents and the outcomes,
        in one batch (one folder fsync). After the status on purpose: the status is a
        report, rewritten every pass; what had to be durable before a process was
        spawned was written then (`flush`), and a crash in between only means the
        restart converges from one pass earlier."""
        self.runtime.finish_spawns()
        due, self._due = self._due, {}
        if self._dirty:
            self._dirty = False
            due[self.layout.records] = records.render_all(self.records)
        history = json.dumps(self.history, sort_keys=True, indent=1).encode()
        if history != self._history_written:
            due[self.layout.history_file] = history
        if due:
            files.write_atomic_all(due)
            self._history_written = history

    def flush(self) -> None:
        """Write every record at once (temp, fsync, rename, fsync dir). Called before the
        agent relies on them: before spawning (the record that owns a process must exist),
        before awaiting a step, after a process exit, at the end of every pass."""
        self.runtime.finish_spawns()  # a recorded process has its start time
        if self._dirty:
            self._dirty = False
            records.save_all(self.layout.records, self.records)

    def transition(self, rec: records.Record, event: Event, message: str = "") -> None:
        before = rec.state
        status = lifecycle.resolve_transition(rec.status, event, time.time(),
                                              self.settings.policy)
        rec.state, rec.errors, rec.retry_at = status.state, list(status.errors), status.retry_at
        if message:
            rec.message = message
        if rec.state is State.BROKEN:
            rec.hold_revision = self.applied.revision if self.applied else None
        if event is Event.RESET:
            rec.hold_revision = None
        if rec.state is not before:
            rec.since = time.time()
        self.save(rec)
        if rec.state is not before:  # log changes, not repeats
            log.info("%s: %s -> %s%s", rec.name, before, rec.state,
                     f" ({message})" if message else "")

    # --- startup: adopt what still runs ---------------------------------------------

    def adopt(self) -> None:
        """After a crash: keep run processes whose identity matches, end stale steps."""
        self.records = records.load_all(self.layout.records)
        for rec in self.records.values():
            if _is_container(rec):
                continue  # Docker kept it running; the first observation adopts it by label
            ref = rec.process
            alive = ref is not None and process_.is_same_process(ref)
            if ref is not None and alive and ref.step == "run" and rec.state is State.RUNNING:
                self.runtime.watch(rec.name, ref, self._on_exit(rec.name, ref))
                log.info("%s: adopted pid %d", rec.name, ref.pid)
                continue
            # A step cut short by the crash (install, startup, shutdown, recover) is ended
            # and retried from a known state; nothing runs twice, nothing is orphaned.
            for pid in self.runtime.members(rec.name, ref.pid if alive and ref else None,
                                            rec.instance):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            rec.process = None
            if rec.state in (State.STARTING, State.RUNNING):
                self.transition(rec, Event.FAILED, "process ended while the agent was down")
            elif rec.state is State.STOPPING:
                self.transition(rec, Event.STOPPED)
            else:
                self.save(rec)
        self.flush()
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.history = json.loads(self.layout.history_file.read_bytes())
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.applied = documents.DesiredState.model_validate_json(
                self.layout.applied_file.read_bytes())

    def _on_exit(self, name: str, ref: records.ProcessRef) -> Any:
        def handle(code: int | None) -> None:
            rec = self.records.get(name)
            if rec is None or rec.process != ref or rec.state not in (State.RUNNING,
                                                                       State.STARTING):
                return
            rec.process = None
            if code == 0:
                self.transition(rec, Event.EXITED_OK, "exited with 0")
            else:
                what = "exit code unknown (adopted)" if code is None else f"exited with {code}"
                self.transition(rec, Event.FAILED, what)
            self.flush()
            self.wake.set()
        return handle

    # --- the pass --------------------------------------------------------------------

    async def reconcile(self) -> list[plan_.Action]:
        self.passes += 1
        began = time.perf_counter()
        reading = desired.fetch_desired(self.layout, self.thing, self.platform)  # 1. read
        if reading.problems != self.problems and reading.problems:
            for problem in reading.problems:
                log.error("rejected: %s", problem)
        self.problems = reading.problems
        doc = self.choose(reading)                                               # 2. pick
        await self.observe_containers(doc)                                       # 3. observe
        observed = self.observe()
        wanted = plan_.resolve_desired(doc)
        if self._seen is None:  # dockerd unknown: containers are neither touched nor removed
            wanted = dataclasses.replace(wanted, wants=tuple(
                w for w in wanted.wants if w.runtime != "container"))
        actions = plan_.plan(wanted, observed)                                  # 4. plan
        if doc is not None and doc != self.applied:
            self.applied = doc
            self._due[self.layout.applied_file] = documents.render_bytes(doc)
        try:
            await self.apply(actions, doc)                                       # 5. apply
            await self.apply_containers(actions, doc)
        except BaseException:
            self.persist()
            raise
        self.judge(doc, reading)                                                 # 6. judge
        self.write_status(reading)                                               # 7. status
        reported = time.perf_counter()
        self.persist()  # 8. start times, the batch's log writer, records, outcomes
        if actions:
            log.debug("pass %d: %d action(s), status after %.1f ms, done after %.1f ms",
                      self.passes, len(actions), (reported - began) * 1000,
                      (time.perf_counter() - began) * 1000)
        return actions

    def choose(self, reading: desired.Reading) -> documents.DesiredState | None:
        if reading.desired is None:
            return self.applied  # bad input: keep the last good state, remove nothing
        target = self.history["outcomes"].get(reading.desired.revision, {})
        if target.get("rolled_back_to"):
            with contextlib.suppress(FileNotFoundError, ValueError):
                return documents.DesiredState.model_validate_json(
                    self.layout.last_good_file.read_bytes())
        return reading.desired

    def observe(self) -> dict[str, plan_.Observed]:
        now = time.time()
        out = {}
        for rec in list(self.records.values()):
            if _is_container(rec):
                if self._seen is None:
                    continue  # unknown while dockerd is away: planned once it answers
                out[rec.name] = self._observe_container(rec, now)
                continue
            if (rec.state is State.RUNNING and rec.process is not None
                    and not process_.is_same_process(rec.process)):
                rec.process = None
                self.transition(rec, Event.FAILED, "process disappeared")
            deps = tuple(d.name for d in rec.component().dependencies)
            out[rec.name] = plan_.Observed(
                rec.name, rec.spec_hash, rec.state, deps,
                retry_due=rec.retry_at is not None and rec.retry_at <= now,
                hold_revision=rec.hold_revision)
        return out

    # --- the container runtime (observe by label; same plan, same state table) ---------

    def _docker_down(self, exc: BaseException) -> None:
        """dockerd did not answer: containers are left as they are (Docker keeps them
        running), process components carry on, and the runtime is retried with capped,
        jittered backoff. Logged on change, not on every retry."""
        self._docker_failures += 1
        ceiling = min(self.settings.docker_backoff_cap_s,
                      self.settings.docker_backoff_base_s * 2 ** (self._docker_failures - 1))
        delay = ceiling / 2 + random.random() * ceiling / 2  # noqa: S311 - jitter
        self._docker_retry_at = time.time() + delay
        message = f"container runtime unavailable: {exc}"
        if self.docker_available is not False:
            log.error("%s (retrying with backoff)", message)
        self.docker_available, self.docker_message = False, message[:400]
        self._seen = None
        if self._containers is not None:
            self._containers.reset()

    def _docker_up(self) -> None:
        if self.docker_available is False:
            log.info("container runtime available again")
        self.docker_available, self.docker_message = True, ""
        self._docker_failures = 0

    def _wants_docker(self, doc: documents.DesiredState | None) -> bool:
        return any(_is_container(r) for r in self.records.values()) or (
            doc is not None and any(c.container is not None for c in doc.components))

    async def observe_containers(self, doc: documents.DesiredState | None) -> None:
        """List our labelled containers (one worker-thread trip): the observation the
        container records are judged against, and the orphans to remove."""
        now = time.time()
        self._orphans = []
        wanted = self._wants_docker(doc)
        if not wanted and (now < self._orphan_scan_at
                           or not self.layout.docker_marker.exists()):
            # Nothing of ours to look at: a periodic scan finds orphans where containers
            # once ran; where none ever did, there can be none of ours.
            self._seen = {}
            return
        if self.docker_available is False and now < self._docker_retry_at:
            self._seen = None
            return
        try:
            found = await asyncio.to_thread(self.containers.observe)
        except ContainerRuntimeError as exc:
            if wanted:
                self._docker_down(exc)
            else:  # a process-only device without Docker is not unhealthy
                self._seen = {}
                self._orphan_scan_at = now + self.settings.orphan_scan_s
            return
        self._docker_up()
        self._orphan_scan_at = now + self.settings.orphan_scan_s
        mine = {r.name for r in self.records.values() if _is_container(r)}
        seen: dict[str, container_.ObservedContainer] = {}
        for obs in found:
            if obs.name == container_.render_container_name(self.thing, obs.component):
                seen[obs.component] = obs
            if obs.component not in mine:
                self._orphans.append(obs.component)
        self._seen = seen

    def _observe_container(self, rec: records.Record, now: float) -> plan_.Observed:
        """Docker's view of one container component, fed through the state table."""
        assert self._seen is not None
        obs = self._seen.get(rec.name)
        if rec.state in (State.RUNNING, State.STARTING):
            if obs is None:
                self.transition(rec, Event.FAILED, "container disappeared")
            else:
                state = container_.render_component_state(obs)
                if state is State.RUNNING and rec.state is State.STARTING:
                    self.transition(rec, Event.STARTED, "healthy")
                elif state is State.FINISHED:
                    self.transition(rec, Event.EXITED_OK, "exited with 0")
                elif state in (State.ERRORED, State.INSTALLED):
                    self.transition(rec, Event.FAILED, _why(obs))
        if obs is not None and obs.is_running:
            self.container_logs.follow(rec.name, obs.container_id)
        spec_hash = rec.spec_hash
        comp = rec.component()
        if obs is not None:
            try:
                expected = self._config(comp, rec.token).spec_hash
            except (container_.ContainerSpecError, recipe.RecipeVariableError):
                expected = obs.spec_hash
            if obs.spec_hash != expected:  # not what this record made: replace it
                spec_hash = f"container:{obs.spec_hash}"
        return plan_.Observed(
            rec.name, spec_hash, rec.state, tuple(d.name for d in comp.dependencies),
            retry_due=rec.retry_at is not None and rec.retry_at <= now,
            hold_revision=rec.hold_revision, runtime="container")

    def _config(self, comp: documents.ResolvedComponent,
                token: str) -> container_.ContainerConfig:
        """The rendered container (cached by spec hash and token). The agent's variables
        come from the record, so they are stable: an adopted container is not replaced."""
        key = (comp.spec_hash, token)
        config = self._configs.get(key)
        if config is None:
            context = self._context(comp, self.applied)
            config = container_.render_container(
                comp, thing=self.thing, root=str(self.layout.root),
                ipc_socket=str(self.layout.ipc_socket),
                render=lambda text: recipe.render_text(text, context),
                agent_env={"HEDGEROW_COMPONENT": comp.name,
                           "HEDGEROW_COMPONENT_VERSION": comp.version,
                           "AWS_IOT_THING_NAME": self.thing,
                           "HEDGEROW_AUTH_TOKEN": token, "SVCUID": token})
            if len(self._configs) > 512:
                self._configs.clear()
            self._configs[key] = config
        return config

    def _archive_of(self, comp: documents.ResolvedComponent) -> pathlib.Path | None:
        """The image archive, fetched into the artifact cache and verified (blocking)."""
        spec = comp.container
        if spec is None or spec.image_archive is None:
            return None
        return self.store.fetch(component.Artifact(uri=spec.image_archive.uri,
                                                   sha256=spec.image_archive.sha256))

    def _prepare_container(self, comp: documents.ResolvedComponent) -> str | None:
        """PREPARE for a container (worker thread): render (bad recipe: permanent) and
        make the image present — pulled or loaded — before anything old is stopped."""
        try:
            config = self._config(comp, "")
            self.containers.ensure_image(config, self._archive_of(comp))
        except TransientError as exc:
            self._deferred.add(comp.name)
            self._transient = exc
            return None
        except (PermanentError, artifacts.ArtifactError, container_.ContainerSpecError,
                recipe.RecipeVariableError) as exc:
            return f"{comp.name}: image failure: {exc}"
        return None

    def _take_transient(self) -> ContainerRuntimeError | None:
        transient, self._transient = self._transient, None
        return transient

    async def _stop_container(self, rec: records.Record, remove: bool, hold: bool,
                              soft: bool) -> None:
        name = rec.name
        if name in self._deferred:
            return
        if not soft:  # soft: a spec change; apply() swaps new for old with less downtime
            try:
                await asyncio.to_thread(
                    self.containers.remove if remove else self.containers.stop, name,
                    self.settings.container_stop_s)
            except TransientError as exc:
                self._docker_down(exc)
                return  # nothing changed; a later pass (level-triggered) does it again
            except PermanentError as exc:
                log.warning("%s: %s", name, exc)
        self.transition(rec, Event.STOP_REQUESTED)
        if rec.state is State.STOPPING:
            self.transition(rec, Event.STOPPED, "stopped")
        self._stopped(rec, remove, hold)

    def _stopped(self, rec: records.Record, remove: bool, hold: bool) -> None:
        """What every runtime does once a component is stopped: hold or forget it."""
        if hold:
            rec.hold_revision = self.applied.revision if self.applied else None
            self.save(rec)
        if remove:
            self.runtime.remove(rec.name)
            self.records.pop(rec.name, None)
            self.save(rec)
            self.flush()
            log.info("%s: removed", rec.name)

    async def _install_container(self, comp: documents.ResolvedComponent) -> None:
        rec = self._ensure_record(comp)
        if rec.state is not State.NEW and (rec.state, Event.RESET) in lifecycle.TRANSITIONS:
            self.transition(rec, Event.RESET, "new desired revision"
                            if rec.state is State.BROKEN else "reinstalling")
        rec.installed_in = self.applied.revision if self.applied else ""
        rec.install_failed = False
        if rec.state is State.NEW:
            self.transition(rec, Event.INSTALLED)

    async def _start_container(self, comp: documents.ResolvedComponent) -> None:
        rec = self.records.get(comp.name)
        if rec is None or rec.state not in (State.INSTALLED, State.FINISHED):
            return
        if not self._deps_ready(comp):
            return
        try:
            config = self._config(comp, rec.token)
            archive = await asyncio.to_thread(self._archive_of, comp)
            result = await asyncio.to_thread(self.containers.apply, config, archive,
                                             stop_timeout=self.settings.container_stop_s)
        except TransientError as exc:
            self._docker_down(exc)
            return
        except (PermanentError, artifacts.ArtifactError, container_.ContainerSpecError,
                recipe.RecipeVariableError) as exc:
            rec.hold_revision = None
            self.transition(rec, Event.START)
            self.transition(rec, Event.FAILED, f"start: {exc}")
            return
        rec.hold_revision = None
        self.transition(rec, Event.START)
        what = f"container {result.container_id[:12]} ({result.action})"
        if config.healthcheck is None:  # RUNNING = started and (no check or healthy)
            self.transition(rec, Event.STARTED, what)
        else:
            rec.message = f"{what}; waiting for the health check"
            self.save(rec)
        self.container_logs.follow(comp.name, result.container_id)

    async def _recover_container(self, comp: documents.ResolvedComponent) -> None:
        rec = self.records[comp.name]
        try:  # an unhealthy container still runs: restart means stop first
            await asyncio.to_thread(self.containers.stop, comp.name,
                                    self.settings.container_stop_s)
        except TransientError as exc:
            self._docker_down(exc)
            return
        except PermanentError as exc:
            log.warning("%s: %s", comp.name, exc)
        self.transition(rec, Event.RECOVER, "recovering")
        await self._install_container(comp)
        await self._start_container(comp)

    async def apply_containers(self, actions: list[plan_.Action],
                               doc: documents.DesiredState | None) -> None:
        """Remove orphans (our labels, no record) and images nothing desired uses."""
        if self._seen is None or self._containers is None:
            return  # dockerd unknown, or never used by this agent: nothing of ours there
        keep = [r.name for r in self.records.values() if _is_container(r)]
        self.container_logs.forget(keep)
        changed = bool(self._orphans) or self._gc_due or any(
            a.runtime == "container" and a.verb in (plan_.Verb.REMOVE, plan_.Verb.INSTALL)
            for a in actions)
        if not changed:
            return
        self._gc_due = False
        images = {c.container.image for c in (doc.components if doc else [])
                  if c.container is not None}
        with contextlib.suppress(FileNotFoundError, ValueError):
            images |= {c.container.image for c in documents.DesiredState.model_validate_json(
                self.layout.last_good_file.read_bytes()).components if c.container}
        try:
            if self._orphans:
                await asyncio.to_thread(self.containers.remove_orphans, keep,
                                        self.settings.container_stop_s)
            await asyncio.to_thread(self.containers.gc_images, images)
        except TransientError as exc:
            self._docker_down(exc)
        except PermanentError as exc:
            log.warning("container clean-up: %s", exc)

    # --- apply -----------------------------------------------------------------------

    async def apply(self, actions: list[plan_.Action],
                    doc: documents.DesiredState | None) -> None:
        assert doc is not None or not any(a.verb is not plan_.Verb.REMOVE for a in actions)
        by_name = {c.name: c for c in doc.components} if doc else {}
        self._deferred, self._transient = set(), None
        to_prepare = [by_name.get(a.name) for a in actions
                      if a.verb is plan_.Verb.PREPARE]
        comps = [c for c in to_prepare if c is not None]
        if comps:  # downloads go to a worker thread (one trip); a few mkdirs do not
            failure = (await asyncio.to_thread(self._prepare, comps)
                       if any(c.artifacts or c.container for c in comps)
                       else self._prepare(comps))
            transient = self._take_transient()
            if transient is not None:
                self._docker_down(transient)
            if failure:
                log.error("%s", failure)
                self.fail(doc, failure)  # nothing stops, nothing starts
                return
        for action in actions:  # dependents first, one at a time (the plan's order)
            if action.verb in (plan_.Verb.STOP, plan_.Verb.REMOVE):
                await self.stop(action.name, remove=action.verb is plan_.Verb.REMOVE,
                                soft=action.runtime == "container"
                                and action.reason == "spec changed")
        # Install/start/recover: every record that may own a process exists durably before
        # anything is spawned (one write), then independent components go in parallel and
        # each waits only for its own dependencies in this plan.
        ups = [a for a in actions if a.verb in (plan_.Verb.INSTALL, plan_.Verb.START,
                                                  plan_.Verb.RECOVER)
               and a.name not in self._deferred]
        for action in ups:
            comp = by_name.get(action.name)
            if action.verb is plan_.Verb.INSTALL and comp is not None:
                self._ensure_record(comp)
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
            keep = list(doc.components)
            with contextlib.suppress(FileNotFoundError, ValueError):
                keep += documents.DesiredState.model_validate_json(
                    self.layout.last_good_file.read_bytes()).components
            await asyncio.to_thread(self.store.collect_garbage, keep)

    def _prepare(self, comps: list[documents.ResolvedComponent]) -> str | None:
        """Fetch and verify every component's artifacts; the first failure, if any."""
        for comp in comps:
            if comp.container is not None:
                failure = self._prepare_container(comp)
                if failure:
                    return failure
                continue
            try:
                identity = self.runtime.identity(
                    comp.run_with.posix_user if comp.run_with else None, False)
                self.store.prepare(comp, identity.uid, identity.gid)
            except (artifacts.ArtifactError, KeyError) as exc:
                return f"{comp.name}: artifact failure: {exc}"
        return None

    async def _bring_up(self, comp: documents.ResolvedComponent, verbs: list[plan_.Verb],
                        deps: list[asyncio.Task[None]]) -> None:
        if deps:
            await asyncio.gather(*deps, return_exceptions=True)
            self.runtime.finish_spawns()
        # The same verbs for both runtimes; only who carries them out differs.
        steps = ({plan_.Verb.INSTALL: self._install_container,
                  plan_.Verb.START: self._start_container,
                  plan_.Verb.RECOVER: self._recover_container}
                 if comp.container is not None else
                 {plan_.Verb.INSTALL: self.install, plan_.Verb.START: self.start,
                  plan_.Verb.RECOVER: self.recover})
        for verb in verbs:
            step = steps.get(verb)
            if step is not None:
                await step(comp)

    def _context(self, comp: documents.ResolvedComponent,
                 doc: documents.DesiredState | None) -> recipe.Context:
        def paths(c: documents.ResolvedComponent) -> recipe.Paths:
            return recipe.Paths(str(self.store.view_of(c)), str(self.store.unpacked_of(c)),
                                str(self.layout.work_of(c.name)), c.configuration)
        deps = {}
        for dep in comp.dependencies:
            found = doc.component(dep.name) if doc else None
            if found is not None:
                deps[dep.name] = paths(found)
        return recipe.Context(comp.name, paths(comp), str(self.layout.root), self.thing, deps)

    async def _step(self, rec: records.Record, comp: documents.ResolvedComponent,
                    name: str) -> process_.StepResult | None:
        """Run a lifecycle step to completion; None when the recipe has no such step."""
        life = comp.lifecycle
        assert life is not None
        step: component.Step | None = getattr(life, name)
        if step is None:
            return None
        context = self._context(comp, self.applied)
        try:
            script = recipe.render_text(step.script, context)
            env = recipe.render_env({**life.setenv, **step.setenv}, context)
            skip = recipe.render_text(step.skip_if, context) if step.skip_if else None
        except recipe.RecipeVariableError as exc:
            return process_.StepResult(ok=False, message=f"{name}: {exc}")

        def remember(ref: records.ProcessRef) -> None:
            rec.process = ref
            self.save(rec)
            self.flush()  # the step may run long: its pid must survive a crash

        result = await self.runtime.run_step(rec, comp, name, step, script, env, skip, remember)
        rec.process = None
        return result

    def _fail_event(self, result: process_.StepResult) -> Event:
        return Event.TIMED_OUT if result.timed_out else Event.FAILED

    def _ensure_record(self, comp: documents.ResolvedComponent) -> records.Record:
        rec = self.records.get(comp.name)
        spec_hash = comp.spec_hash  # a hash of the whole spec: computed once
        if rec is None or rec.spec_hash != spec_hash:
            rec = records.Record(name=comp.name, version=comp.version,
                                 spec_hash=spec_hash, spec=comp.to_dict(),
                                 token=secrets.token_urlsafe(24),
                                 instance=secrets.token_hex(8))
            self.records[comp.name] = rec
            self.save(rec)
        return rec

    async def install(self, comp: documents.ResolvedComponent) -> None:
        rec = self._ensure_record(comp)
        if rec.state is State.BROKEN:
            self.transition(rec, Event.RESET, "new desired revision")
        rec.installed_in = self.applied.revision if self.applied else ""
        rec.install_failed = False
        self.save(rec)
        result = await self._step(rec, comp, "install")
        if result is not None and not result.ok:
            rec.install_failed = True
            self.transition(rec, self._fail_event(result), result.message)
            return
        self.transition(rec, Event.INSTALLED, result.message if result else "")

    def _deps_ready(self, comp: documents.ResolvedComponent) -> bool:
        for dep in comp.dependencies:
            other = self.records.get(dep.name)
            if other is None or other.state not in _DONE:
                return False
        return True

    async def start(self, comp: documents.ResolvedComponent) -> None:
        rec = self.records.get(comp.name)
        if rec is None or rec.state not in (State.INSTALLED, State.FINISHED):
            return
        if not self._deps_ready(comp):
            return  # a later pass starts it once its dependencies run (level-triggered)
        rec.hold_revision = None
        self.transition(rec, Event.START)
        life = comp.lifecycle
        assert life is not None
        if life.run is None:
            result = await self._step(rec, comp, "startup")
            if result is not None and not result.ok:
                self.transition(rec, self._fail_event(result), result.message)
            elif result is None:
                self.transition(rec, Event.EXITED_OK, "no startup or run step")
            else:
                self.transition(rec, Event.STARTED)
            return
        context = self._context(comp, self.applied)
        try:
            script = recipe.render_text(life.run.script, context)
            env = recipe.render_env({**life.setenv, **life.run.setenv}, context)
            skip = recipe.render_text(life.run.skip_if, context) if life.run.skip_if else None
            if self.runtime.is_skipped(life.run, skip):
                self.transition(rec, Event.EXITED_OK, f"run skipped ({skip})")
                return
            _proc, ref = await self.runtime.spawn(rec, comp, "run", life.run, script, env)
        except (recipe.RecipeVariableError, OSError, KeyError, cgroups_.LimitError) as exc:
            self.transition(rec, Event.FAILED, f"run: {exc}")
            return
        rec.process = ref
        self.transition(rec, Event.STARTED, f"pid {ref.pid}")
        self.runtime.watch(comp.name, ref, self._on_exit(comp.name, ref))

    async def stop(self, name: str, remove: bool = False, hold: bool = False,
                   soft: bool = False) -> None:
        rec = self.records.get(name)
        if rec is None:
            return
        if _is_container(rec):
            await self._stop_container(rec, remove, hold, soft)
            return
        comp = rec.component()
        self.transition(rec, Event.STOP_REQUESTED)
        ref, rec.process = rec.process, None
        self.runtime.unwatch(name)
        if rec.state is State.STOPPING:
            result = await self._step(rec, comp, "shutdown") if comp.lifecycle else None
            await self.runtime.terminate(name, ref)
            self.transition(rec, Event.STOPPED,
                            result.message if result and not result.ok else "stopped")
        else:
            await self.runtime.terminate(name, ref)
        self._stopped(rec, remove, hold)

    async def recover(self, comp: documents.ResolvedComponent) -> None:
        rec = self.records[comp.name]
        await self.runtime.terminate(comp.name, rec.process)
        rec.process = None
        result = await self._step(rec, comp, "recover")
        if result is not None and not result.ok:
            self.transition(rec, self._fail_event(result), result.message)
            return
        self.transition(rec, Event.RECOVER, "recovering")
        await self.install(comp)
        await self.start(comp)

    # --- outcome ---------------------------------------------------------------------

    def _outcome(self, revision: str) -> dict[str, Any]:
        outcomes: dict[str, Any] = self.history["outcomes"]
        if revision not in outcomes:
            outcomes[revision] = {"outcome": "IN_PROGRESS", "started": time.time(),
                                  "reason": ""}
            while len(outcomes) > 20:
                outcomes.pop(next(iter(outcomes)))
        entry: dict[str, Any] = outcomes[revision]
        return entry

    def fail(self, doc: documents.DesiredState | None, reason: str) -> None:
        if doc is None:
            return
        entry = self._outcome(doc.revision)
        if entry["outcome"] not in ("IN_PROGRESS",):
            return
        entry.update(outcome="FAILED", reason=reason[:1000], finished=time.time())
        log.error("deployment %s failed: %s", doc.revision, reason)
        if doc.failure_handling.value == "ROLLBACK" and self.layout.last_good_file.exists():
            good = documents.DesiredState.model_validate_json(
                self.layout.last_good_file.read_bytes())
            if good.revision != doc.revision:
                entry.update(outcome="ROLLED_BACK", rolled_back_to=good.revision)
                log.warning("rolling back to %s", good.revision)
                self.wake.set()
        self.save_history()

    def judge(self, doc: documents.DesiredState | None, reading: desired.Reading) -> None:
        wanted = reading.desired
        if wanted is None or doc is None or doc.revision != wanted.revision:
            return  # bad input or rolled back: the outcome was recorded when it happened
        entry = self._outcome(doc.revision)
        if self.pending_local is not None:
            for local in self.history.get("local", []):
                if local["id"] == self.pending_local:
                    local["revision"] = doc.revision
            self.pending_local = None
        if entry["outcome"] != "IN_PROGRESS":
            self.save_history()
            return
        mine = [self.records.get(c.name) for c in doc.components]
        broken = [r for r in mine if r is not None and (
            r.state is State.BROKEN or (r.install_failed and r.state is State.ERRORED))]
        if broken:
            self.fail(doc, "; ".join(f"{r.name} {r.state}: {r.message}" for r in broken))
        elif all(r is not None and r.state in _DONE for r in mine) and (
                time.time() - max((r.since for r in mine if r), default=0.0)
                < self.settings.settle_s):
            self._judge_at = time.time() + self.settings.settle_s
        elif all(r is not None and r.state in _DONE for r in mine):
            entry.update(outcome="SUCCEEDED", finished=time.time())
            self._due[self.layout.last_good_file] = documents.render_bytes(doc)
            self._gc_due = True  # images only the previous good state used may go now
            self.save_history()
            log.info("deployment %s succeeded", doc.revision)
        elif time.time() - entry["started"] > self.settings.deployment_timeout_s:
            self.fail(doc, f"not RUNNING after {self.settings.deployment_timeout_s:g}s")
        else:
            self.save_history()

    # --- status ----------------------------------------------------------------------

    def report(self, reading: desired.Reading | None = None) -> documents.StatusReport:
        self.sequence += 1
        wanted = reading.desired if reading else None
        revision = wanted.revision if wanted else (self.applied.revision if self.applied
                                                    else None)
        outcome = None
        if reading is not None and reading.problems:
            outcome = documents.DeploymentOutcome(
                revision=revision or "", outcome=documents.Outcome.REJECTED,
                reason="; ".join(reading.problems)[:1024])
        elif revision and revision in self.history["outcomes"]:
            entry = self.history["outcomes"][revision]
            outcome = documents.DeploymentOutcome(
                revision=revision, outcome=documents.Outcome(entry["outcome"]),
                reason=entry.get("reason", ""), rolled_back_to=entry.get("rolled_back_to"))
        docker_down = self.docker_available is False
        comps = [documents.ComponentReport(
            name=r.name, version=r.version, state=r.state,
            message=(self.docker_message if docker_down and _is_container(r)
                     else r.message)[:512])
                 for r in sorted(self.records.values(), key=lambda r: r.name)]
        bad = any(r.state in (State.ERRORED, State.BROKEN) for r in self.records.values())
        bad = bad or (docker_down and self._wants_docker(self.applied))
        return documents.StatusReport(
            thing=self.thing, sequence=self.sequence,
            time=datetime.datetime.now(datetime.UTC),
            agent_version=AGENT_VERSION, platform=self.platform,
            health=documents.Health.UNHEALTHY if bad else documents.Health.HEALTHY,
            desired_revision=revision,
            applied_revision=self.applied.revision if self.applied else None,
            components=comps, deployment=outcome)

    def write_status(self, reading: desired.Reading) -> None:
        # A report, regenerated every pass, not a record the agent relies on: atomic
        # (rename, never torn) but not fsync'd.
        files.write_atomic(self.layout.status_file,
                           documents.render_bytes(self.report(reading)), durable=False)

    def save_history(self) -> None:
        """Deployment outcomes (state/deployments.json): during a pass, `persist` writes
        them at its end; outside one (a control command), now."""
        if not self.lock.locked():
            data = json.dumps(self.history, sort_keys=True, indent=1).encode()
            if data != self._history_written:
                files.write_atomic(self.layout.history_file, data)
                self._history_written = data

    # --- the loop --------------------------------------------------------------------

    def _next_deadline(self) -> float:
        now = time.time()
        deadline = now + self.settings.resync_s
        if self._judge_at > now:
            deadline = min(deadline, self._judge_at)
        for rec in self.records.values():
            if rec.state is State.ERRORED and rec.retry_at is not None:
                deadline = min(deadline, rec.retry_at)
            if rec.state is State.STARTING and _is_container(rec):
                deadline = min(deadline, now + 1.0)  # health checks (events wake us too)
        if self.docker_available is False:
            deadline = min(deadline, self._docker_retry_at)
        return max(0.0, deadline - now)

    async def _watch_files(self) -> None:
        """Wake on changes under desired/ and deployments/. step=1: yield a change after
        1 ms without another (5 ms cost 4 ms of every deployment's latency); a burst
        split in two only means one more pass of a level-triggered loop."""
        import watchfiles

        async for _changes in watchfiles.awatch(self.layout.desired, self.layout.deployments,
                                                debounce=50, step=1, recursive=True):
            self.wake.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        from hedgerow.agent import control

        self.layout.ensure()
        self.adopt()
        server = await control.serve(self)
        watcher = asyncio.create_task(self._watch_files())
        self._loop = asyncio.get_running_loop()
        self._events_stop.clear()
        if self._containers is not None:
            self._watch_docker_events(self._loop)
        self.wake.set()
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
                except Exception:  # a bug must not take the device's workloads down
                    log.exception("reconcile pass failed; retrying at the next wake")
                    await asyncio.sleep(1.0)
        finally:
            self._events_stop.set()
            watcher.cancel()
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.layout.control_socket.unlink()

    def shutdown(self) -> None:
        """Leave the loop; components keep running (a restart adopts them)."""
        self._stopping = True
        self.wake.set()
