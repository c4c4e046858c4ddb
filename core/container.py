"""Container components, decided purely: recipe → docker create arguments → state.

`render_container` turns a resolved container component into a `ContainerConfig`: the
exact arguments the agent hands to `docker create`, with recipe variables already applied,
ownership labels and a spec hash. The agent never compares container fields with the
recipe; it compares the `hedgerow.dev/spec-hash` label with `ContainerConfig.spec_hash`
(principle 5), so anything that changes the rendered config — and only that — replaces
the container.

`render_component_state` maps what Docker reports about a container to the component
state machine that process components use, so the plan treats both runtimes alike;
`resolve_container_event` turns that into the lifecycle event (if any) the agent applies
to a component in a given state — the only place that reads Docker's view as events.

Nothing here talks to Docker; the shell is `hedgerow.agent.containers`.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

from hedgerow.core import base, component, documents, lifecycle

LABEL_PREFIX: Final = "hedgerow.dev/"
LABEL_THING: Final = "hedgerow.dev/thing"
LABEL_COMPONENT: Final = "hedgerow.dev/component"
LABEL_VERSION: Final = "hedgerow.dev/version"
LABEL_SPEC_HASH: Final = "hedgerow.dev/spec-hash"

# Where the agent's IPC socket appears inside a container that asks for it. A fixed path,
# so images can hard-code it; the variable tells components that read the environment.
IPC_SOCKET_DIR: Final = "/run/hedgerow"
IPC_SOCKET_TARGET: Final = "/run/hedgerow/ipc.sock"
ROOT_CA_TARGET: Final = "/run/hedgerow/ca.pem"  # the agent's copy, beside the socket
IPC_SOCKET_ENV: Final = "HEDGEROW_IPC_SOCKET"
THING_ENV: Final = "HEDGEROW_THING_NAME"

# Docker keeps container output until the container is removed; on a device with a small
# disk an unbounded json log is an outage waiting to happen. json-file also keeps
# `docker logs` (and so `hedgerow logs get`) working whatever the daemon's default is.
LOG_MAX_SIZE: Final = "10m"
LOG_MAX_FILES: Final = "3"

_NS_PER_SECOND: Final = 1_000_000_000
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_THING = re.compile(base.THING_NAME)
_ENV_NAME = re.compile(component.ENV_NAME)
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS: Final = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
_HEALTH_TEST_KINDS: Final = ("CMD", "CMD-SHELL", "NONE")


class ContainerSpecError(ValueError):
    """The recipe cannot become a container (a permanent error: fix the recipe)."""


@dataclasses.dataclass(frozen=True)
class PortBinding:
    container_port: int
    protocol: Literal["tcp", "udp"]
    host_ip: str
    host_port: int


@dataclasses.dataclass(frozen=True)
class Bind:
    """A bind mount (absolute source) or a named volume (source is the volume name)."""

    source: str
    target: str
    read_only: bool


@dataclasses.dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_ns: int
    timeout_ns: int
    retries: int
    start_period_ns: int


@dataclasses.dataclass(frozen=True)
class ContainerConfig:
    """Exactly what the agent passes to `docker create` for one component.

    `environment` is left out of repr: it may hold secrets, and configs end up in logs.
    """

    thing: str
    component: str
    version: str
    name: str
    image: str
    image_archive_sha256: str | None
    entrypoint: tuple[str, ...] | None
    command: tuple[str, ...] | None
    environment: tuple[tuple[str, str], ...] = dataclasses.field(repr=False)
    ports: tuple[PortBinding, ...]
    binds: tuple[Bind, ...]
    user: str | None
    read_only: bool
    privileged: bool
    mem_limit: int | None
    nano_cpus: int | None
    healthcheck: Healthcheck | None
    restart_policy: str
    spec_hash: str

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_THING: self.thing,
            LABEL_COMPONENT: self.component,
            LABEL_VERSION: self.version,
            LABEL_SPEC_HASH: self.spec_hash,
        }

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for docker-py's `containers.create` (plain data only)."""
        return {**_unhashed_kwargs(self), "labels": self.labels}


