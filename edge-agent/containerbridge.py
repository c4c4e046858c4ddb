"""Container components in the agent loop: Docker's view fed through the same plan and
the same state table as processes (docs/containers.md "In the agent loop").

A `runtime.Runtime`: the loop (agent.py) owns records, transitions and the outcome and
applies the lifecycle events this bridge yields; the bridge owns what is particular to
containers: the Docker runtime — created on first use, so a device that
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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from hedgerow import files
from hedgerow.agent import artifacts, containerlogs, settings
from hedgerow.agent import process as process_
from hedgerow.agent import records as records_
from hedgerow.agent import runtime as runtime_
from hedgerow.agent.dockererrors import ContainerRuntimeError, PermanentError, TransientError
from hedgerow.agent.layout import Layout
from hedgerow.core import (
    backoff,
    component,
    documents,
    environment,
    lifecycle,
    privilege,
    recipe,
    streams,
)
from hedgerow.core import container as container_
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState as State
from hedgerow.core.lifecycle import Event

if TYPE_CHECKING:  # the Docker SDK costs ~15 MB: imported only once a container is wanted
    from hedgerow.agent import containers as containers_

log = logging.getLogger("hedgerow.agent")


def is_container(rec: records_.Record) -> bool:
    return "container" in rec.spec


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


class ContainerBridge(runtime_.Base):
    """The container runtime as the loop sees it (`runtime.Runtime`)."""

    kind = "container"

    def __init__(self, layout: Layout, thing: str, conf: settings.Settings,
                 store: artifacts.Store, services: runtime_.Services,
                 docker_client: containers_.ClientFactory | None = None) -> None:
        # `docker_client` (default: docker.from_env, which honours DOCKER_HOST) is how
        # tests point the agent at a daemon that is not there.
        self.layout, self.thing, self.settings, self.store = layout, thing, conf, store
        self.services = services
        self._docker_client = docker_client
        self._runtime: containers_.ContainerRuntime | None = None
        self._logs: containerlogs.LogMirror | None = None
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
        self._gc_due = False  # a new last good state: images only the old one used

    def claims(self, comp: documents.ResolvedComponent) -> bool:
        return comp.container is not None

    # --- the runtime, loaded on demand -------------------------------------------------

    @property
    def runtime(self) -> containers_.ContainerRuntime:
        if self._runtime is None:
            from hedgerow.agent import containers

            if self._docker_client is None:
                import docker

                self._docker_client = docker.from_env
            self._runtime = containers.ContainerRuntime(
                self._docker_client, thing=self.thing, state_dir=self.layout.state)
            self._logs = containerlogs.LogMirror(
                self._runtime, self.layout.log_of, self.settings.log_max_bytes,
                self.settings.log_keep)
            if not self.layout.docker_marker.exists():
                files.write_atomic(self.layout.docker_marker, b"")
            if self._loop is not None:
                self._watch_events(self._loop)
        return self._runtime

    @property
    def logs(self) -> containerlogs.LogMirror:
        self.runtime  # noqa: B018 - creates the log mirror with the runtime
        assert self._logs is not None
        return self._logs

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop runs: Docker events (once the runtime exists) wake it."""
        self._loop = loop
        self._events_stop.clear()
        if self._runtime is not None:
            self._watch_events(loop)

    def detach(self) -> None:
        self._events_stop.set()

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        wake = self.services.wake
        threading.Thread(target=self.runtime.watch_events, name="docker-events",
                         args=(lambda: loop.call_soon_threadsafe(wake),
                               self._events_stop), daemon=True).start()

    # --- dockerd's availability --------------------------------------------------------

    def down(self, exc: BaseException) -> None:
        """dockerd did not answer: containers are left as they are (Docker keeps them
        running), process components carry on, and the runtime is retried with capped,
        jittered backoff. Logged on change, not on every retry."""
        self._failures += 1
        conf = self.settings
        delay = backoff.resolve_delay(self._failures - 1, conf.docker_backoff_base_s,
                                      conf.docker_backoff_cap_s, random.random)
        self.retry_at = self.services.clock() + delay
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

    def unavailable(self) -> str:
        return self.message if self.available is False else ""

    def next_wake(self, recs: Iterable[records_.Record], now: float) -> float | None:
        wake = self.retry_at if self.available is False else None
        if any(r.state is State.STARTING for r in recs):
            wake = min(wake or now + 1.0, now + 1.0)  # health checks (events wake us too)
        return wake

    # --- observe -----------------------------------------------------------------------

    async def observe(self, recs: Iterable[records_.Record],
                      doc: documents.DesiredState | None) -> bool:
        """List our labelled containers (one worker-thread trip): the observation the
        container records are judged against, and the orphans to remove."""
        now = self.services.clock()
        self._orphans, self.deferred = [], set()
        mine = {r.name for r in recs}
        wanted = bool(mine) or (doc is not None and any(self.claims(c)
                                                        for c in doc.components))
        if not wanted and (now < self._orphan_scan_at
                           or not self.layout.docker_marker.exists()):
            # Nothing of ours to look at: a periodic scan finds orphans where containers
            # once ran; where none ever did, there can be none of ours.
            self.seen = {}
            return True
        if self.available is False and now < self.retry_at:
            self.seen = None
            return False
        try:
            found = await asyncio.to_thread(self.runtime.observe)
        except ContainerRuntimeError as exc:
            if wanted:
                self.down(exc)
                return False
            # a process-only device without Docker is not unhealthy
            self.seen = {}
            self._orphan_scan_at = now + self.settings.orphan_scan_s
            return True
        self._up()
        self._orphan_scan_at = now + self.settings.orphan_scan_s
        seen: dict[str, container_.ObservedContainer] = {}
        for obs in found:
            if obs.name == container_.render_container_name(self.thing, obs.component):
                seen[obs.component] = obs
            if obs.component not in mine:
                self._orphans.append(obs.component)
        self.seen = seen
        return True

    def observe_one(self, rec: records_.Record,
                    now: float) -> tuple[str, list[runtime_.Change]]:
        """Docker's view of one container component, as lifecycle events."""
        assert self.seen is not None
        obs = self.seen.get(rec.name)
        # Paused on purpose (IPC PauseComponent) is not a failure; paused otherwise is.
        change = None if rec.paused and obs is not None and obs.status == "paused" else \
            container_.resolve_container_event(rec.state, obs)
        changes = [] if change is None else [runtime_.Change(*change)]
        if obs is not None and obs.is_running:
            self.logs.follow(rec.name, obs.container_id)
        spec_hash = rec.spec_hash
        if obs is not None:
            comp = rec.component()
            try:
                expected = self._config(comp, rec.token).spec_hash
            except (container_.ContainerSpecError, recipe.RecipeVariableError):
                expected = obs.spec_hash
            if obs.spec_hash != expected:  # not what this record made: replace it
                spec_hash = f"container:{obs.spec_hash}"
        return spec_hash, changes

    def _config(self, comp: documents.ResolvedComponent,
                token: str) -> container_.ContainerConfig:
        """The rendered container (cached by spec hash and token). The agent's variables
        come from the record, so they are stable: an adopted container is not replaced."""
        key = (comp.spec_hash, token)
        config = self._configs.get(key)
        if config is None:
            context = self.services.context_of(comp)
            mounted = bool(comp.container and comp.container.mount_ipc_socket)
            config = container_.render_container(
                comp, thing=self.thing, root=str(self.layout.root),
                ipc_socket=str(self.layout.ipc_socket),
                render=lambda text: recipe.render_text(text, context),
                canonical=observe_bind_source,
                allow_privileged=privilege.is_allowed(privilege.Level.PRIVILEGED,
                                                      self.settings.max_privilege),
                agent_env={**environment.render_component_env(
                    comp.name, comp.version, token, environment.AgentFacts(
                        thing=self.thing, region=self.settings.aws_region,
                        ipc_socket=container_.IPC_SOCKET_TARGET if mounted else None,
                        root_ca=container_.ROOT_CA_TARGET if mounted else None)),
                    # A dependent of hedgerow.StreamManager (which listens on the host's
                    # loopback: such a container needs the host network).
                    **streams.resolve_client_env(
                        {n: p.configuration for n, p in context.dependencies.items()},
                        token)})
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

    # --- the verbs ---------------------------------------------------------------------

    def prepare(self, comp: documents.ResolvedComponent) -> str | None:
        """PREPARE (worker thread, while the loop awaits it): render (bad recipe:
        permanent) and make the image present — pulled or loaded — before anything old
        is stopped. The failure, if any; an unreachable dockerd defers the component."""
        try:
            config = self._config(comp, "")
            self.runtime.ensure_image(config, self._archive_of(comp))
        except TransientError as exc:
            self.deferred.add(comp.name)
            self.down(exc)
            return None
        except (container_.ContainerSpecError, recipe.RecipeVariableError) as exc:
            return f"{comp.name}: refused: {exc}"
        except (PermanentError, artifacts.ArtifactError) as exc:
            return f"{comp.name}: image failure: {exc}"
        return None

    def is_deferred(self, name: str) -> bool:
        return name in self.deferred

    async def stop(self, rec: records_.Record, *, remove: bool,
                   replacing: bool) -> runtime_.Changes:
        name = rec.name
        if name in self.deferred:
            return
        if not replacing:  # a spec change: apply swaps new for old with less downtime
            try:
                if rec.paused:  # paused by IPC: resumed, so that it can stop cleanly
                    await asyncio.to_thread(self.runtime.pause, name, False)
                    rec.paused = False
                await asyncio.to_thread(
                    self.runtime.remove if remove else self.runtime.stop, name,
                    self.settings.container_stop_s)
            except TransientError as exc:
                self.down(exc)
                return  # nothing changed; a later pass (level-triggered) does it again
            except PermanentError as exc:
                log.warning("%s: %s", name, exc)
        yield runtime_.Change(Event.STOP_REQUESTED)
        if rec.state is State.STOPPING:
            yield runtime_.Change(Event.STOPPED, "stopped")

    async def install(self, job: runtime_.Job) -> runtime_.Changes:
        state = job.rec.state
        if state is not State.NEW and (state, Event.RESET) in lifecycle.TRANSITIONS:
            yield runtime_.Change(Event.RESET, "new desired revision"
                                 if state is State.BROKEN else "reinstalling")
        if job.rec.state is State.NEW:
            yield runtime_.Change(Event.INSTALLED)

    async def start(self, job: runtime_.Job) -> runtime_.Changes:
        comp, rec = job.comp, job.rec
        try:
            config = self._config(comp, rec.token)
            archive = await asyncio.to_thread(self._archive_of, comp)
            result = await asyncio.to_thread(self.runtime.apply, config, archive,
                                             stop_timeout=self.settings.container_stop_s)
        except TransientError as exc:
            self.down(exc)
            return
        except (PermanentError, artifacts.ArtifactError, container_.ContainerSpecError,
                recipe.RecipeVariableError) as exc:
            yield runtime_.Change(Event.START)
            yield runtime_.Change(Event.FAILED, f"start: {exc}")
            return
        yield runtime_.Change(Event.START)
        what = f"container {result.container_id[:12]} ({result.action})"
        if config.healthcheck is None:  # RUNNING = started and (no check or healthy)
            yield runtime_.Change(Event.STARTED, what)
        else:
            yield runtime_.Change(None, f"{what}; waiting for the health check")
        self.logs.follow(comp.name, result.container_id)

    async def recover(self, job: runtime_.Job) -> runtime_.Changes:
        try:  # an unhealthy container still runs: restart means stop first
            if job.rec.paused:
                await asyncio.to_thread(self.runtime.pause, job.comp.name, False)
                job.rec.paused = False
            await asyncio.to_thread(self.runtime.stop, job.comp.name,
                                    self.settings.container_stop_s)
        except TransientError as exc:
            self.down(exc)
            return
        except PermanentError as exc:
            log.warning("%s: %s", job.comp.name, exc)
        yield runtime_.Change(Event.RECOVER, "recovering")

    def forget(self, name: str) -> None:
        process_.remove_work(self.layout, name)

    async def clean_up(self, recs: Iterable[records_.Record], actions: list[plan_.Action],
                       doc: documents.DesiredState | None, *, settled: bool,
                       last_good: Callable[[], documents.DesiredState | None]) -> None:
        """Remove orphans (our labels, no record) and images nothing desired uses."""
        self._gc_due = self._gc_due or settled  # images only the old good state used
        if self.seen is None or self._runtime is None:
            return  # dockerd unknown, or never used by this agent: nothing of ours there
        names = [r.name for r in recs]
        self.logs.forget(names)
        changed = bool(self._orphans) or self._gc_due or any(
            a.runtime == "container" and a.verb in (plan_.Verb.REMOVE, plan_.Verb.INSTALL)
            for a in actions)
        if not changed:
            return
        self._gc_due = False
        keep = last_good()
        images = {c.container.image for c in (doc.components if doc else [])
                  if c.container is not None}
        images |= {c.container.image for c in (keep.components if keep else [])
                   if c.container is not None}
        try:
            if self._orphans:
                await asyncio.to_thread(self.runtime.remove_orphans, names,
                                        self.settings.container_stop_s)
            await asyncio.to_thread(self.runtime.gc_images, images)
        except TransientError as exc:
            self.down(exc)
        except PermanentError as exc:
            log.warning("container clean-up: %s", exc)
