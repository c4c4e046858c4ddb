"""plan(desired, observed) -> actions: the pure decision at the heart of the agent loop.

Spec hashes are compared, never fields (a changed hash means "replace"); the same inputs
always give the same list, and once the shell has applied a plan, planning again gives
nothing. The order is the whole dependency story:

1. PREPARE everything about to be installed (artifacts, images). It disturbs nothing, so
   a bad artifact fails the pass while the last good state still runs.
2. STOP / REMOVE, dependents before their dependencies. A component whose HARD
   dependency is stopped is stopped too (and started again in step 3): that is how "a
   HARD dependency's restart restarts its dependents" falls out of ordering alone.
3. INSTALL / START / RECOVER, dependencies before their dependents.

A component whose spec changed only in what its rendered lifecycle does not use (its
configuration, as Greengrass decides it) is not restarted: UPDATE gives its record the
new spec and it keeps running (restart hashes: recipe.render_restart_hash).

Runtimes (processes today, Docker containers later) only ever see these verbs.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Mapping

from hedgerow.core import base, documents
from hedgerow.core.documents import ComponentState as State

__all__ = ["Action", "Desired", "Observed", "Verb", "Want", "plan", "resolve_desired"]


class Verb(base.StrEnum):
    PREPARE = "prepare"   # fetch/verify artifacts (or pull images): no disruption
    STOP = "stop"         # shutdown step; the component stays installed
    REMOVE = "remove"     # shutdown step, then delete its work folder and records
    INSTALL = "install"   # (re)create the record for this spec and run the install step
    START = "start"       # startup or run step
    RECOVER = "recover"   # recover step, then install and start again
    UPDATE = "update"     # the record takes the new spec; nothing stops (config only)


@dataclasses.dataclass(frozen=True)
class Want:
    """One desired component, reduced to what planning needs."""

    name: str
    spec_hash: str
    hard: tuple[str, ...] = ()   # HARD dependencies (restart with them)
    soft: tuple[str, ...] = ()   # SOFT dependencies (ordering only)
    runtime: str = "process"
    # The spec without configuration, lifecycle rendered ('' unknown: compare spec_hash).
    restart_hash: str = ""


@dataclasses.dataclass(frozen=True)
class Desired:
    revision: str
    wants: tuple[Want, ...]


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the agent's records and the runtime say about one component."""

    name: str
    spec_hash: str
    state: State
    dependencies: tuple[str, ...] = ()
    retry_due: bool = False            # ERRORED and its backoff has elapsed
    hold_revision: str | None = None   # BROKEN or operator-stopped in this revision
    runtime: str = "process"
    restart_hash: str = ""             # what the record's spec rendered to ('' unknown)


@dataclasses.dataclass(frozen=True)
class Action:
    verb: Verb
    name: str
    spec_hash: str = ""
    runtime: str = "process"
    reason: str = ""


def resolve_desired(state: documents.DesiredState | None,
                    restart_hashes: Mapping[str, str] | None = None) -> Desired:
    """Hash every component once per document (hashing costs more than planning).
    `restart_hashes`: each component's recipe.render_restart_hash, by name."""
    if state is None:
        return Desired(revision="", wants=())
    wants = []
    for c in state.components:
        hard = tuple(d.name for d in c.dependencies if d.type.value == "HARD")
        soft = tuple(d.name for d in c.dependencies if d.type.value != "HARD")
        wants.append(Want(c.name, c.spec_hash, hard, soft,
                          "process" if c.lifecycle is not None else "container",
                          (restart_hashes or {}).get(c.name, "")))
    return Desired(revision=state.revision, wants=tuple(wants))