def render_container(
    resolved: documents.ResolvedComponent,
    *,
    thing: str,
    root: str,
    ipc_socket: str,
    render: Callable[[str], str],
    agent_env: Mapping[str, str] | None = None,
    canonical: Callable[[str], str] = posixpath.normpath,
    allow_privileged: bool = False,
) -> ContainerConfig:
    """The docker create arguments for a container component.

    `render` applies recipe variables ({configuration:/x}, {iot:thingName}, ...) and is
    applied to the entrypoint, args, environment values, health check and volume
    sources. `agent_env` is what the agent gives every component (e.g. an IPC auth token);
    it is part of the spec hash, so it must be stable across agent restarts or adopted
    containers would be replaced. `canonical` turns a rendered absolute bind source into
    the path the kernel would mount (the agent resolves links it can trust and raises
    ContainerSpecError for the others); the check and Docker both see that path, never
    the string the recipe wrote. `allow_privileged` is the device's ceiling: without it a
    privileged container is refused. Raises ContainerSpecError for a recipe that cannot
    run.
    """
    spec = resolved.container
    if spec is None:
        raise ContainerSpecError(f"{resolved.name}: not a container component")
    if not _THING.match(thing):
        raise ContainerSpecError(f"{thing!r} is not a valid thing name")
    if not posixpath.isabs(root) or not posixpath.isabs(ipc_socket):
        raise ContainerSpecError("the agent root and IPC socket must be absolute paths")
    if posixpath.basename(ipc_socket) != posixpath.basename(IPC_SOCKET_TARGET):
        raise ContainerSpecError(f"the IPC socket must be named "
                                 f"{posixpath.basename(IPC_SOCKET_TARGET)}: {ipc_socket}")
    if spec.image_archive is not None and "@" in spec.image:
        # `docker save` does not keep repository digests, so a loaded archive can never
        # satisfy a digest reference: it would be loaded again on every pass.
        raise ContainerSpecError(
            f"{resolved.name}: an image archive needs a tag reference, not a digest "
            f"({spec.image})")
    privileged = spec.requires_privilege
    if privileged and not allow_privileged:
        raise ContainerSpecError(
            f"{resolved.name}: container.requiresPrivilege: this device does not allow "
            "privileged components (hedgerow agent run --max-privilege privileged)")
    limits = resolved.run_with.system_resource_limits if resolved.run_with else None

    environment = _render_environment(resolved.name, spec, thing, render, agent_env or {})
    binds = _render_binds(resolved.name, spec, root=root, ipc_socket=ipc_socket,
                          render=render, canonical=canonical, privileged=privileged)
    config = ContainerConfig(
        thing=thing,
        component=resolved.name,
        version=resolved.version,
        name=render_container_name(thing, resolved.name),
        image=spec.image,
        image_archive_sha256=spec.image_archive.sha256 if spec.image_archive else None,
        entrypoint=None if spec.command is None else tuple(render(c) for c in spec.command),
        command=None if spec.args is None else tuple(render(a) for a in spec.args),
        environment=environment,
        ports=_render_ports(resolved.name, spec.ports),
        binds=binds,
        user=spec.user,
        read_only=spec.read_only_root_filesystem,
        privileged=privileged,
        mem_limit=(None if limits is None or limits.memory is None
                   else render_quantity(limits.memory)),
        nano_cpus=(None if limits is None or limits.cpus is None
                   else round(limits.cpus * _NS_PER_SECOND)),
        healthcheck=_render_healthcheck(spec.health_check, render),
        restart_policy="no",  # the agent's state machine decides restarts, not Docker
        spec_hash="",
    )
    hashed = {**_unhashed_kwargs(config), "labels": {
        LABEL_THING: thing, LABEL_COMPONENT: resolved.name, LABEL_VERSION: resolved.version,
    }, "imageArchiveSha256": config.image_archive_sha256}
    return dataclasses.replace(config, spec_hash=documents.content_hash(hashed))


def render_container_name(thing: str, component_name: str) -> str:
    """`hedgerow-<thing>_<component>`: deterministic, a valid Docker name, and unique.

    Thing names never contain '_', so the first '_' separates the two and no pair of
    (thing, component) maps to the name of another — several agents may share a daemon.
    """
    return f"hedgerow-{thing}_{component_name}"


