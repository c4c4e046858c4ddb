"""Privilege levels: what a component may do to the device it runs on. Pure.

Modelled on Kubernetes Pod Security Standards. A namespace's label
``hedgerow.dev/enforce`` sets the level its Deployments get (``restricted`` when absent or
unknown: privilege must be granted, never assumed); the agent has a ceiling of its own (a
device setting), so a controller that was fooled still cannot make a device run what its
operator did not allow.

- ``privileged``: anything, including what makes a component root on the device:
  ``requiresPrivilege`` steps, ``runWith.posixUser`` root (or uid/gid 0), privileged
  containers, and host paths bound into a container outside the component's own folders
  (its work folder itself; read-only, its artifact folders).
- ``baseline``: none of that. A container may publish ports on any host address.
- ``restricted`` (the default): baseline, and container ports are published on the
  device's loopback only (nothing is exposed to the device's networks).

The checks read the recipe as resolved, before recipe variables are filled in: a bind
source built from ``{configuration:…}`` is configuration, which another deployment may
set, so only sources that *start* with the component's own folder variables count as its
own folders. A user *name* that maps to uid 0 on a device (``toor``) cannot be seen here;
the agent refuses uid/gid 0 when it switches users.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Mapping
from typing import Final

from hedgerow.core import base, component, deployment

LABEL: Final = "hedgerow.dev/enforce"


class Level(base.StrEnum):
    RESTRICTED = "restricted"
    BASELINE = "baseline"
    PRIVILEGED = "privileged"


DEFAULT: Final = Level.RESTRICTED
_RANK: Final = {Level.RESTRICTED: 0, Level.BASELINE: 1, Level.PRIVILEGED: 2}

# Volume sources a component may bind at any level: its own work folder *itself* (what is
# inside is the component's to change: a subfolder swapped for a link between two starts
# would be followed by Docker, so the agent refuses it too), and read-only its artifact
# folders (root's, see docs/security.md) or a path below them.
_WORK: Final = "{work:path}"
_ARTIFACTS: Final = ("{artifacts:path}", "{artifacts:decompressedPath}")
_ROOT_NAMES: Final = frozenset({"root", "0"})
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_PLACEHOLDER: Final = re.compile(r"(?<!\$)\{[A-Za-z][A-Za-z0-9._-]*:[^{}\s,]*\}")


@dataclasses.dataclass(frozen=True)
class Violation:
    """One use of a privilege the level does not grant; ``field`` is a path in the
    resolved component (camelCase, as the user wrote it)."""

    field: str
    needs: Level
    message: str


def resolve_level(labels: Mapping[str, str] | None) -> Level:
    """The level a namespace's labels grant (``restricted`` when unset or unknown)."""
    value = (labels or {}).get(LABEL, "")
    try:
        return Level(value)
    except ValueError:
        return DEFAULT


def is_allowed(needs: Level, granted: Level) -> bool:
    return _RANK[needs] <= _RANK[granted]


def resolve_needs(
    lifecycle: component.Lifecycle | None,
    container: component.Container | None,
    run_with: deployment.RunWith | None,
) -> list[Violation]:
    """Every privileged feature a resolved component uses, with the level it needs
    (features every level grants are not listed)."""
    found: list[Violation] = []
    if run_with is not None and run_with.posix_user is not None:
        user, _, group = run_with.posix_user.partition(":")
        if user in _ROOT_NAMES or group in _ROOT_NAMES:
            found.append(Violation("runWith.posixUser", Level.PRIVILEGED,
                                   f"runs as {run_with.posix_user!r} (root)"))
    if lifecycle is not None:
        for step in ("install", "startup", "run", "shutdown", "recover"):
            s = getattr(lifecycle, step)
            if s is not None and s.requires_privilege:
                found.append(Violation(f"lifecycle.{step}.requiresPrivilege", Level.PRIVILEGED,
                                       f"the {step} step runs as root"))
    if container is not None:
        found.extend(_container_needs(container))
    return found


def resolve_violations(
    lifecycle: component.Lifecycle | None,
    container: component.Container | None,
    run_with: deployment.RunWith | None,
    granted: Level,
) -> list[Violation]:
    """The features of a resolved component that ``granted`` does not allow."""
    return [v for v in resolve_needs(lifecycle, container, run_with)
            if not is_allowed(v.needs, granted)]


def render_violation(component_name: str, v: Violation, granted: Level,
                     granted_by: str = f"label {LABEL}") -> str:
    """One line for a condition or a log: what, where, and what level would allow it
    (`granted_by` says who sets the level: the namespace label, or the device)."""
    return (f"{component_name}: {v.field}: {v.message}; needs privilege level "
            f"{v.needs.value!r}, granted {granted.value!r} ({granted_by})")


def _container_needs(c: component.Container) -> list[Violation]:
    found: list[Violation] = []
    if c.requires_privilege:
        found.append(Violation("container.requiresPrivilege", Level.PRIVILEGED,
                               "runs a privileged container"))
    for i, v in enumerate(c.volumes):
        if not _is_own_folder(v.source, v.read_only) and _is_host_path(v.source):
            found.append(Violation(
                f"container.volumes[{i}].source", Level.PRIVILEGED,
                f"binds host path {v.source!r}; without privilege only {{work:path}} "
                "itself (and, read-only, {artifacts:path} / {artifacts:decompressedPath} "
                "or a path below them) may be bound"))
    for i, p in enumerate(c.ports):
        if p.host_ip not in _LOOPBACK:
            found.append(Violation(
                f"container.ports[{i}].hostIp", Level.BASELINE,
                f"publishes port {p.container_port} on {p.host_ip!r}, beyond the device's "
                "loopback"))
    return found


def _is_host_path(source: str) -> bool:
    """Anything but a plain Docker volume name is (or may render to) a host path."""
    return source.startswith("/") or "/" in source or bool(_PLACEHOLDER.search(source))


def _is_own_folder(source: str, read_only: bool) -> bool:
    if source.rstrip("/") == _WORK:
        return True
    if not read_only:
        return False
    for prefix in _ARTIFACTS:
        if source == prefix:
            return True
        if source.startswith(prefix + "/"):
            rest = source[len(prefix) + 1:]
            parts = posixpath.normpath(rest).split("/")
            return ".." not in parts and not _PLACEHOLDER.search(rest)
    return False