def _order(names: Iterable[str], edges: Mapping[str, Iterable[str]]) -> list[str]:
    """Dependencies first; ties by name; a cycle (rejected upstream) falls back to names."""
    members = set(names)
    deps = {n: {d for d in edges.get(n, ()) if d in members and d != n} for n in members}
    users: dict[str, list[str]] = {n: [] for n in members}
    for name, ds in deps.items():
        for d in ds:
            users[d].append(name)
    waiting = {n: len(ds) for n, ds in deps.items()}
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        out.append(name)
        for user in users[name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(out) < len(members):
        done = set(out)
        out.extend(sorted(members - done))
    return out


_RUNNING_LIKE = frozenset({State.STARTING, State.RUNNING, State.FINISHED})
_LIVE = frozenset({State.STARTING, State.RUNNING, State.FINISHED, State.STOPPING})
# States in which a configuration-only change just updates the record (a component
# that failed, or never installed, is installed again with the new spec instead).
_KEEPS = frozenset({State.STARTING, State.RUNNING, State.FINISHED, State.INSTALLED})


def is_restart_needed(want: Want, seen: Observed) -> bool:
    """Greengrass's rule: a changed spec restarts a component only when its rendered
    lifecycle (or container), runWith, version, artifacts or dependencies changed — not
    when only configuration no step uses did. A rendered lifecycle can change with the
    spec unchanged too (a dependency's configuration it interpolates)."""
    if not want.restart_hash or not seen.restart_hash:
        return seen.spec_hash != want.spec_hash  # unknown: any change restarts
    return seen.restart_hash != want.restart_hash


def is_update_only(want: Want, seen: Observed) -> bool:
    """The spec changed, but nothing the component runs with: update the record."""
    return (seen.spec_hash != want.spec_hash and seen.state in _KEEPS
            and not is_restart_needed(want, seen))


def plan(desired: Desired, observed: Mapping[str, Observed]) -> list[Action]:
    wants = {w.name: w for w in desired.wants}
    stop: dict[str, str] = {}       # name -> reason
    install: dict[str, str] = {}
    start: dict[str, str] = {}
    recover: set[str] = set()
    update: list[str] = []

    remove = {name for name in observed if name not in wants}
    for want in desired.wants:
        seen = observed.get(want.name)
        if seen is None:
            install[want.name] = "new"
            start[want.name] = "new"
            continue
        if is_update_only(want, seen):
            update.append(want.name)
            continue
        if seen.spec_hash != want.spec_hash or is_restart_needed(want, seen):
            if seen.state in _LIVE:
                stop[want.name] = "spec changed"
            install[want.name] = start[want.name] = "spec changed"
            continue
        held = seen.hold_revision == desired.revision
        if seen.state is State.BROKEN and not held:
            install[want.name] = start[want.name] = "new revision"
        elif seen.state is State.NEW:
            install[want.name] = start[want.name] = "not installed"
        elif seen.state is State.INSTALLED and not held:
            start[want.name] = "not running"
        elif seen.state is State.ERRORED and seen.retry_due:
            recover.add(want.name)

    # A stopped HARD dependency stops its running dependents, transitively; they start
    # again (in order) in the same plan.
    dependents: dict[str, list[str]] = {}
    for want in desired.wants:
        for dep in want.hard:
            dependents.setdefault(dep, []).append(want.name)
    pending = sorted(set(stop) | recover | (remove & set(dependents)))
    while pending:
        dep = pending.pop()
        for user in dependents.get(dep, ()):
            other = observed.get(user)
            if user in stop or other is None or other.state not in _RUNNING_LIKE:
                continue
            stop[user] = f"HARD dependency {dep} restarts"
            start.setdefault(user, f"HARD dependency {dep} restarted")
            pending.append(user)

    edges: dict[str, tuple[str, ...]] = {n: o.dependencies for n, o in observed.items()}
    for want in desired.wants:
        edges[want.name] = want.hard + want.soft
    actions: list[Action] = []
    for name in sorted(update):
        actions.append(Action(Verb.UPDATE, name, wants[name].spec_hash, wants[name].runtime,
                              "configuration changed; its rendered lifecycle did not"))
    for name in sorted(install):
        actions.append(Action(Verb.PREPARE, name, wants[name].spec_hash, wants[name].runtime))
    for name in reversed(_order(set(stop) | remove, edges)):
        old = observed[name]
        if name in remove:
            actions.append(Action(Verb.REMOVE, name, old.spec_hash, old.runtime,
                                  "no longer desired"))
        else:
            actions.append(Action(Verb.STOP, name, old.spec_hash, old.runtime, stop[name]))
    for name in _order(set(install) | set(start) | recover, edges):
        want = wants[name]
        if name in recover:
            actions.append(Action(Verb.RECOVER, name, want.spec_hash, want.runtime,
                                  "backoff elapsed"))
            continue
        if name in install:
            actions.append(Action(Verb.INSTALL, name, want.spec_hash, want.runtime,
                                  install[name]))
        if name in start:
            actions.append(Action(Verb.START, name, want.spec_hash, want.runtime, start[name]))
    return actions
