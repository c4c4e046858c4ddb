"""The Docker shell: create, observe and remove the containers of container components.

Decisions are made elsewhere: `hedgerow.core.container` renders a `ContainerConfig` (the
exact docker create arguments and a spec hash) and maps observations to component
states; the agent loop's plan decides what to apply, stop or remove. This module only
does what it is told, idempotently, and owns nothing it did not label:

- every container carries `hedgerow.dev/{thing,component,version,spec-hash}` labels;
  observation lists by the thing label, so containers we did not create are invisible
  to it and never touched;
- `apply` leaves a container whose spec hash matches alone, and ensures the new image
  *before* it stops the old container (no downtime for a pull or a load);
- images are recorded in `<state_dir>/images.json` when we pull or load them, and only
  those are ever garbage-collected;
- every docker-py call runs inside `dockererrors.translated`, so callers see only
  PermanentError or TransientError.

Environment values are never logged: they may hold secrets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import random
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import docker
import docker.errors
from docker.models.containers import Container

from hedgerow import files
from hedgerow.agent import logsink
from hedgerow.agent.dockererrors import (
    PermanentError,
    TransientError,
    is_not_found,
    translate,
    translated,
)
from hedgerow.core import backoff
from hedgerow.core import container as container_
from hedgerow.core.container import ContainerConfig, ObservedContainer

log = logging.getLogger(__name__)

_ZERO_TIME = "0001-01-01T00:00:00Z"
_IMAGES_FILE = "images.json"
_STREAM_TIMEOUT = 3600  # log and event streams: long-lived, on a client of their own


class ClientFactory(Protocol):
    """How the runtime gets a client; `docker.from_env` fits. Called once per timeout."""

    def __call__(self, *, timeout: int) -> docker.DockerClient: ...


ApplyAction = Literal["unchanged", "started", "created", "replaced"]


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    container_id: str
    action: ApplyAction


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter on its upper half."""

    attempts: int = 4
    base_seconds: float = 1.0
    cap_seconds: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        return backoff.resolve_delay(attempt, self.base_seconds, self.cap_seconds, rng)


