"""Container components in the agent loop: Docker's view fed through the same plan and
the same state table as processes (docs/containers.md "In the agent loop").

The loop (agent.py) owns records, transitions and the outcome; this bridge owns what is
particular to containers: the Docker runtime — created on first use, so a device that
only runs processes never imports the Docker SDK (about half the agent's memory) — the
observation by label, dockerd's availability with capped, jittered backoff, and the
container side of each verb. While dockerd does not answer, containers are neither
touched nor removed (Docker keeps them running) and process components carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import posixpath
import random
import stat
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from hedgerow import files
from hedgerow.agent import artifacts, settings
from hedgerow.agent import records as records_
from hedgerow.agent.dockererrors import ContainerRuntimeError, PermanentError, TransientError
from hedgerow.agent.layout import Layout
from hedgerow.core import backoff, component, documents, lifecycle, privilege, recipe
from hedgerow.core import container as container_
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.lifecycle import Event

if TYPE_CHECKING:  # the Docker SDK costs ~15 MB: imported only once a container is wanted
    from hedgerow.agent import containers as containers_

log = logging.getLogger("hedgerow.agent")


class Host(Protocol):
    """What the bridge uses of the agent loop it belongs to."""

    layout: Layout
    thing: str
    settings: settings.Settings
    store: artifacts.Store
    records: dict[str, records_.Record]
    applied: documents.DesiredState | None
    wake: asyncio.Event
    clock: Callable[[], float]  # the agent's monotonic clock (wall-clock steps ignored)

    def transition(self, rec: records_.Record, event: Event, message: str = "") -> None: ...

    def save(self, rec: records_.Record) -> None: ...

    def last_good(self) -> documents.DesiredState | None: ...

    def stopped(self, rec: records_.Record, remove: bool, hold: bool) -> None: ...

    def deps_ready(self, comp: documents.ResolvedComponent) -> bool: ...

    def ensure_record(self, comp: documents.ResolvedComponent) -> records_.Record: ...

    def context(self, comp: documents.ResolvedComponent,
                doc: documents.DesiredState | None) -> recipe.Context: ...


def is_container(rec: records_.Record) -> bool:
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


def _is_trusted_folder(info: os.stat_result) -> bool:
    """Only root can change what this folder holds: owned by root (or by the agent's own
    user, when it does not run as root), and not writable by anyone else — or sticky
    (/tmp), where others cannot rename or replace root's entries."""
    return (stat.S_ISDIR(info.st_mode) and info.st_uid in (0, os.geteuid())
            and (info.st_mode & 0o022 == 0 or bool(info.st_mode & stat.S_ISVTX)))


def observe_bind_source(source: str) -> str:
    """The path the kernel will mount for the absolute bind source `source`.

    Links are resolved (as root: reading a link changes nothing), then the result is
    verified component by component without following links: every folder above it must
    be one only root can change. Docker mounts a source again at every (re)start, so a
    path under a folder the component can write — its own work folder included — could
    be swapped for a link to /etc between this check and any later start: refused; bind
    the folder itself. A missing last part is fine (Docker creates it, as root, in a
    trusted folder). Raises ContainerSpecError with the reason.
    """
    try:
        resolved = os.path.realpath(source)
    except OSError as exc:  # e.g. /proc/1/root where the kernel says no, even to root
        raise container_.ContainerSpecError(
            f"bind source {source}: cannot be resolved: {exc.strerror}") from None
    parts = [p for p in resolved.split("/") if p]
    folder = "/"
    for i, part in enumerate(parts):
        try:
            info = os.lstat(folder)
        except OSError as exc:
            raise container_.ContainerSpecError(
                f"bind source {source}: {folder}: {exc.strerror}") from None
        if not _is_trusted_folder(info):
            raise container_.ContainerSpecError(
                f"bind source {source}: {folder} can be changed by a user other than root "
                "(a link planted there would redirect the mount); bind a folder whose "
                "parents only root can write, e.g. {work:path} itself")
        path = posixpath.join(folder, part)
        try:
            here = os.lstat(path)
        except FileNotFoundError:
            if i == len(parts) - 1:
                return path  # Docker creates it, as root, in a folder only root changes
            raise container_.ContainerSpecError(
                f"bind source {source}: {path} does not exist") from None
        if stat.S_ISLNK(here.st_mode):  # changed since realpath looked: a race, refused
            raise container_.ContainerSpecError(
                f"bind source {source}: {path} changed while it was checked")
        folder = path
    return resolved


