"""Which devices a change can affect: an index from each Deployment, ThingGroup, Component,
label and namespace to the devices it reaches, so a pass re-resolves only those.

A change is named by a :data:`Ref` ``(kind, namespace, name)``: a Deployment or a
ThingGroup by its object name, a Component by its component name (``spec.name``: every
version of it), a CoreDevice by its thing name (namespace ""), a Namespace by its name
(its labels grant a privilege level to every device in it). What a change can affect is
what it reached before the change *and* what it reaches after it (a selector that moved
leaves some devices and reaches others), so :func:`resolve_affected` asks the index of
both sides.

Tenancy: every entry is keyed by namespace, and a device is indexed only under its own
namespace (``CoreDevice spec.namespace``); a Deployment, group, component or label of one
namespace never names a device of another. Devices in no namespace are reached by
nothing (see ``hedgerow.core.fleet``) and are indexed only under their own name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from hedgerow.core import resolve

DEPLOYMENT: Final = "Deployment"
THING_GROUP: Final = "ThingGroup"
COMPONENT: Final = "Component"
CORE_DEVICE: Final = "CoreDevice"
NAMESPACE: Final = "Namespace"

Ref = tuple[str, str, str]
"""(kind, namespace, name) of what changed; CoreDevice and Namespace have namespace ""."""

DeviceRow = tuple[str, Mapping[str, str], str | None]
"""(thing, labels, namespace) of one device."""


class Index:
    """Built from a ``resolve.Fleet`` (groups, deployments, catalog) and the devices."""

    def __init__(self, fleet: resolve.Fleet, devices: Iterable[DeviceRow]) -> None:
        self.things: set[str] = set()
        self.by_deployment: dict[resolve.Key, set[str]] = {}
        self.by_group: dict[resolve.Key, set[str]] = {}
        self.by_namespace: dict[str, set[str]] = {}
        self.by_label: dict[tuple[str, str, str], set[str]] = {}
        # Per device: the positions in fleet.deployments of those targeting it (what
        # fleet.plan_fleet would look up again).
        self.targeting: dict[str, tuple[int, ...]] = {}
        # component (namespace, name) -> the deployments whose components can pull it in
        reach: dict[resolve.Key, set[resolve.Key]] = {}
        for d in fleet.deployments:
            key = resolve.key_of(d)
            for name in _closure(fleet.catalog, key[0], [c.name for c in d.spec.components]):
                reach.setdefault((key[0], name), set()).add(key)
        self.reach = reach
        keys = [resolve.key_of(d) for d in fleet.deployments]
        for thing, labels, namespace in devices:
            self.things.add(thing)
            if namespace is None:
                continue
            self.by_namespace.setdefault(namespace, set()).add(thing)
            for k, v in labels.items():
                self.by_label.setdefault((namespace, k, v), set()).add(thing)
            for g in fleet.groups_of(thing, labels, namespace):
                self.by_group.setdefault(g, set()).add(thing)
            self.targeting[thing] = fleet.indices(thing, labels, namespace)
            for i in self.targeting[thing]:
                self.by_deployment.setdefault(keys[i], set()).add(thing)

    def devices_of(self, ref: Ref) -> set[str]:
        """The devices ``ref`` reaches in this index."""
        kind, namespace, name = ref
        if kind == DEPLOYMENT:
            return self.by_deployment.get((namespace, name), set())
        if kind == THING_GROUP:
            return self.by_group.get((namespace, name), set())
        if kind == COMPONENT:
            out: set[str] = set()
            for d in self.reach.get((namespace, name), ()):
                out |= self.by_deployment.get(d, set())
            return out
        if kind == NAMESPACE:
            return self.by_namespace.get(name, set())
        if kind == CORE_DEVICE:
            return {name}
        raise ValueError(f"not a kind of change: {kind!r}")

    def devices_labelled(self, namespace: str, key: str, value: str) -> set[str]:
        """The devices of ``namespace`` carrying the label ``key=value``."""
        return self.by_label.get((namespace, key, value), set())


def resolve_affected(before: Index | None, after: Index, changes: Iterable[Ref]) -> set[str]:
    """Every device one of ``changes`` can affect: what each reached before (``before``,
    None when there was no index yet: then nothing before) and reaches now."""
    out: set[str] = set()
    for ref in changes:
        out |= after.devices_of(ref)
        if before is not None:
            out |= before.devices_of(ref)
    return out


def _closure(catalog: resolve.Catalog, namespace: str, names: Iterable[str]) -> set[str]:
    """The component names reachable from ``names`` through the dependencies of any of
    their versions (the version chosen may change with the catalog: over-approximate)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for _, comp in catalog.versions(namespace, name):
            todo.extend(dep.name for dep in comp.spec.dependencies)
    return seen