class ContainerRuntime:
    """The container components of one thing, on the local Docker daemon."""

    def __init__(
        self,
        client_factory: ClientFactory = docker.from_env,
        *,
        thing: str,
        state_dir: Path | None = None,
        api_timeout: int = 20,
        image_timeout: int = 600,
        pull_backoff: Backoff = Backoff(),  # frozen, so one shared default is safe
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.thing = thing
        self._client_factory = client_factory
        self._state_dir = state_dir
        # Two budgets: ordinary calls fail fast so a dead daemon never stalls the loop;
        # pulls and loads of big images on slow devices legitimately take minutes.
        self._api_timeout = api_timeout
        self._image_timeout = image_timeout
        self._pull_backoff = pull_backoff
        self._sleep = sleep
        self._rng = rng
        self._clients: dict[int, docker.DockerClient] = {}
        self._lock = threading.Lock()
        self._owned_images: dict[str, str] | None = None  # ref → image id, loaded lazily

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # --- observation -----------------------------------------------------------------

    def observe(self) -> list[ObservedContainer]:
        """Every container labelled for this thing, sorted by name."""
        return sorted((_observed(c) for c in self._list()), key=lambda o: o.name)

    # --- images ----------------------------------------------------------------------

    def ensure_image(self, config: ContainerConfig, archive_path: Path | None = None) -> str:
        """Make `config.image` present locally; returns "present", "loaded" or "pulled".

        A component with an image archive gets its image only from that archive
        (verified by sha256 before Docker sees a byte); others are pulled, retrying
        transient failures with capped, jittered backoff.
        """
        client = self._client(self._api_timeout)
        with translated(f"inspect image {config.image}"):
            if _image_exists(client, config.image):
                return "present"
        if config.image_archive_sha256 is not None:
            if archive_path is None:
                raise PermanentError(
                    f"{config.component}: image {config.image} is not present and its "
                    "image archive was not provided")
            self._load(config, archive_path)
            return "loaded"
        self._pull(config)
        return "pulled"

    def gc_images(self, referenced: set[str]) -> list[str]:
        """Remove images we pulled or loaded that no desired component references.

        A reference a container was created from (ours or not) is kept, and Docker
        refuses to remove an image's last tag while any container uses it: that is the
        answer we want. A container using the same image through another tag does not
        keep our tag. An image someone else re-tagged is forgotten, not removed.
        """
        wanted = {container_.render_image_ref(r) for r in referenced}
        client = self._client(self._api_timeout)
        with translated("list containers"):
            created_from = [str(c.attrs.get("Image", "")) for c in
                            client.containers.list(all=True, sparse=True)]
        removed: list[str] = []
        for ref, image_id in sorted(self._images().items()):
            if container_.render_image_ref(ref) in wanted:
                continue
            try:
                with translated(f"inspect image {ref}"):
                    current = client.images.get(ref).id
            except PermanentError:
                self._forget_image(ref)  # already gone
                continue
            if current != image_id:
                self._forget_image(ref)
                continue
            if container_.is_image_in_use(ref, created_from):
                continue
            try:
                with translated(f"remove image {ref}"):
                    client.images.remove(ref)
            except PermanentError as exc:
                log.info("keeping image %s: %s", ref, exc)
                continue
            self._forget_image(ref)
            removed.append(ref)
            log.info("removed unused image %s", ref)
        return removed

    # --- containers ------------------------------------------------------------------

    def apply(
        self,
        config: ContainerConfig,
        archive_path: Path | None = None,
        *,
        stop_timeout: int = 10,
    ) -> ApplyResult:
        """Make the component's container run with exactly `config`.

        Same spec hash and running: nothing happens. Same spec hash but stopped: it is
        started again in place (the planner decides *whether* to restart; this says how).
        Otherwise the new container is created — pulling or loading its image first if
        Docker lacks it — under a temporary name while the old one still runs (so a
        missing image or an invalid spec never takes the old one down), then the old one
        is stopped and removed and the new one renamed and started. Leftovers of an
        apply interrupted by a crash are removed on the way.
        """
        if config.thing != self.thing:
            raise PermanentError(f"{config.component}: config is for thing {config.thing}")
        client = self._client(self._api_timeout)
        mine = self._list(component=config.component)
        current = next((c for c in mine if _name(c) == config.name), None)
        others = [c for c in mine if c is not current]

        if current is not None and _labels(current).get(container_.LABEL_SPEC_HASH) \
                == config.spec_hash:
            for leftover in others:
                self._remove_container(leftover, stop_timeout)
            if _state(current).get("Status") == "running":
                return ApplyResult(current.id or "", "unchanged")
            with translated(f"start {config.name}"):
                current.start()
            log.info("%s: started existing container %s", config.component, config.name)
            return ApplyResult(current.id or "", "started")

        if current is None and not others:
            created = self._create(client, config, config.name, archive_path)
            with translated(f"start {config.name}"):
                created.start()
            log.info("%s: created container %s (version %s, spec %s)", config.component,
                     config.name, config.version, config.spec_hash)
            return ApplyResult(created.id or "", "created")

        temporary = f"{config.name}.next"
        for leftover in [c for c in others if _name(c) == temporary]:
            self._remove_container(leftover, stop_timeout)
        created = self._create(client, config, temporary, archive_path)
        for old in [c for c in mine if _name(c) != temporary]:
            self._remove_container(old, stop_timeout)
        with translated(f"rename {temporary}"):
            created.rename(config.name)
        with translated(f"start {config.name}"):
            created.start()
        log.info("%s: replaced container %s (version %s, spec %s)", config.component,
                 config.name, config.version, config.spec_hash)
        return ApplyResult(created.id or "", "replaced")

    def stop(self, component: str, timeout: int = 10) -> bool:
        """Stop the component's containers (SIGTERM, then SIGKILL after `timeout`)."""
        found = self._list(component=component)
        for container in found:
            with translated(f"stop {_name(container)}"), _unless_gone():
                container.stop(timeout=timeout)
        if found:
            log.info("%s: stopped", component)
        return bool(found)

    def pause(self, component: str, paused: bool) -> bool:
        """Docker's pause (the cgroup freezer) or unpause of the component's containers;
        True when there was one. Already (un)paused is fine."""
        found = self._list(component=component)
        for container in found:
            container.reload()
            if (container.status == "paused") == paused:
                continue
            with translated(f"{'pause' if paused else 'unpause'} {_name(container)}"), \
                    _unless_gone():
                container.pause() if paused else container.unpause()
        return bool(found)

    def remove(self, component: str, timeout: int = 10) -> bool:
        """Stop and remove the component's containers; True when there was one."""
        found = self._list(component=component)
        for container in found:
            self._remove_container(container, timeout)
        if found:
            log.info("%s: removed", component)
        return bool(found)

    def remove_orphans(self, desired: Iterable[str], timeout: int = 10) -> list[str]:
        """Remove our containers whose component no desired state names.

        Only containers labelled for this thing are considered; unlabelled containers,
        and those of other things on the same daemon, are never touched.
        """
        keep = set(desired)
        removed: list[str] = []
        for container in self._list():
            component = _labels(container).get(container_.LABEL_COMPONENT, "")
            if component in keep:
                continue
            self._remove_container(container, timeout)
            removed.append(component)
            log.info("%s: removed orphaned container %s", component, _name(container))
        return sorted(set(removed))

    def logs(
        self,
        component: str,
        since: datetime.datetime | float | None = None,
        follow: bool = False,
        timestamps: bool = True,
    ) -> Iterator[str]:
        """The component's output (stdout and stderr interleaved), one line at a time."""
        found = self._list(component=component)
        if not found:
            raise PermanentError(f"{component}: no container")
        container = max(found, key=lambda c: _state(c).get("StartedAt", ""))
        with translated(f"logs of {_name(container)}"):
            chunks = container.logs(stream=True, follow=follow, since=since,
                                    timestamps=timestamps)
        return _lines(chunks, f"logs of {_name(container)}")

    def follow_logs(self, container_id: str, since: int | None = None) -> Iterator[str]:
        """One container's output with Docker's timestamps, following until it stops.

        Uses a client of its own: a long-lived stream must not hold a connection the
        loop's ordinary calls need.
        """
        client = self._client(_STREAM_TIMEOUT)
        with translated(f"logs of {container_id[:12]}"):
            chunks = client.api.logs(container_id, stream=True, follow=True,
                                     timestamps=True, since=since)
        return _lines(chunks, f"logs of {container_id[:12]}")

    def watch_events(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Call `wake` on every event of our containers (die, health, oom, destroy ...).

        Runs in a thread until `stopping` is set; reconnects with backoff while dockerd
        is away (and wakes once on every reconnect: events may have been missed).
        """
        failures = 0
        while not stopping.is_set():
            try:
                client = self._client(_STREAM_TIMEOUT)
                with translated("events"):
                    stream = client.api.events(decode=True, filters={
                        "type": "container",
                        "label": [f"{container_.LABEL_THING}={self.thing}"]})
                failures = 0
                wake()
                try:
                    for _event in stream:
                        if stopping.is_set():
                            break
                        wake()
                finally:
                    stream.close()
            except Exception as exc:  # transport errors of a stream
                log.debug("docker events: %s", exc)
                self._drop_client(_STREAM_TIMEOUT)
            failures += 1
            stopping.wait(backoff.resolve_delay(failures, 0.5, 30.0, random.random))

    def reset(self) -> None:
        """Forget pooled connections (after dockerd was away, start afresh)."""
        self.close()

    # --- internals -------------------------------------------------------------------

    def _drop_client(self, timeout: int) -> None:
        with self._lock:
            client = self._clients.pop(timeout, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _client(self, timeout: int) -> docker.DockerClient:
        with self._lock:
            client = self._clients.get(timeout)
        if client is not None:
            return client
        # docker.from_env asks the daemon for its API version, so creating a client is
        # itself a call that fails while dockerd is down; it is retried on the next use.
        with translated("connect to dockerd"):
            client = self._client_factory(timeout=timeout)
        with self._lock:
            return self._clients.setdefault(timeout, client)

    def _list(self, component: str | None = None) -> list[Container]:
        filters = [f"{container_.LABEL_THING}={self.thing}"]
        if component is not None:
            filters.append(f"{container_.LABEL_COMPONENT}={component}")
        client = self._client(self._api_timeout)
        with translated("list containers"):
            found = client.containers.list(all=True, filters={"label": filters},
                                           ignore_removed=True)
        # Labels alone are not proof: containers inherit their image's labels, and
        # `docker commit` of one of ours makes an image that carries them all. What we
        # create also has our name (or its temporary `.next` form).
        prefix = container_.render_container_name(self.thing, "")
        return [c for c in found if _labels(c).get(container_.LABEL_THING) == self.thing
                and _name(c).startswith(prefix)]

    def _create(self, client: docker.DockerClient, config: ContainerConfig,
                name: str, archive_path: Path | None) -> Container:
        """Create, ensuring the image first if Docker does not have it.

        Optimistic: the image is nearly always present, and asking first would cost every
        apply a round trip. Either way the image exists before anything old is stopped.
        """
        kwargs = config.create_kwargs()
        kwargs["name"] = name
        with translated(f"create {name}"):
            try:
                return client.containers.create(**kwargs)
            except docker.errors.ImageNotFound:
                pass
        self.ensure_image(config, archive_path)
        with translated(f"create {name}"):
            return client.containers.create(**kwargs)

    def _remove_container(self, container: Container, timeout: int) -> None:
        name = _name(container)
        # Stop first so the workload gets SIGTERM and its shutdown grace, not SIGKILL.
        with translated(f"stop {name}"), _unless_gone():
            container.stop(timeout=timeout)
        with translated(f"remove {name}"), _unless_gone():
            container.remove(v=True, force=True)

    def _pull(self, config: ContainerConfig) -> None:
        client = self._client(self._image_timeout)
        backoff = self._pull_backoff
        attempt = 0
        while True:
            try:
                with translated(f"pull {config.image}"):
                    image = client.images.pull(config.image)
            except TransientError as exc:
                attempt += 1
                if attempt >= backoff.attempts:
                    raise
                delay = backoff.delay(attempt - 1, self._rng)
                log.info("pull of %s failed (%s); retrying in %.1fs", config.image, exc, delay)
                self._sleep(delay)
                continue
            break
        self._remember_image(config.image, image.id or "")
        log.info("%s: pulled %s", config.component, config.image)

    def _load(self, config: ContainerConfig, archive_path: Path) -> None:
        expected = config.image_archive_sha256
        try:
            digest = _sha256_of(archive_path)
        except OSError as exc:
            raise TransientError(f"read image archive {archive_path}: {exc}") from exc
        if digest != expected:
            raise PermanentError(
                f"{config.component}: image archive {archive_path.name} has sha256 "
                f"{digest}, the recipe says {expected}; not loaded")
        tags = _archive_tags(archive_path)
        wanted = container_.render_image_ref(config.image)
        client = self._client(self._image_timeout)
        with translated("inspect images"):
            absent = [t for t in tags if not _image_exists(client, t)]
        with translated(f"load {archive_path.name}"), archive_path.open("rb") as stream:
            loaded = client.images.load(stream)
        if wanted not in tags:
            # An archive of a single untagged (or differently tagged) image serves any
            # reference: one archive can back several component versions.
            if len(loaded) != 1:
                raise PermanentError(
                    f"{config.component}: image archive {archive_path.name} holds "
                    f"{sorted(tags)}, not {wanted}")
            repository, _, tag = wanted.rpartition(":")
            with translated(f"tag {wanted}"):
                loaded[0].tag(repository, tag)
            absent.append(wanted)
        with translated(f"inspect image {wanted}"):
            image_id = client.images.get(wanted).id or ""
            for ref in absent:
                self._remember_image(ref, client.images.get(ref).id or "")
        log.info("%s: loaded %s from %s (%s)", config.component, wanted, archive_path.name,
                 image_id)

    # The record of owned images: small, rewritten atomically on every change.

    def _images(self) -> dict[str, str]:
        with self._lock:
            if self._owned_images is None:
                self._owned_images = self._read_images()
            return dict(self._owned_images)

    def _remember_image(self, ref: str, image_id: str) -> None:
        self._images()
        with self._lock:
            assert self._owned_images is not None
            self._owned_images[container_.render_image_ref(ref)] = image_id
            self._write_images(self._owned_images)

    def _forget_image(self, ref: str) -> None:
        self._images()
        with self._lock:
            assert self._owned_images is not None
            self._owned_images.pop(ref, None)
            self._write_images(self._owned_images)

    def _read_images(self) -> dict[str, str]:
        if self._state_dir is None:
            return {}
        path = self._state_dir / _IMAGES_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Forgetting what we own only means we never GC those images: the safe side.
            log.warning("ignoring unreadable %s: %s", path, exc)
            return {}
        images = data.get("images", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in images.items()}

    def _write_images(self, images: dict[str, str]) -> None:
        if self._state_dir is None:
            return
        self._state_dir.mkdir(parents=True, exist_ok=True)
        files.write_atomic(self._state_dir / _IMAGES_FILE,
                           json.dumps({"images": images}, sort_keys=True, indent=1).encode())


# --- helpers ---------------------------------------------------------------------------

@contextlib.contextmanager
def _unless_gone() -> Iterator[None]:
    """Stopping or removing something already gone is success (idempotence)."""
    try:
        yield
    except docker.errors.APIError as exc:
        if is_not_found(exc):
            return
        # 304 "not modified": stopping a container that is not running.
        if exc.status_code == 304:
            return
        raise


def _image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.NotFound:
        return False
    return True


def _labels(c: Container) -> dict[str, str]:
    return cast(dict[str, str], (c.attrs.get("Config") or {}).get("Labels") or {})


def _state(c: Container) -> dict[str, Any]:
    return cast(dict[str, Any], c.attrs.get("State") or {})


def _name(c: Container) -> str:
    return str(c.attrs.get("Name", "")).lstrip("/")


def _observed(c: Container) -> ObservedContainer:
    labels = _labels(c)
    state = _state(c)
    status = str(state.get("Status", "dead"))
    health = str((state.get("Health") or {}).get("Status") or "none")
    return ObservedContainer(
        name=_name(c),
        container_id=c.id or "",
        component=labels.get(container_.LABEL_COMPONENT, ""),
        version=labels.get(container_.LABEL_VERSION, ""),
        spec_hash=labels.get(container_.LABEL_SPEC_HASH, ""),
        image=str((c.attrs.get("Config") or {}).get("Image", "")),
        status=cast(container_.ContainerStatus, status),
        exit_code=int(state.get("ExitCode", 0)) if status in ("exited", "dead") else None,
        health=cast(container_.HealthStatus, health),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        oom_killed=bool(state.get("OOMKilled", False)),
        error=str(state.get("Error") or ""),
    )


def _parse_time(value: object) -> datetime.datetime | None:
    """Docker's RFC 3339 times carry nanoseconds; Python keeps microseconds."""
    if not isinstance(value, str) or not value or value == _ZERO_TIME:
        return None
    text = value.rstrip("Z")
    if "." in text:
        whole, fraction = text.split(".", 1)
        text = f"{whole}.{fraction[:6].ljust(6, '0')}"
    try:
        return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def _lines(chunks: Iterable[bytes], action: str) -> Iterator[str]:
    """Lines of a container's output, split at MAX_LOG_LINE_BYTES like process output:
    a container that never writes a newline costs the agent one line of memory."""
    splitter = logsink.Splitter()
    try:
        for chunk in chunks:
            for line in splitter.feed(chunk):
                yield line.decode(errors="replace")
    except Exception as exc:  # the stream breaks when dockerd goes away mid-follow
        raise translate(exc, action) from exc
    for line in splitter.end():
        yield line.decode(errors="replace")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _archive_tags(path: Path) -> list[str]:
    """The RepoTags a `docker save` archive declares (read before Docker sees it)."""
    try:
        with tarfile.open(path) as archive:
            member = archive.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest = json.load(member)
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise PermanentError(f"{path.name} is not a docker save archive: {exc}") from exc
    if not isinstance(manifest, list):
        raise PermanentError(f"{path.name}: manifest.json is not a list")
    return [container_.render_image_ref(str(tag)) for entry in manifest
            if isinstance(entry, dict) for tag in entry.get("RepoTags") or []]