def render_quantity(quantity: str) -> int:
    """Bytes in a Kubernetes-style quantity: 64Mi, 0.5Gi, 100M, 1048576."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ContainerSpecError(f"{quantity!r} is not a quantity such as 64Mi")
    value = decimal.Decimal(match["number"]) * _UNITS[match["unit"]]
    return int(value)


def render_image_ref(image: str) -> str:
    """The reference as `docker save` and `docker images` name it: tag added, docker.io
    prefixes removed — so a recipe's image can be matched against an archive's RepoTags.
    """
    ref = image
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref


def is_image_in_use(ref: str, created_from: Iterable[str]) -> bool:
    """Whether a container was created from `ref` (`created_from`: each container's image
    as `docker ps -a` lists it), so untagging it would leave that container unrecreatable.

    A container created from another tag of the same image does not count: untagging
    `ref` leaves it its own tag. One created from the bare image id is Docker's to
    protect: it refuses to remove an image's last tag while any container uses it.
    """
    wanted = render_image_ref(ref)
    return any(render_image_ref(image) == wanted for image in created_from)


def _unhashed_kwargs(config: ContainerConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "image": config.image,
        "name": config.name,
        "detach": True,
        "environment": dict(config.environment),
        "read_only": config.read_only,
        "privileged": config.privileged,
        "restart_policy": {"Name": config.restart_policy},
        "log_config": {"type": "json-file",
                       "config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES}},
    }
    if config.entrypoint is not None:
        kwargs["entrypoint"] = list(config.entrypoint)
    if config.command is not None:
        kwargs["command"] = list(config.command)
    if config.ports:
        ports: dict[str, list[tuple[str, int]]] = {}
        for port in config.ports:
            ports.setdefault(f"{port.container_port}/{port.protocol}", []).append(
                (port.host_ip, port.host_port))
        kwargs["ports"] = ports
    if config.binds:
        kwargs["volumes"] = [f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}"
                             for b in config.binds]
    if config.user is not None:
        kwargs["user"] = config.user
    if config.mem_limit is not None:
        kwargs["mem_limit"] = config.mem_limit
    if config.nano_cpus is not None:
        kwargs["nano_cpus"] = config.nano_cpus
    if config.healthcheck is not None:
        check = config.healthcheck
        kwargs["healthcheck"] = {
            "test": list(check.test), "interval": check.interval_ns,
            "timeout": check.timeout_ns, "retries": check.retries,
            "start_period": check.start_period_ns,
        }
    return kwargs


def _render_environment(
    name: str,
    spec: component.Container,
    thing: str,
    render: Callable[[str], str],
    agent_env: Mapping[str, str],
) -> tuple[tuple[str, str], ...]:
    environment = {key: render(value) for key, value in spec.env.items()}
    # The agent's variables win: a recipe must not be able to pose as another thing or
    # point a component at a different socket.
    environment.update(agent_env)
    environment[THING_ENV] = thing
    if spec.mount_ipc_socket:
        environment[IPC_SOCKET_ENV] = IPC_SOCKET_TARGET
    bad = sorted(key for key in environment if not _ENV_NAME.match(key))
    if bad:
        raise ContainerSpecError(f"{name}: invalid environment variable names: {bad}")
    return tuple(sorted(environment.items()))


def _render_ports(name: str, ports: list[component.Port]) -> tuple[PortBinding, ...]:
    bindings = tuple(
        PortBinding(
            container_port=p.container_port, protocol=p.protocol, host_ip=p.host_ip,
            # The same number on the host unless told: a component that serves :8080
            # is found at 127.0.0.1:8080 on the device, not on a random port.
            host_port=p.host_port if p.host_port is not None else p.container_port,
        )
        for p in ports
    )
    seen = [(b.host_ip, b.host_port, b.protocol) for b in bindings]
    duplicates = sorted({f"{ip}:{port}/{proto}" for ip, port, proto in seen
                         if seen.count((ip, port, proto)) > 1})
    if duplicates:
        raise ContainerSpecError(f"{name}: host ports bound twice: {duplicates}")
    return bindings


def _render_binds(
    name: str,
    spec: component.Container,
    *,
    root: str,
    ipc_socket: str,
    render: Callable[[str], str],
    canonical: Callable[[str], str],
    privileged: bool,
) -> tuple[Bind, ...]:
    binds: list[Bind] = []
    for i, volume in enumerate(spec.volumes):
        field = f"container.volumes[{i}].source"
        source = render(volume.source)
        target = posixpath.normpath(volume.target)
        if ":" in source or ":" in target:
            raise ContainerSpecError(f"{name}: ':' is not allowed in volume paths: {source}")
        if source.startswith("/"):
            if privileged:
                source = posixpath.normpath(source)
            else:
                # Checked as the kernel will see it: `/proc/self/root/<root>/state` is the
                # agent's state, a link in a folder may point anywhere.
                try:
                    source = canonical(posixpath.normpath(source))
                except ContainerSpecError as exc:
                    raise ContainerSpecError(f"{name}: {field}: {exc}") from None
                refusal = resolve_bind_refusal(name, source, volume.read_only, root=root,
                                               field=field)
                if refusal is not None:
                    raise ContainerSpecError(refusal)
        elif not _VOLUME_NAME.match(source):
            raise ContainerSpecError(
                f"{name}: volume source {source!r} is neither an absolute path nor a "
                "volume name")
        binds.append(Bind(source=source, target=target, read_only=volume.read_only))
    if spec.mount_ipc_socket:
        # The socket's *folder* is bound, not the socket file: a bind of a file pins its
        # inode, so a socket the agent re-creates (every restart) would stay invisible to
        # running containers, and a bind of a socket not yet created makes Docker create a
        # directory in its place. Read-only is enough: connect() is not a write to the
        # mount, and the container cannot plant files beside the socket.
        binds.append(Bind(source=posixpath.dirname(posixpath.normpath(ipc_socket)),
                          target=IPC_SOCKET_DIR, read_only=True))
    targets = [b.target for b in binds]
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if spec.mount_ipc_socket:  # nothing may shadow the socket's folder, or sit inside it
        duplicates += sorted({t for t in targets[:-1] if _is_within(t, IPC_SOCKET_DIR)
                              or _is_within(IPC_SOCKET_DIR, t)})
    if duplicates:
        raise ContainerSpecError(f"{name}: mount targets used twice: {duplicates}")
    return tuple(binds)


# Host paths that give whoever binds them the device: the kernel's interfaces and the
# container runtimes' sockets (a container that can talk to dockerd starts a privileged
# one). Outside the component's own folders everything is refused anyway; these only
# get a clearer reason.
_KERNEL: Final = ("/proc", "/sys", "/dev")
_RUNTIME_SOCKETS: Final = ("/run/docker.sock", "/var/run/docker.sock", "/run/docker",
                           "/run/containerd", "/var/run/containerd")


def resolve_bind_refusal(name: str, source: str, read_only: bool, *, root: str,
                         field: str = "container.volumes") -> str | None:
    """Why an unprivileged container may not bind `source` (canonical), or None.

    A component may bind its own work folder (the folder itself: what is inside is the
    component's to change) and, read-only, its own artifact folders; nothing else of the
    device. The root holds desired state, the agent's records,
    other components' folders and the IPC socket; /proc, /sys and /dev are the kernel;
    the Docker socket is root on the device; any other host path is someone else's.
    """
    root = posixpath.normpath(root)
    work = posixpath.join(root, "work", name)
    own_ro = (posixpath.join(root, "artifacts", name),
              posixpath.join(root, "artifacts-unarchived", name))
    if source == work or (read_only and any(_is_within(source, own) for own in own_ro)):
        return None
    why = "is a host path outside the component's own folders"
    if _is_within(source, work):
        # Docker resolves a source again at every (re)start, and whatever runs in the
        # component may write its work folder (a container's root is the host's root):
        # `data` swapped for a link to / between two starts would be a bind of /.
        why = (f"is inside the work folder, which the component can change (a link put "
               f"in place of it later would be followed at the next start); bind {work} "
               "itself and use the subfolder inside the container")
    elif any(_is_within(source, k) for k in _KERNEL):
        why = "is a kernel interface"
    elif any(_is_within(source, s) for s in _RUNTIME_SOCKETS):
        why = "is the container runtime's socket (root on the device)"
    elif _is_within(source, root) or _is_within(root, source):
        why = f"would expose the agent's root {root}"
    return (f"{name}: {field}: binding {source} {why}; without "
            f"requiresPrivilege only {root}/work/{name} (and, read-only, "
            f"{root}/artifacts/{name}) may be bound")


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _render_healthcheck(
    check: component.HealthCheck | None, render: Callable[[str], str],
) -> Healthcheck | None:
    if check is None:
        return None
    command = tuple(render(part) for part in check.command)
    # A bare argv means exec form; recipes written for Docker may already say how.
    test = command if command[0] in _HEALTH_TEST_KINDS else ("CMD", *command)
    return Healthcheck(
        test=test,
        interval_ns=check.interval_seconds * _NS_PER_SECOND,
        timeout_ns=check.timeout_seconds * _NS_PER_SECOND,
        retries=check.retries,
        start_period_ns=check.start_period_seconds * _NS_PER_SECOND,
    )


# --- observed containers -------------------------------------------------------------

ContainerStatus = Literal["created", "running", "paused", "restarting", "removing",
                          "exited", "dead"]
HealthStatus = Literal["healthy", "unhealthy", "starting", "none"]


@dataclasses.dataclass(frozen=True)
class ObservedContainer:
    """One container with our labels, as Docker reported it in one observation."""

    name: str
    container_id: str
    component: str
    version: str
    spec_hash: str
    image: str
    status: ContainerStatus
    exit_code: int | None
    health: HealthStatus
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    oom_killed: bool = False
    error: str = ""  # Docker's reason when a start failed (e.g. executable not found)

    @property
    def is_running(self) -> bool:
        return self.status == "running"


def render_component_state(observed: ObservedContainer) -> documents.ComponentState:
    """The component state a container is in, by the rules process components follow.

    Running counts as RUNNING only once a health check (if any) passes. A container that
    exited is FINISHED on exit code 0 and ERRORED otherwise; the agent's state table then
    decides about recover, restart and BROKEN.
    """
    state = documents.ComponentState
    if observed.status == "running":
        return {
            "healthy": state.RUNNING,
            "none": state.RUNNING,
            "starting": state.STARTING,
            "unhealthy": state.ERRORED,
        }[observed.health]
    if observed.status == "exited":
        if observed.exit_code == 0 and not observed.oom_killed:
            return state.FINISHED
        return state.ERRORED
    if observed.status == "created":
        # Created but never started, or a start that failed (Docker records why).
        return state.ERRORED if observed.error else state.INSTALLED
    if observed.status == "restarting":
        return state.STARTING
    if observed.status == "removing":
        return state.STOPPING
    # paused and dead: not serving and not going to on its own; recover restarts it.
    return state.ERRORED


def resolve_container_event(state: documents.ComponentState,
                            observed: ObservedContainer | None,
                            ) -> tuple[lifecycle.Event, str] | None:
    """The lifecycle event Docker's view means for a component in `state`, with its
    message; None when nothing happened. Only STARTING and RUNNING components are
    judged by what Docker reports: the others are the agent's own doing (a stop, an
    install), and the container they left is expected to be as it is."""
    active = documents.ComponentState
    if state not in (active.RUNNING, active.STARTING):
        return None
    if observed is None:
        return lifecycle.Event.FAILED, "container disappeared"
    now = render_component_state(observed)
    if now is active.RUNNING and state is active.STARTING:
        return lifecycle.Event.STARTED, "healthy"
    if now is active.FINISHED:
        return lifecycle.Event.EXITED_OK, "exited with 0"
    if now in (active.ERRORED, active.INSTALLED):
        return lifecycle.Event.FAILED, _render_why(observed)
    return None


def _render_why(observed: ObservedContainer) -> str:
    if observed.is_running:
        return "container unhealthy"
    if observed.error:
        return f"container failed to start: {observed.error}"
    if observed.oom_killed:
        return "container killed: out of memory"
    if observed.status == "exited":
        return f"container exited with {observed.exit_code}"
    return f"container {observed.status}"