class ContainerBridge:
    def __init__(self, host: Host,
                 docker_client: containers_.ClientFactory | None = None) -> None:
        # `docker_client` (default: docker.from_env, which honours DOCKER_HOST) is how
        # tests point the agent at a daemon that is not there.
        self.host = host
        self._docker_client = docker_client
        self._runtime: containers_.ContainerRuntime | None = None
        self._logs: containers_.LogMirror | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_stop = threading.Event()
        self.available: bool | None = None  # unknown until first used
        self.message = ""
        self._failures = 0
        self.retry_at = 0.0
        # Our labelled containers by component, from this pass's observation; None while
        # dockerd is unknown (then containers are planned once it answers).
        self.seen: dict[str, container_.ObservedContainer] | None = None
        self._orphans: list[str] = []
        self._orphan_scan_at = 0.0
        self._configs: dict[tuple[str, str], container_.ContainerConfig] = {}
        self.deferred: set[str] = set()  # PREPARE could not reach dockerd: not this pass
        self._transient: ContainerRuntimeError | None = None
        self.gc_due = False

    # --- the runtime, loaded on demand -------------------------------------------------

    @property
    def runtime(self) -> containers_.ContainerRuntime:
        if self._runtime is None:
            from hedgerow.agent import containers

            if self._docker_client is None:
                import docker

                self._docker_client = docker.from_env
            layout = self.host.layout
            self._runtime = containers.ContainerRuntime(
                self._docker_client, thing=self.host.thing, state_dir=layout.state)
            self._logs = containers.LogMirror(
                self._runtime, layout.log_of, self.host.settings.log_max_bytes,
                self.host.settings.log_keep)
            if not layout.docker_marker.exists():
                files.write_atomic(layout.docker_marker, b"")
            if self._loop is not None:
                self._watch_events(self._loop)
        return self._runtime

    @property
    def logs(self) -> containers_.LogMirror:
        self.runtime  # noqa: B018 - creates the log mirror with the runtime
        assert self._logs is not None
        return self._logs

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop runs: Docker events (once the runtime exists) wake it."""
        self._loop = loop
        self._events_stop.clear()
        if self._runtime is not None:
            self._watch_events(loop)

    def stop(self) -> None:
        self._events_stop.set()

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        wake = self.host.wake
        threading.Thread(target=self.runtime.watch_events, name="docker-events",
                         args=(lambda: loop.call_soon_threadsafe(wake.set),
                               self._events_stop), daemon=True).start()

    # --- dockerd's availability --------------------------------------------------------

    def down(self, exc: BaseException) -> None:
        """dockerd did not answer: containers are left as they are (Docker keeps them
        running), process components carry on, and the runtime is retried with capped,
        jittered backoff. Logged on change, not on every retry."""
        self._failures += 1
        conf = self.host.settings
        delay = backoff.resolve_delay(self._failures - 1, conf.docker_backoff_base_s,
                                      conf.docker_backoff_cap_s, random.random)
        self.retry_at = self.host.clock() + delay
        message = f"container runtime unavailable: {exc}"
        if self.available is not False:
            log.error("%s (retrying with backoff)", message)
        self.available, self.message = False, message[:400]
        self.seen = None
        if self._runtime is not None:
            self._runtime.reset()

    def _up(self) -> None:
        if self.available is False:
            log.info("container runtime available again")
        self.available, self.message = True, ""
        self._failures = 0

    def wants(self, doc: documents.DesiredState | None) -> bool:
        return any(is_container(r) for r in self.host.records.values()) or (
            doc is not None and any(c.container is not None for c in doc.components))

    # --- observe -----------------------------------------------------------------------

    async def observe(self, doc: documents.DesiredState | None) -> None:
        """List our labelled containers (one worker-thread trip): the observation the
        container records are judged against, and the orphans to remove."""
        now = self.host.clock()
        self._orphans = []
        wanted = self.wants(doc)
        if not wanted and (now < self._orphan_scan_at
                           or not self.host.layout.docker_marker.exists()):
            # Nothing of ours to look at: a periodic scan finds orphans where containers
            # once ran; where none ever did, there can be none of ours.
            self.seen = {}
            return
        if self.available is False and now < self.retry_at:
            self.seen = None
            return
        try:
            found = await asyncio.to_thread(self.runtime.observe)
        except ContainerRuntimeError as exc:
            if wanted:
                self.down(exc)
            else:  # a process-only device without Docker is not unhealthy
                self.seen = {}
                self._orphan_scan_at = now + self.host.settings.orphan_scan_s
            return
        self._up()
        self._orphan_scan_at = now + self.host.settings.orphan_scan_s
        mine = {r.name for r in self.host.records.values() if is_container(r)}
        seen: dict[str, container_.ObservedContainer] = {}
        for obs in found:
            if obs.name == container_.render_container_name(self.host.thing, obs.component):
                seen[obs.component] = obs
            if obs.component not in mine:
                self._orphans.append(obs.component)
        self.seen = seen

    def observe_one(self, rec: records_.Record, now: float) -> plan_.Observed:
        """Docker's view of one container component, fed through the state table."""
        assert self.seen is not None
        host = self.host
        obs = self.seen.get(rec.name)
        if rec.state in (State.RUNNING, State.STARTING):
            if obs is None:
                host.transition(rec, Event.FAILED, "container disappeared")
            else:
                state = container_.render_component_state(obs)
                if state is State.RUNNING and rec.state is State.STARTING:
                    host.transition(rec, Event.STARTED, "healthy")
                elif state is State.FINISHED:
                    host.transition(rec, Event.EXITED_OK, "exited with 0")
                elif state in (State.ERRORED, State.INSTALLED):
                    host.transition(rec, Event.FAILED, _why(obs))
        if obs is not None and obs.is_running:
            self.logs.follow(rec.name, obs.container_id)
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
            host = self.host
            context = host.context(comp, host.applied)
            config = container_.render_container(
                comp, thing=host.thing, root=str(host.layout.root),
                ipc_socket=str(host.layout.ipc_socket),
                render=lambda text: recipe.render_text(text, context),
                canonical=observe_bind_source,
                allow_privileged=privilege.is_allowed(privilege.Level.PRIVILEGED,
                                                      host.settings.max_privilege),
                agent_env={"HEDGEROW_COMPONENT": comp.name,
                           "HEDGEROW_COMPONENT_VERSION": comp.version,
                           "AWS_IOT_THING_NAME": host.thing,
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
        return self.host.store.fetch(component.Artifact(uri=spec.image_archive.uri,
                                                        sha256=spec.image_archive.sha256))

    # --- the verbs ---------------------------------------------------------------------

    def begin_apply(self) -> None:
        self.deferred, self._transient = set(), None

    def prepare(self, comp: documents.ResolvedComponent) -> str | None:
        """PREPARE (worker thread): render (bad recipe: permanent) and make the image
        present — pulled or loaded — before anything old is stopped. The failure, if any;
        an unreachable dockerd defers the component instead (see `take_transient`)."""
        try:
            config = self._config(comp, "")
            self.runtime.ensure_image(config, self._archive_of(comp))
        except TransientError as exc:
            self.deferred.add(comp.name)
            self._transient = exc
            return None
        except (container_.ContainerSpecError, recipe.RecipeVariableError) as exc:
            return f"{comp.name}: refused: {exc}"
        except (PermanentError, artifacts.ArtifactError) as exc:
            return f"{comp.name}: image failure: {exc}"
        return None

    def take_transient(self) -> None:
        """Back on the loop after PREPARE: an unreachable dockerd is noted once."""
        transient, self._transient = self._transient, None
        if transient is not None:
            self.down(transient)

    async def stop_one(self, rec: records_.Record, remove: bool, hold: bool,
                       soft: bool) -> None:
        name, host = rec.name, self.host
        if name in self.deferred:
            return
        if not soft:  # soft: a spec change; apply swaps new for old with less downtime
            try:
                await asyncio.to_thread(
                    self.runtime.remove if remove else self.runtime.stop, name,
                    host.settings.container_stop_s)
            except TransientError as exc:
                self.down(exc)
                return  # nothing changed; a later pass (level-triggered) does it again
            except PermanentError as exc:
                log.warning("%s: %s", name, exc)
        host.transition(rec, Event.STOP_REQUESTED)
        if rec.state is State.STOPPING:
            host.transition(rec, Event.STOPPED, "stopped")
        host.stopped(rec, remove, hold)

    async def install(self, comp: documents.ResolvedComponent) -> None:
        host = self.host
        rec = host.ensure_record(comp)
        if rec.state is not State.NEW and (rec.state, Event.RESET) in lifecycle.TRANSITIONS:
            host.transition(rec, Event.RESET, "new desired revision"
                            if rec.state is State.BROKEN else "reinstalling")
        rec.installed_in = host.applied.revision if host.applied else ""
        rec.install_failed = False
        if rec.state is State.NEW:
            host.transition(rec, Event.INSTALLED)

    async def start_one(self, comp: documents.ResolvedComponent) -> None:
        host = self.host
        rec = host.records.get(comp.name)
        if rec is None or rec.state not in (State.INSTALLED, State.FINISHED):
            return
        if not host.deps_ready(comp):
            return
        try:
            config = self._config(comp, rec.token)
            archive = await asyncio.to_thread(self._archive_of, comp)
            result = await asyncio.to_thread(self.runtime.apply, config, archive,
                                             stop_timeout=host.settings.container_stop_s)
        except TransientError as exc:
            self.down(exc)
            return
        except (PermanentError, artifacts.ArtifactError, container_.ContainerSpecError,
                recipe.RecipeVariableError) as exc:
            rec.hold_revision = None
            host.transition(rec, Event.START)
            host.transition(rec, Event.FAILED, f"start: {exc}")
            return
        rec.hold_revision = None
        host.transition(rec, Event.START)
        what = f"container {result.container_id[:12]} ({result.action})"
        if config.healthcheck is None:  # RUNNING = started and (no check or healthy)
            host.transition(rec, Event.STARTED, what)
        else:
            rec.message = f"{what}; waiting for the health check"
            host.save(rec)
        self.logs.follow(comp.name, result.container_id)

    async def recover(self, comp: documents.ResolvedComponent) -> None:
        rec = self.host.records[comp.name]
        try:  # an unhealthy container still runs: restart means stop first
            await asyncio.to_thread(self.runtime.stop, comp.name,
                                    self.host.settings.container_stop_s)
        except TransientError as exc:
            self.down(exc)
            return
        except PermanentError as exc:
            log.warning("%s: %s", comp.name, exc)
        self.host.transition(rec, Event.RECOVER, "recovering")
        await self.install(comp)
        await self.start_one(comp)

    async def clean_up(self, actions: list[plan_.Action],
                       doc: documents.DesiredState | None) -> None:
        """Remove orphans (our labels, no record) and images nothing desired uses."""
        if self.seen is None or self._runtime is None:
            return  # dockerd unknown, or never used by this agent: nothing of ours there
        host = self.host
        keep = [r.name for r in host.records.values() if is_container(r)]
        self.logs.forget(keep)
        changed = bool(self._orphans) or self.gc_due or any(
            a.runtime == "container" and a.verb in (plan_.Verb.REMOVE, plan_.Verb.INSTALL)
            for a in actions)
        if not changed:
            return
        self.gc_due = False
        images = {c.container.image for c in (doc.components if doc else [])
                  if c.container is not None}
        good = host.last_good()
        images |= {c.container.image for c in (good.components if good else [])
                   if c.container is not None}
        try:
            if self._orphans:
                await asyncio.to_thread(self.runtime.remove_orphans, keep,
                                        host.settings.container_stop_s)
            await asyncio.to_thread(self.runtime.gc_images, images)
        except TransientError as exc:
            self.down(exc)
        except PermanentError as exc:
            log.warning("container clean-up: %s", exc)
